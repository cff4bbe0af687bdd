"""Checkpoint size (and save time) of a network on a pretrained BERT, slim (backbone identity only) vs whole.

    python -m bench.slim_checkpoint [--sizes tiny,base]

A randomly initialised BERT of each size (tiny: 2 layers, hidden 128, as google/bert_uncased_L-2_H-128_A-2; base:
12 layers, hidden 768, as bert-base-uncased; vocabulary 30522 both) is saved with ``save_pretrained`` and used as
the ``hf_text`` encoder of a text-only late-fusion classifier (dim 256). Each tuning (frozen, LoRA r=8 on
query/value, unfreeze_last=2) trains 2 AdamW steps through Lightning, then the same trainer writes its checkpoint
twice: as mmgpt writes it (slim) and with slimming switched off (whole). Both hold the optimizer state.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path
from unittest import mock

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from bench.common import save
from mmgpt.batch import MultimodalBatch
from mmgpt.training import backbone_checkpoints
from mmgpt.training.lit_module import MultimodalModule

SIZES = {"tiny": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512},
         "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}}
TUNINGS = {"frozen": {},
           "lora r=8 (query, value)": {"lora": {"r": 8, "alpha": 16, "target_modules": ["query", "value"]}},
           "unfreeze_last=2": {"unfreeze_last": 2}}
DIM = 256


def save_bert(path: Path, size: str) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, **SIZES[size]), add_pooling_layer=False).save_pretrained(path)
    return path


def spec(path: Path, tuning: dict) -> dict:
    return {"encoders": {"text": {"type": "hf_text", "name_or_path": str(path), "dim": DIM, "tuning": tuning}},
            "fusion": {"type": "late", "modalities": ["text"], "dim": DIM, "num_layers": 1, "num_heads": 4,
                       "combiner": {"type": "concat_mlp", "modalities": ["text"], "dim": DIM}},
            "head": {"type": "classification_head", "dim": DIM}, "decoder": None}


def batches(n: int = 2) -> list[MultimodalBatch]:
    g = torch.Generator().manual_seed(0)
    return [MultimodalBatch(inputs={"text": torch.randint(1000, 2000, (4, 16), generator=g)},
                            masks={"text": torch.ones(4, 16, dtype=torch.bool)},
                            labels=torch.randint(0, 3, (4,), generator=g), ids=list(range(4))) for _ in range(n)]


def measure(bert: Path, tuning: dict, out: Path) -> dict[str, float]:
    module = MultimodalModule(net=spec(bert, tuning), num_classes=3, scheduler=None,
                              optimizer={"type": "adamw", "lr": 1e-3, "weight_decay": 0.01})
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, DataLoader(batches(), batch_size=None))
    row: dict[str, float] = {}
    for kind in ("slim", "whole"):
        path = out / f"{kind}.ckpt"
        whole = mock.patch.object(backbone_checkpoints, "slim", lambda *a, **k: 0)  # slimming switched off
        t0 = time.perf_counter()
        with whole if kind == "whole" else contextlib.nullcontext():
            trainer.save_checkpoint(path)
        row[f"{kind}_s"] = time.perf_counter() - t0
        row[f"{kind}_mb"] = path.stat().st_size / 1e6
        path.unlink()
    row["trainable"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    row["total"] = sum(p.numel() for p in module.parameters())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,base")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            bert = save_bert(Path(tmp) / f"bert-{size}", size)
            for name, tuning in TUNINGS.items():
                rows.append({"bert": size, "tuning": name, **measure(bert, tuning, Path(tmp))})
    lines = ["| BERT size | tuning | parameters (trainable / total) | whole checkpoint | slim checkpoint | ratio | "
             "save s (whole / slim) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['bert']} | {r['tuning']} | {r['trainable']:,} / {r['total']:,} | {r['whole_mb']:.1f} MB | "
                     f"{r['slim_mb']:.2f} MB | {r['whole_mb'] / r['slim_mb']:.0f}x | "
                     f"{r['whole_s']:.2f} / {r['slim_s']:.2f} |")
    markdown = ("## Slim checkpoints (pretrained backbone identity instead of its weights)\n\n"
                "`python -m bench.slim_checkpoint` (optimizer state included in both; 2-core CPU shared with other "
                "jobs)\n\n" + "\n".join(lines))
    save("slim_checkpoint", {"rows": rows}, markdown)


if __name__ == "__main__":
    main()
