"""Epoch time of a fusion on frozen ViT-Base + BERT-base backbones, with the frozen-feature cache vs without.

    python -m bench.feature_cache [--num-train 96] [--rounds 2] [--threads 1] [--fusion early]

Backbones: a ViT-Base/16 at 224 pixels (``ViTConfig()`` defaults, with a ``ViTImageProcessor``) and a BERT-base
(``BertConfig()`` defaults, with a WordPiece tokenizer over the synthetic set's words), random weights, saved with
``save_pretrained`` and loaded by path as the registered ``hf_image`` / ``hf_text`` encoders with their own
processors, as ``mmgpt-train`` builds them (timing does not depend on the weights). The network is that pair plus a
projection to ``dim`` each and the fusion (image + text modalities of the synthetic set, no augmentation).
One epoch = a full pass over the training loader with a training step (forward, backward, AdamW) per batch. The
uncached and cached epochs run in one process, alternated after one warm-up epoch each ("from the second epoch");
the fill (every training sample through both backbones, stored as float16) is timed once, after the uncached
warm-up. Wall and process CPU time are both reported: CPU time is what other jobs on a shared machine change least.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.common import save
from mmgpt.datamodules.encoder_processors import build_processors
from mmgpt.datamodules.feature_cache import fill, install
from mmgpt.datamodules.processors import Processor
from mmgpt.datamodules.synthetic import SyntheticDataModule
from mmgpt.datamodules.synthetic.generator import SyntheticGenerator
from mmgpt.registry import build_network

IMAGE_SIZE = 224


def save_backbones(root: Path) -> tuple[Path, Path]:
    """ViT-Base/16 (``ViTConfig()``) with its image processor, BERT-base (``BertConfig()``) with a WordPiece
    tokenizer over the synthetic set's words; random weights, saved with ``save_pretrained`` as a download is."""
    from transformers import BertConfig, BertModel, BertTokenizerFast, ViTConfig, ViTImageProcessor, ViTModel

    vit, bert = root / "vit-base", root / "bert-base"
    torch.manual_seed(0)
    ViTModel(ViTConfig(), add_pooling_layer=False).save_pretrained(vit)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(vit)
    texts = [s.text or "" for s in SyntheticGenerator(32, 8000).generate(200, seed=0)]
    words = sorted({w for t in texts for w in t.lower().replace("?", " ").replace(",", " ").split()})
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *letters, *(f"##{c}" for c in letters)]
    bert.mkdir(parents=True)
    (bert / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    BertTokenizerFast(vocab_file=str(bert / "vocab.txt"), model_max_length=64).save_pretrained(bert)
    BertModel(BertConfig(), add_pooling_layer=False).save_pretrained(bert)
    return vit, bert


def network_spec(vit: Path, bert: Path, fusion: str, dim: int, layers: int) -> dict:
    """The two backbones (registered ``hf_image`` / ``hf_text``, frozen by default) + a fusion of ``conf/model``'s
    default shape (4 heads, MLP ratio 2)."""
    sizes = {"dim": dim, "num_layers": layers, "num_heads": 4, "mlp_ratio": 2.0}
    spec = {
        "encoders": {"image": {"type": "hf_image", "name_or_path": str(vit), "dim": dim},
                     "text": {"type": "hf_text", "name_or_path": str(bert), "dim": dim}},
        "fusion": {"type": fusion, **sizes, "modalities": ["image", "text"]},
        "head": {"type": "classification_head", "dim": dim},
    }
    if fusion == "late":
        spec["fusion"]["combiner"] = {"type": "concat_mlp", "modalities": ["image", "text"], "dim": dim}
    return spec


def datamodule(num_train: int, batch_size: int, processors: dict[str, Processor]) -> SyntheticDataModule:
    dm = SyntheticDataModule(num_train=num_train, num_val=8, num_test=8, image_size=IMAGE_SIZE, augment=False,
                             batch_size=batch_size, num_workers=0, processors=processors)
    dm.setup()
    return dm


def epoch(net: torch.nn.Module, optimizer: torch.optim.Optimizer, dm: SyntheticDataModule,
          device: torch.device) -> tuple[float, float]:
    """(wall s, CPU s) of one training epoch over ``dm``'s training loader."""
    net.train()
    w0, c0 = time.perf_counter(), time.process_time()
    for batch in dm.train_dataloader():
        batch = batch.to(device)
        loss = torch.nn.functional.cross_entropy(net(batch).logits, batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-train", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2, help="measured epochs of each kind, after one warm-up each")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--fusion", default="early", choices=("early", "late", "cross_attention"))
    p.add_argument("--dim", type=int, default=64, help="model.dim (the default config's)")
    p.add_argument("--layers", type=int, default=3, help="fusion layers (model/fusion=early's default)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="mmgpt-bench-features-"))
    t0 = time.perf_counter()
    vit, bert = save_backbones(work)
    torch.manual_seed(0)
    device = torch.device(args.device)
    spec = network_spec(vit, bert, args.fusion, args.dim, args.layers)
    net = build_network(spec, 15).to(device)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    print(f"backbones saved and loaded in {time.perf_counter() - t0:.0f}s: {frozen / 1e6:.1f}M frozen, "
          f"{trainable / 1e6:.2f}M trained parameters", flush=True)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)

    data = {"image_size": IMAGE_SIZE, "augment": False}
    plain, cached = (datamodule(args.num_train, args.batch_size, build_processors(spec, data)) for _ in range(2))
    processors = install(cached, net, root=work / "features", dtype="float16")
    assert sorted(processors) == ["image", "text"], processors
    times: dict[str, list[tuple[float, float]]] = {"uncached": [], "cached": []}
    warm_uncached = epoch(net, optimizer, plain, device)
    print(f"uncached warm-up epoch: {warm_uncached[0]:.1f}s", flush=True)
    w0, c0 = time.perf_counter(), time.process_time()
    report = fill(cached, net, processors, device=device, batch_size=args.batch_size, splits=("train",))
    if device.type == "cuda":
        torch.cuda.synchronize()
    fill_s = (time.perf_counter() - w0, time.process_time() - c0)
    print(f"fill: {report.describe()} ({fill_s[1]:.1f} CPU s)", flush=True)
    warm_cached = epoch(net, optimizer, cached, device)
    for r in range(args.rounds):
        times["uncached"].append(epoch(net, optimizer, plain, device))
        times["cached"].append(epoch(net, optimizer, cached, device))
        print(f"round {r + 1}: uncached {times['uncached'][-1][0]:.1f}s, cached {times['cached'][-1][0]:.2f}s",
              flush=True)
    med = {k: tuple(statistics.median(t[i] for t in v) for i in (0, 1)) for k, v in times.items()}
    ratio = {c: med["uncached"][i] / med["cached"][i] for i, c in enumerate(("wall", "cpu"))}
    per_round = [u[1] / c[1] for u, c in zip(times["uncached"], times["cached"])]
    store_mb = sum(f.stat().st_size for f in (work / "features").glob("seg-*.bin")) / 2**20
    cmd = (f"python -m bench.feature_cache --num-train {args.num_train} --batch-size {args.batch_size} "
           f"--rounds {args.rounds} --threads {args.threads} --fusion {args.fusion} --dim {args.dim} "
           f"--layers {args.layers}" + (" --device cuda" if device.type == "cuda" else ""))
    lines = [
        "## Frozen-feature cache: epoch time with vs without",
        "",
        f"`model/fusion={args.fusion}` ({args.layers} layers, dim {args.dim}: the default config's) on a frozen "
        f"ViT-Base/16 at 224 px and a frozen BERT-base (`hf_image` / `hf_text` with their own processors; "
        f"random weights from `ViTConfig()` / `BertConfig()` defaults, {frozen / 1e6:.0f}M frozen and "
        f"{trainable / 1e6:.2f}M trained parameters), {args.num_train} synthetic training samples, batch "
        f"{args.batch_size}, {args.threads} torch thread(s), on {device.type}. An epoch is a full pass over the "
        "training loader with a training step per batch; uncached and cached epochs alternate after one warm-up "
        f"epoch each, median of {args.rounds}. The cache holds float16 hidden states ({store_mb:.0f} MiB for the "
        f"training split: 197 x 768 per image, one row per token per text). Command: `{cmd}`. " + (
            "The machine (2 cores) was shared with other jobs: the CPU-time row (this process's CPU seconds) is the "
            "one to judge by." if device.type == "cpu" else "On the GPU the wall-clock row is the one to judge by."),
        "",
        "| clock | uncached epoch s | cached epoch s | **uncached / cached** | fill s (train split) "
        "| fill / uncached epoch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for i, clock in enumerate(("wall", "cpu")):
        lines.append(f"| {clock} | {med['uncached'][i]:.1f} | {med['cached'][i]:.2f} | **{ratio[clock]:.0f}x** | "
                     f"{fill_s[i]:.1f} | {fill_s[i] / med['uncached'][i]:.2f}x |")
    lines += [
        "",
        f"Per round (CPU): {', '.join(f'{x:.0f}x' for x in per_round)} (goal >= 10x). Warm-up epochs: uncached "
        f"{warm_uncached[0]:.1f} s, cached {warm_cached[0]:.2f} s (wall). The fill runs the backbones once per "
        "sample without a training step, so it costs about one uncached epoch; every later epoch and every later "
        "run on the same data, backbones and preprocessing (e.g. each job of `mmgpt-compare`) reads the cache. "
        "The ratio is the backbones' cost over the fusion's own step: a wider or deeper fusion lowers it, a larger "
        "backbone raises it.",
    ]
    save("feature_cache", {"args": vars(args), "uncached": times["uncached"], "cached": times["cached"],
                           "warmup": {"uncached": warm_uncached, "cached": warm_cached}, "fill": fill_s,
                           "ratio": ratio, "per_round_cpu": per_round, "store_mib": store_mb,
                           "fill_report": report.describe()}, "\n".join(lines))


if __name__ == "__main__":
    main()
