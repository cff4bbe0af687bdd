"""``mmgpt-data``: tools for manifest folders (``data=manifest``) and Hugging Face data (``data=hf``).

``mmgpt-data check DIR`` reads every row and decodes every file once (``--check headers``: reads only each file's
header), and prints every problem with its file and line; it exits with status 1 when there is any. On Hugging
Face data (a save_to_disk folder, Parquet/Arrow files; ``--columns text=question,label=answer``) it reads every
row of every split and decodes every media cell, naming the split, row and column of each problem. With
``--cache-dir`` the decoded media go to the media store training reads (``data.cache_dir``).
On a shard set (a folder or URL with ``shards.json``) it streams every shard and decodes every sample, with a
progress bar, and names each shard that fails by its URL.
``mmgpt-data export-synthetic OUT`` writes the embedded synthetic set out as a manifest folder (PNG + WAV + JSON
Lines). ``mmgpt-data shard DIR OUT`` writes a manifest folder as
WebDataset tar shards for streaming (``data=shards data.root=OUT``); OUT may be a URL (``s3://bucket/prefix``).
``mmgpt-data features [DIR] KEY=VALUE...``
fills the frozen-feature cache ahead of training, with the training command's overrides.
``mmgpt-data tokenizer DIR --vocab-size N`` trains a byte-level BPE on the training texts and captions of a
manifest or shards folder and saves it (``tokenizer.json``) for ``model.net.encoders.text.tokenizer=PATH``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


# The datamodules are imported inside the commands: this entry point sits at the edge, and importing mmgpt
# never pulls in datamodules.
def _check(args: argparse.Namespace) -> int:
    from mmgpt.datamodules.hf.check import is_hf_source
    from mmgpt.datamodules.remote import is_url

    if args.hf or is_hf_source(str(args.root)) or (is_url(args.root) and args.root.endswith((".parquet", ".arrow"))):
        return _check_hf(args)
    if is_url(args.root) or (Path(args.root) / "shards.json").is_file():
        return _check_shards(args)
    from mmgpt.datamodules.manifest import MediaFiles, check_folder
    from mmgpt.datamodules.manifest.media import Progress
    from mmgpt.datamodules.options import DataOptions
    from mmgpt.datamodules.processors import ModalityError, declared_processors, parse_modalities

    declared, kinds = None, None
    if args.modalities is not None:  # the folder's declaration (data.modalities), as JSON
        try:
            declared = json.loads(args.modalities)
            kinds = {name: spec["kind"] for name, spec in parse_modalities(declared, "--modalities").items()}
        except (json.JSONDecodeError, ModalityError) as e:
            print(f"error: --modalities: {e}", file=sys.stderr)
            return 2
    options = DataOptions(image_size=args.image_size, sample_rate=args.sample_rate,
                          max_audio_seconds=args.max_audio_seconds,
                          max_image_pixels=args.max_image_pixels if args.max_image_pixels > 0 else None)
    store = None if args.cache_dir is None else Path(args.cache_dir) / "media-store"
    media = MediaFiles(declared_processors(declared, options), store, threads=args.threads,
                       keep=store is not None)  # no store: decode and drop
    progress = Progress(f"checking ({args.check})")  # a bar with the time left, on a terminal's stderr
    report = check_folder(Path(args.root), media, allow_outside_root=args.allow_outside_root, check=args.check,
                          progress=progress, kinds=kinds, label_type=args.label_type)
    progress.close()
    print(report.format(limit=args.limit))
    return 0 if report.ok else 1


def _check_hf(args: argparse.Namespace) -> int:
    from mmgpt.datamodules.hf.check import check_hf
    from mmgpt.errors import UserError

    try:
        columns = dict(pair.split("=", 1) for pair in args.columns.split(",")) if args.columns else None
        report = check_hf(str(args.root), columns=columns, image_size=args.image_size, sample_rate=args.sample_rate,
                          max_audio_seconds=args.max_audio_seconds,
                          max_image_pixels=args.max_image_pixels if args.max_image_pixels > 0 else None,
                          **({"storage_options": args.storage_options} if args.storage_options else {}))
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.format(limit=args.limit))
    return 0 if report.ok else 1


def _check_shards(args: argparse.Namespace) -> int:
    from mmgpt.datamodules.manifest.media import Progress
    from mmgpt.datamodules.shards.check import check_shards
    from mmgpt.errors import UserError

    progress = Progress("checking shards (samples)")  # a bar with the time left, on a terminal's stderr
    try:
        report = check_shards(args.root, progress, storage_options=args.storage_options, image_size=args.image_size,
                              sample_rate=args.sample_rate, max_audio_seconds=args.max_audio_seconds,
                              max_image_pixels=args.max_image_pixels if args.max_image_pixels > 0 else None,
                              **({"cache_dir": args.cache_dir} if args.cache_dir else {}))
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        progress.close()
    print(report.format(limit=args.limit))
    return 0 if report.ok else 1


def _storage_options(text: str) -> dict:
    """``--storage-options`` as JSON (what ``data.storage_options`` holds)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e.msg}): {text}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text}")
    return value


def _export(args: argparse.Namespace) -> int:
    from mmgpt.datamodules.synthetic.export import export_synthetic

    counts = export_synthetic(args.out, args.num_train, args.num_val, args.num_test, args.seed, args.image_size,
                              args.sample_rate, args.max_audio_seconds)
    print(f"wrote {args.out}: {counts} samples; train with: mmgpt-train data=manifest data.root={args.out}")
    return 0


def _shard(args: argparse.Namespace) -> int:
    from mmgpt.datamodules.shards import ShardError, write_shards
    from mmgpt.errors import UserError

    try:
        summary = write_shards(args.root, args.out, args.samples_per_shard, args.allow_outside_root,
                               storage_options=args.storage_options)
    except (ShardError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for split, info in summary["splits"].items():
        print(f"{split}: {info['samples']} samples in {len(info['shards'])} shards")
    print(f"train with: mmgpt-train data=shards data.root={args.out}")
    return 0


def _features(args: argparse.Namespace) -> int:
    import tempfile

    import pytorch_lightning as pl
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from mmgpt.cli.common import build_datamodule, use_feature_cache, user_errors
    from mmgpt.cli.train import build_module, check_config
    from mmgpt.config import CONFIG_DIR
    from mmgpt.datamodules.feature_cache import fill
    from mmgpt.datamodules.manifest.media import Progress
    from mmgpt.training.finetune import init_from_checkpoint

    def is_override(a: str) -> bool:
        return "=" in a or a.startswith(("~", "+"))

    overrides = [a for a in args.items if is_override(a)]
    folders = [a for a in args.items if not is_override(a)]
    if len(folders) > 1:
        print(f"error: one data folder expected, got {folders} (overrides are KEY=VALUE)", file=sys.stderr)
        return 2
    if folders:  # DIR: a manifest folder unless a data= override picks another datamodule (e.g. shards)
        data = [] if any(o.startswith("data=") for o in overrides) else ["data=manifest"]
        overrides = [*data, *overrides, f"data.root={folders[0]}"]

    @user_errors
    def run() -> int:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        with open_dict(cfg):  # no run directory: the data report goes to a temporary one
            cfg.paths.output_dir = tempfile.mkdtemp(prefix="mmgpt-features-")
        check_config(cfg)
        pl.seed_everything(cfg.seed, verbose=False)
        net = OmegaConf.to_container(cfg.model.net, resolve=True)
        keys = (o.split("=", 1)[0].lstrip("+~") for o in overrides)
        explicit = {k[len("data."):] for k in keys if k.startswith("data.")}  # as mmgpt-train reads its own
        datamodule = build_datamodule(cfg.data, net, explicit=explicit)  # the encoders' processors, as in training
        module = build_module(cfg, datamodule)
        report = init_from_checkpoint(module.net, cfg.init_from) if cfg.get("init_from") else None
        processors = use_feature_cache(cfg.feature_cache, datamodule, module, report)
        if not processors:
            print("nothing to cache: no encoder is a frozen backbone whose modality has no random augmentation "
                  f"(feature_cache.mode={cfg.feature_cache.mode})")
            return 0
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        for m in processors:
            module.net.encoders[m].to(device)
        datamodule.setup("fit")
        progress = Progress("filling the feature cache", bar=None)
        done = fill(datamodule, module.net, processors, device=device, batch_size=cfg.feature_cache.batch_size,
                    progress=progress)
        progress.close()
        print(f"feature cache {cfg.feature_cache.dir}: {done.describe()} on {device}")
        return 0

    return run()


def _tokenizer(args: argparse.Namespace) -> int:
    from mmgpt.datamodules.texts import training_texts
    from mmgpt.errors import UserError
    from mmgpt.tokenizer import train_bpe

    out = args.out or args.root / "tokenizer.json"
    try:
        texts = list(training_texts(args.root))
        if not texts:
            raise UserError(f"{args.root}: the training split has no text or caption to train on")
        tok = train_bpe(texts, args.vocab_size, out, min_frequency=args.min_frequency)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    tokens = sum(len(tok.encode_text(t)) for t in texts)
    chars = sum(len(t) for t in texts)
    print(f"wrote {tok.path}: {tok.vocab_size} tokens, trained on {len(texts)} texts "
          f"({chars / max(tokens, 1):.2f} characters per token)")
    print(f"use it with: mmgpt-train model.net.encoders.text.tokenizer={tok.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmgpt-data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="validate a manifest folder or Hugging Face data: report every bad row")
    check.add_argument("root", help="the folder (train.jsonl/.csv, val..., test..., labels.txt), a save_to_disk "
                       "folder / Parquet or Arrow files, or a shard set (folder or URL s3://..., https://... with "
                       "shards.json: every shard streamed and decoded)")
    check.add_argument("--image-size", type=int, default=32)
    check.add_argument("--sample-rate", type=int, default=8000)
    check.add_argument("--max-audio-seconds", type=float, default=1.0)
    check.add_argument("--max-image-pixels", type=int, default=89_478_485,
                       help="refuse larger images (data.max_image_pixels; 0: no limit)")
    check.add_argument("--allow-outside-root", action="store_true", help="accept absolute paths and paths outside root")
    check.add_argument("--cache-dir", default=None,
                       help="reuse/fill the media store in CACHE_DIR/media-store (data.cache_dir of training)")
    check.add_argument("--check", choices=("full", "headers"), default="full",
                       help="full: decode every file; headers: read only each file's header (large folders)")
    check.add_argument("--threads", type=int, default=4, help="decoding threads")
    check.add_argument("--limit", type=int, default=None, help="print at most this many problems (default: all)")
    check.add_argument("--hf", action="store_true",
                       help="a Hugging Face data set (save_to_disk folder, Parquet/Arrow files; found by itself)")
    check.add_argument("--columns", default=None,
                       help="Hugging Face data: modality/label/id -> column, e.g. text=question,image=img,label=answer")
    check.add_argument("--modalities", default=None,
                       help='the declared modalities as JSON (data.modalities), e.g. \'{"text": "text", "poster": '
                            '"image", "feats": {"kind": "features", "dim": 35}}\' (default: text, image, audio)')
    check.add_argument("--storage-options", type=_storage_options, default=None,
                       help='a URL\'s filesystem options as JSON (data.storage_options), e.g. '
                            '\'{"endpoint_url": "http://store:9000"}\'; credentials: environment or ~/.aws')
    check.add_argument("--label-type", choices=("class", "float", "multilabel"), default="class",
                       help="what a label is (data.label_type)")
    check.set_defaults(func=_check)

    export = sub.add_parser("export-synthetic", help="write the embedded synthetic set as a manifest folder")
    export.add_argument("out", type=Path)
    export.add_argument("--num-train", type=int, default=4000)
    export.add_argument("--num-val", type=int, default=1000)
    export.add_argument("--num-test", type=int, default=1000)
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--image-size", type=int, default=32)
    export.add_argument("--sample-rate", type=int, default=8000)
    export.add_argument("--max-audio-seconds", type=float, default=1.0)
    export.set_defaults(func=_export)

    shard = sub.add_parser("shard", help="write a manifest folder as WebDataset tar shards (data=shards)")
    shard.add_argument("root", type=Path, help="the manifest folder")
    shard.add_argument("out", help="a new, empty folder for the shards, or a URL (s3://bucket/prefix: each shard "
                       "uploaded as soon as it is written, shards.json last)")
    shard.add_argument("--storage-options", type=_storage_options, default=None,
                       help="the URL's filesystem options as JSON, e.g. '{\"endpoint_url\": \"http://store:9000\"}'")
    shard.add_argument("--samples-per-shard", type=int, default=256)
    shard.add_argument("--allow-outside-root", action="store_true")
    shard.set_defaults(func=_shard)

    features = sub.add_parser(
        "features", help="fill the frozen-feature cache ahead of training (the training command's overrides)",
        description="Compute the hidden states of every frozen backbone (feature_cache.mode=auto) for every sample "
                    "of every split that the cache does not hold yet. DIR (optional) is a manifest folder "
                    "(data=manifest data.root=DIR); the overrides are mmgpt-train's, e.g. "
                    "mmgpt-data features DIR model/encoder/image@model.net.encoders.image=hf "
                    "model.net.encoders.image.name_or_path=/models/vit-base feature_cache.dtype=float32")
    features.add_argument("items", nargs="*", metavar="[DIR] KEY=VALUE",
                          help="the data folder and mmgpt-train overrides")
    features.add_argument("--device", default=None, help="where the backbones run (default: cuda if available)")
    features.set_defaults(func=_features)

    tokenizer = sub.add_parser("tokenizer", help="train a byte-level BPE on a folder's training texts and captions")
    tokenizer.add_argument("root", type=Path, help="a manifest folder (train.jsonl/.csv) or a shards folder")
    tokenizer.add_argument("--vocab-size", type=int, required=True,
                           help="vocabulary size, the 5 special tokens and 256 byte symbols included")
    tokenizer.add_argument("--out", type=Path, default=None,
                           help="the tokenizer.json to write (default: ROOT/tokenizer.json)")
    tokenizer.add_argument("--min-frequency", type=int, default=2, help="merge only pairs seen at least this often")
    tokenizer.set_defaults(func=_tokenizer)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
