"""Lightning training step vs a hand-written PyTorch loop over the same model and the same batches.

    python -m bench.lightning_overhead [--fusion early] [--steps 40] [--rounds 3]

Both loops do the same work per step: forward, cross-entropy, training-metric update, backward, gradient
clipping at 1.0, AdamW step, learning-rate schedule step. Lightning runs with logging, checkpointing and progress
bars off (pure loop overhead). Rounds alternate between the two, each from a fresh copy of the same initial weights.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from bench.common import build_classifier, save
from mmgpt import registry
from mmgpt.training.optim import param_groups


def batches(dm, n: int) -> list:
    it = iter(dm.train_dataloader())
    return [next(it) for _ in range(n)]


def plain_loop(module, data: list) -> float:
    """The same optimizer, schedule, objectives and training metrics as the LightningModule, without Lightning."""
    net = module.net
    net.train()
    spec = dict(module.hparams.optimizer)  # built as MultimodalModule.configure_optimizers does (the registry)
    wd = spec.pop("weight_decay", 0.0)
    optimizer = registry.build(spec, "model.module.optimizer", "optimizer", params=param_groups(module, wd))
    scheduler = registry.build(module.hparams.scheduler, "model.module.scheduler", "scheduler", optimizer=optimizer,
                               total_steps=len(data))
    t0 = time.perf_counter()
    for batch in data:
        loss = 0.0
        for name, objective in module.objectives.items():  # the module's own objectives and training metrics
            out = objective(net, batch)
            loss = loss + objective.weight * out.loss
            objective.update(module.train_metrics[name], out)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
    return (time.perf_counter() - t0) / len(data)


class _Timer(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        self.t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.dt = time.perf_counter() - self.t0


def lightning_loop(module, data: list) -> float:
    timer = _Timer()
    trainer = pl.Trainer(
        accelerator="auto", devices=1, max_epochs=1, gradient_clip_val=1.0, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer],
    )
    loader = DataLoader(data, batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return timer.dt / len(data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--fusion", default="early")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    module, dm, _ = build_classifier([f"model/fusion={args.fusion}", f"data.num_train={args.steps * 64}"])
    data = batches(dm, args.steps)
    init = copy.deepcopy(module.state_dict())
    plain, light = [], []
    plain_loop(copy.deepcopy(module), data[:3])  # warm-up
    for _ in range(args.rounds):
        m = copy.deepcopy(module)
        m.load_state_dict(init)
        plain.append(plain_loop(m, data))
        m = copy.deepcopy(module)
        m.load_state_dict(init)
        light.append(lightning_loop(m, data))
    p_ms, l_ms = statistics.median(plain) * 1e3, statistics.median(light) * 1e3
    md = "\n".join([
        "## Lightning vs a hand-written loop",
        "",
        f"Default model, `model/fusion={args.fusion}`, batch 64, {args.steps} steps per round, median of "
        f"{args.rounds} alternating rounds. Command: `python -m bench.lightning_overhead --fusion {args.fusion}`.",
        "",
        "| loop | ms / step |",
        "|---|---:|",
        f"| plain PyTorch | {p_ms:.1f} |",
        f"| Lightning | {l_ms:.1f} |",
        f"| **ratio Lightning / plain** | **{l_ms / p_ms:.3f}x** (target <= 1.05x) |",
    ])
    save("lightning_overhead", {"fusion": args.fusion, "plain_s": plain, "lightning_s": light}, md)


if __name__ == "__main__":
    main()
