"""Concatenation fusion (MMSA's LF-DNN) and early fusion by an LSTM (MMSA's EF-LSTM)."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from mmgpt.fusion import ConcatFusion, EarlyLSTMFusion

WIDTHS = {"acoustic": 2, "language": 5, "visual": 3}


def test_concat_puts_the_pooled_vectors_side_by_side_in_sorted_order():
    fusion = ConcatFusion(modalities=["visual", "language", "acoustic"], input_dims=WIDTHS)
    assert fusion.out_dim == 10 and sum(p.numel() for p in fusion.parameters()) == 0
    tokens = {m: torch.randn(3, 4, d) for m, d in WIDTHS.items()}
    masks = {m: torch.ones(3, 4, dtype=torch.bool) for m in WIDTHS}
    masks["visual"][2] = False  # the third sample lacks vision: zeros in its place
    masks["language"][:, 2:] = False
    pooled = fusion(dict(reversed(list(tokens.items()))), masks).pooled
    expected = torch.cat([tokens["acoustic"].mean(1), tokens["language"][:, :2].mean(1),
                          tokens["visual"].mean(1) * torch.tensor([1.0, 1.0, 0.0])[:, None]], dim=-1)
    torch.testing.assert_close(pooled, expected)


def test_concat_takes_dim_for_the_modalities_input_dims_does_not_name():
    assert ConcatFusion(modalities=["a", "b"], dim=4, input_dims={"a": 7}).out_dim == 11
    with pytest.raises(ValueError, match="must give a width"):
        ConcatFusion(modalities=["a", "b"], input_dims={"a": 7})


def _aligned(lengths: list[int], steps: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    mask = torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]
    return ({m: torch.randn(len(lengths), steps, d) for m, d in WIDTHS.items()},
            {m: mask.clone() for m in WIDTHS})


def test_early_lstm_concatenates_each_step_normalises_over_the_steps_and_reads_the_last_real_state():
    torch.manual_seed(0)
    fusion = EarlyLSTMFusion(modalities=sorted(WIDTHS), input_dims=WIDTHS, dim=6, steps=8, num_layers=2).eval()
    assert fusion.norm.num_features == 8 and fusion.rnn.input_size == 10 and fusion.out_dim == 6
    lengths = [5, 2, 4]
    tokens, masks = _aligned(lengths, 5)  # the batch's longest is shorter than the fusion's steps
    pooled = fusion(tokens, masks).pooled
    assert pooled.shape == (3, 6)
    x = torch.cat([tokens[m] for m in sorted(WIDTHS)], dim=-1)
    x = fusion.norm(torch.nn.functional.pad(x, (0, 0, 0, 3)))
    _, (h, _) = fusion.rnn(pack_padded_sequence(x, torch.tensor(lengths), batch_first=True, enforce_sorted=False))
    torch.testing.assert_close(pooled, h[-1])


def test_early_lstm_refuses_unaligned_or_too_long_sequences():
    fusion = EarlyLSTMFusion(modalities=sorted(WIDTHS), input_dims=WIDTHS, dim=4, steps=4)
    tokens, masks = _aligned([3, 3], 3)
    tokens["visual"], masks["visual"] = torch.randn(2, 2, 3), masks["visual"][:, :2]
    with pytest.raises(ValueError, match="aligned modalities"):
        fusion(tokens, masks)
    tokens, masks = _aligned([5, 5], 5)
    with pytest.raises(ValueError, match="built for steps=4"):
        fusion(tokens, masks)
