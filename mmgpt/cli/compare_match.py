"""``compare.match=params|flops``: scale every fusion to the same compute budget before training.

The reference is ``compare.match_reference`` (default: the first fusion compared) at its configured size. Every
other fusion (unimodal baselines excepted: they are a floor, not a rival) gets the model width and MLP width that
bring its total parameters, or its forward FLOPs per sample, within ``compare.match_tolerance`` (5%) of the
reference's: first ``model.dim`` (a multiple of ``model.num_heads`` between a quarter and four times the
configured width) is the one whose cost at the configured
``model.mlp_ratio`` is nearest the target, then ``model.mlp_ratio`` is bisected (a continuous knob: MLP hidden
widths of every encoder and of the fusion) until the cost is within the tolerance. Both are shared sizes, so
encoders scale with the fusion: a fusion that spends more on fusing gets narrower everywhere, which is what an
equal budget means. The matched values are passed to that fusion's runs as overrides and listed in the report.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mmgpt.cli.cost import count_flops, first_samples
from mmgpt.cli.train import network_spec
from mmgpt.errors import UserError

log = logging.getLogger("mmgpt.compare")

MATCH_KINDS = ("params", "flops")


def _is_baseline(fusion: str) -> bool:
    return fusion.startswith("unimodal")


class _Measure:
    """The cost (``params`` or forward ``flops`` per sample) of the network of a composed config at a given
    ``model.dim`` and ``model.mlp_ratio``."""

    def __init__(self, kind: str, cfg: DictConfig) -> None:
        from mmgpt.registry import build_network

        self.kind, self.build = kind, build_network
        data = dict(OmegaConf.to_container(cfg.data, resolve=True))  # type: ignore[arg-type]
        self.datamodule = instantiate({**data, "batch_size": 8}, _convert_="all")
        self.batch = None
        if kind == "flops":
            self.datamodule.prepare_data()
            self.datamodule.setup("fit")
            self.batch = first_samples(next(iter(self.datamodule.train_dataloader())), 8)

    def __call__(self, cfg: DictConfig, dim: int, mlp_ratio: float) -> float:
        cfg = cfg.copy()
        cfg.model.dim, cfg.model.mlp_ratio = dim, mlp_ratio
        torch.manual_seed(0)
        net = self.build(network_spec(cfg, self.datamodule), self.datamodule.num_classes)
        if self.kind == "params":
            return float(sum(p.numel() for p in net.parameters()))
        net.eval()
        batch = self.batch
        # autograd on, as in network_cost (FlopCounterMode cannot hook parameter views made under no_grad)
        return count_flops(lambda: net(batch)) / batch.batch_size  # type: ignore[union-attr]


def _bisect(cost: Callable[[float], float], target: float, low: float, high: float, tolerance: float) -> float:
    """The ``mlp_ratio`` in [low, high] whose cost is nearest ``target`` (cost grows with it), stopping early
    once within ``tolerance``."""
    best = min((low, high), key=lambda r: abs(math.log(cost(r) / target)))
    for _ in range(30):
        mid = (low + high) / 2
        c = cost(mid)
        if abs(math.log(c / target)) < abs(math.log(cost(best) / target)):
            best = mid
        if abs(c / target - 1) <= tolerance / 2:
            return mid
        low, high = (mid, high) if c < target else (low, mid)
    return best


def match_sizes(configs: dict[str, DictConfig], kind: str, reference: str,
                tolerance: float = 0.05) -> dict[str, dict[str, Any]]:
    """The ``model.dim`` / ``model.mlp_ratio`` that put every fusion's cost within ``tolerance`` of ``reference``.

    Args:
        configs: each fusion's composed ``mmgpt-compare`` config.
        kind: ``params`` or ``flops`` (forward FLOPs per sample).
        reference: the fusion whose configured size is the budget.
    Returns:
        per fusion: ``overrides`` (empty for the reference and baselines), ``before``, ``after`` and ``ratio``
        (after / reference).
    Raises:
        UserError: an unknown kind or reference, or a fusion that cannot be brought within the tolerance.
    """
    if kind not in MATCH_KINDS:
        raise UserError(f"compare.match={kind}: expected one of {', '.join(MATCH_KINDS)} (or null)")
    if reference not in configs:
        raise UserError(f"compare.match_reference={reference}: not among the compared fusions ({', '.join(configs)})")
    ref_cfg = configs[reference]
    measure = _Measure(kind, ref_cfg)
    dim0, ratio0 = int(ref_cfg.model.dim), float(ref_cfg.model.mlp_ratio)
    target = measure(ref_cfg, dim0, ratio0)
    out: dict[str, dict[str, Any]] = {}
    for fusion, cfg in configs.items():
        before = measure(cfg, int(cfg.model.dim), float(cfg.model.mlp_ratio))
        if fusion == reference or _is_baseline(fusion) or abs(before / target - 1) <= tolerance:
            out[fusion] = {"overrides": {}, "before": before, "after": before, "ratio": before / target}
            continue
        heads, dim_now = int(cfg.model.num_heads), int(cfg.model.dim)
        # widths from dim/4 to 4 dim in steps of 2^(1/4), multiples of the head count
        dims = sorted({max(heads, round(dim_now * 2 ** (k / 4) / heads) * heads) for k in range(-8, 9)})
        dim = min(dims, key=lambda d: abs(math.log(measure(cfg, d, ratio0) / target)))
        ratio = _bisect(lambda r, cfg=cfg, dim=dim: measure(cfg, dim, r), target, 0.25, 16.0, tolerance)
        after = measure(cfg, dim, ratio)
        if abs(after / target - 1) > tolerance:
            raise UserError(f"compare.match={kind}: cannot bring {fusion} within {tolerance:.0%} of {reference} "
                            f"({target:,.0f}); nearest {after:,.0f} at model.dim={dim} model.mlp_ratio={ratio:.3f}")
        out[fusion] = {"overrides": {"model.dim": dim, "model.mlp_ratio": round(ratio, 6)}, "before": before,
                       "after": after, "ratio": after / target}
        log.info("matched %s %s: %s -> %s (%.3f of %s) with model.dim=%d model.mlp_ratio=%.4f", fusion, kind,
                 f"{before:,.0f}", f"{after:,.0f}", after / target, reference, dim, ratio)
    return out


def matching_record(kind: str, reference: str, tolerance: float, matched: dict[str, dict[str, Any]],
                    fusions: Sequence[str]) -> dict[str, Any]:
    """What ``matching.json`` holds (the report's compute-matching table reads it)."""
    return {"kind": kind, "reference": reference, "tolerance": tolerance,
            "configurations": {f: matched[f] for f in fusions}}
