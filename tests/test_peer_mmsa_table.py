"""bench/peer_mmsa.py's verdicts: "within or better than the peer's seed range" per metric (no MMSA needed)."""

from bench.peer_mmsa import Run, Summary, within_spread


def _summary(side: str, key: str, values: list[float]) -> Summary:
    return Summary([Run(side, "m", seed, {key: v}, 1, 1.0, 1.0, 1) for seed, v in enumerate(values)])


def test_equal_values_are_within_the_range_despite_rounding():
    # five runs of the constant predictor: the mean of 0.4094 x 5 is not bit-equal to 0.4094
    peer = _summary("MMSA", "acc2", [0.40935672514619886] * 5)
    ours = _summary("mmgpt", "acc2", [0.40935672514619886] * 5)
    assert ours.mean("acc2") < min(peer.values("acc2"))  # by a rounding error: without the slack, "outside"
    assert within_spread(ours, peer, "acc2")


def test_mmsas_four_decimals_and_float32_are_the_same_value():
    # MMSA's metricsTop reports 70 right of 171 as round(0.40935..., 4) = 0.4094; mmgpt's float32 0.40935671...
    import torch

    peer = _summary("MMSA", "acc2", [round(70 / 171, 4)] * 5)
    ours = _summary("mmgpt", "acc2", [float(torch.tensor(70 / 171, dtype=torch.float32))] * 5)
    assert within_spread(ours, peer, "acc2")
    assert not within_spread(_summary("mmgpt", "acc2", [69 / 171] * 5), peer, "acc2")  # one sample fewer: outside


def test_direction_of_better_per_metric():
    peer_mae = _summary("MMSA", "mae", [1.00, 1.10])
    assert within_spread(_summary("mmgpt", "mae", [0.5]), peer_mae, "mae")  # lower MAE: better than all
    assert within_spread(_summary("mmgpt", "mae", [1.05]), peer_mae, "mae")
    assert not within_spread(_summary("mmgpt", "mae", [1.11]), peer_mae, "mae")
    peer_acc = _summary("MMSA", "acc2", [0.70, 0.72])
    assert within_spread(_summary("mmgpt", "acc2", [0.80]), peer_acc, "acc2")
    assert not within_spread(_summary("mmgpt", "acc2", [0.69]), peer_acc, "acc2")
