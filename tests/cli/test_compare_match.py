"""``compare.match=params|flops``: every fusion scaled to within 5% of the reference's cost before training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

import mmgpt.cli.compare as compare
from mmgpt.cli.compare_match import match_sizes
from mmgpt.cli.compare_tune import compose_compare
from mmgpt.cli.cost import count_flops
from mmgpt.errors import UserError
from mmgpt.registry import build_network

FUSIONS = ("early", "tensor", "mult", "unimodal_text")


def _net(cfg: Any, overrides: dict[str, Any]) -> torch.nn.Module:
    cfg = cfg.copy()
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    torch.manual_seed(0)
    return build_network(OmegaConf.to_container(cfg.model.net, resolve=True), num_classes=15)


@pytest.fixture(scope="module")
def configs() -> dict[str, Any]:
    return {f: compose_compare(["experiment=smoke", "data.image_size=16", f"model/fusion={f}"]) for f in FUSIONS}


def _params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_params_matching_lands_within_five_percent(configs: dict[str, Any]) -> None:
    matched = match_sizes(configs, "params", "early", 0.05)
    target = _params(_net(configs["early"], {}))
    assert matched["early"]["overrides"] == {} and matched["unimodal_text"]["overrides"] == {}
    changed = 0
    for fusion in ("tensor", "mult"):
        before = _params(_net(configs[fusion], {}))
        after = _params(_net(configs[fusion], matched[fusion]["overrides"]))
        changed += abs(before / target - 1) > 0.05  # there was something to match
        assert abs(after / target - 1) <= 0.05, fusion
        assert matched[fusion]["after"] == after and matched[fusion]["before"] == before
        assert bool(matched[fusion]["overrides"]) == (abs(before / target - 1) > 0.05)
    assert changed


def test_flops_matching_lands_within_five_percent(configs: dict[str, Any]) -> None:
    pair = {f: configs[f] for f in ("early", "mult")}
    matched = match_sizes(pair, "flops", "early", 0.05)
    from mmgpt.cli.compare_match import _Measure

    batch = _Measure("flops", configs["early"]).batch  # the batch of the configured data the matching used

    def flops(cfg: Any, overrides: dict[str, Any]) -> float:
        net = _net(cfg, overrides).eval()
        with torch.no_grad():
            return count_flops(lambda: net(batch)) / 2

    target = flops(configs["early"], {})
    assert abs(flops(configs["mult"], matched["mult"]["overrides"]) / target - 1) <= 0.05


def test_unknown_kind_or_reference_is_one_line(configs: dict[str, Any]) -> None:
    with pytest.raises(UserError, match=r"compare\.match=memory: expected one of params, flops"):
        match_sizes(configs, "memory", "early")
    with pytest.raises(UserError, match=r"compare\.match_reference=late: not among"):
        match_sizes(configs, "params", "late")


def test_matched_comparison_trains_each_fusion_at_its_matched_size(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    from tests.cli.test_compare_tune import FakeTraining

    fake, dims = FakeTraining(), {}
    real_train = fake.train

    def train(cfg: Any) -> dict[str, Any]:
        dims[Path(cfg.paths.output_dir).name] = (int(cfg.model.dim), float(cfg.model.mlp_ratio))
        return real_train(cfg)

    monkeypatch.setattr(compare, "train", train)
    sweep = tmp_path / "sweep"
    compare.main(["experiment=smoke", "compare.match=params", "model/fusion=early,mult", "seed=0,1",
                  "compare.robustness=false", f"hydra.sweep.dir={sweep}"])
    record = json.loads((sweep / "matching.json").read_text())
    size = record["configurations"]["mult"]["overrides"]
    assert record["kind"] == "params" and record["reference"] == "early"
    assert dims == {"0_early_seed0": (32, 2.0), "2_early_seed1": (32, 2.0),
                    "1_mult_seed0": (size["model.dim"], size["model.mlp_ratio"]),
                    "3_mult_seed1": (size["model.dim"], size["model.mlp_ratio"])}
    md = (sweep / "report.md").read_text()
    assert "## Compute matching" in md and "`model.mlp_ratio`=" in md


def test_match_set_in_a_plain_sweep_job_is_refused(configs: dict[str, Any]) -> None:
    cfg = compose_compare(["experiment=smoke", "compare.match=params"])
    with pytest.raises(UserError, match="compare.match=params gives each fusion its own sizes"):
        compare.run_job(cfg)


@pytest.mark.parametrize("kind", ["params", "flops"])
def test_matching_fits_the_networks_to_the_data_s_declared_features(kind: str, tmp_path: Path) -> None:
    """experiment=mosi: features encoders take their input size from the data's declaration (input_dim: null in
    the config), so the matching builds each network fitted to the data, as training does."""
    from tests.helpers.benchmarks import write_mmsa

    pkl = tmp_path / "unaligned_50.pkl"
    write_mmsa(pkl, aligned=False, seq_lens=(12, 10, 8))
    base = ["experiment=mosi", f"data.root={pkl}", "model.dim=16", "model.num_heads=2"]
    configs = {f: compose_compare([*base, f"model/fusion={f}"]) for f in ("early", "late")}
    matched = match_sizes(configs, kind, "early", 0.05)
    assert abs(matched["late"]["ratio"] - 1.0) <= 0.05
