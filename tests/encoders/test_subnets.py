"""MMSA's pre-fusion sub-networks: shapes, masks and lengths respected, BatchNorm in training vs evaluation."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from mmgpt.encoders import LSTMEncoder, MLPSubNet, RawFeatures, TemporalConv


def _prefix_mask(lengths: list[int], steps: int) -> torch.Tensor:
    return torch.arange(steps)[None, :] < torch.tensor(lengths)[:, None]  # (B, N)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_reads_the_state_after_the_last_real_step(num_layers):
    """The same vector as MMSA's TextSubNet run on each sample cut to its length (= packing by the lengths)."""
    torch.manual_seed(0)
    enc = LSTMEncoder(input_dim=6, hidden_dim=8, dim=4, num_layers=num_layers).eval()
    lengths = [7, 3, 1, 5]
    x, mask = torch.randn(4, 7, 6), _prefix_mask(lengths, 7)
    out = enc(x, mask)
    assert out.tokens.shape == (4, 1, 4) and out.mask.tolist() == [[True]] * 4
    _, (h, _) = enc.rnn(pack_padded_sequence(x, torch.tensor(lengths), batch_first=True, enforce_sorted=False))
    torch.testing.assert_close(out.tokens[:, 0], enc.proj(h[-1]))
    for i, n in enumerate(lengths):  # one sample alone, cut to its length
        torch.testing.assert_close(enc(x[i:i + 1, :n]).tokens, out.tokens[i:i + 1])


def test_lstm_ignores_what_the_padding_holds_and_marks_absent_samples():
    torch.manual_seed(0)
    enc = LSTMEncoder(input_dim=3, hidden_dim=5, dim=2).eval()
    x, mask = torch.randn(3, 6, 3), _prefix_mask([6, 2, 0], 6)
    noisy = torch.where(mask[..., None], x, torch.randn_like(x) * 100)
    a, b = enc(x, mask), enc(noisy, mask)
    torch.testing.assert_close(a.tokens[:2], b.tokens[:2])
    assert a.mask[:, 0].tolist() == [True, True, False]  # a sample without the modality is masked out


def test_lstm_gradients_reach_every_parameter():
    torch.manual_seed(0)
    enc = LSTMEncoder(input_dim=3, hidden_dim=5, dim=2, dropout=0.2)
    enc(torch.randn(4, 5, 3), _prefix_mask([5, 4, 2, 1], 5)).tokens.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


def test_subnet_averages_the_real_steps_only():
    torch.manual_seed(0)
    enc = MLPSubNet(input_dim=4, dim=8, dropout=0.3).eval()
    x, mask = torch.randn(3, 5, 4), _prefix_mask([5, 2, 1], 5)
    out = enc(x, mask)
    assert out.tokens.shape == (3, 1, 8) and out.mask.all()
    noisy = torch.where(mask[..., None], x, torch.full_like(x, 50.0))
    torch.testing.assert_close(enc(noisy, mask).tokens, out.tokens)
    means = torch.stack([x[i, :n].mean(0) for i, n in enumerate([5, 2, 1])])  # (B, F): MMSA's time average
    torch.testing.assert_close(out.tokens[:, 0], enc.layers(enc.norm(means)))
    assert (out.tokens >= 0).all()  # three ReLU layers, the last one included (MMSA's SubNet)


def test_with_stored_steps_the_lstm_runs_through_the_zero_padding_as_mmsa():
    """``stored_steps=S``: each sequence zero-padded to S steps, whatever its padding held, the state after step S
    (MMSA's TextSubNet on its stored tensor); a batch longer than S is refused."""
    torch.manual_seed(0)
    enc = LSTMEncoder(input_dim=3, hidden_dim=5, dim=2, stored_steps=8).eval()
    lengths = [6, 2, 4]
    x, mask = torch.randn(3, 6, 3), _prefix_mask(lengths, 6)
    stored = torch.zeros(3, 8, 3)  # what MMSA's file holds: the real steps, then zeros
    for i, n in enumerate(lengths):
        stored[i, :n] = x[i, :n]
    noisy = torch.where(mask[..., None], x, torch.randn_like(x) * 100)
    out = enc(noisy, mask)
    expected = enc.proj(enc.rnn(stored)[0][:, -1])
    torch.testing.assert_close(out.tokens[:, 0], expected)
    real = LSTMEncoder(input_dim=3, hidden_dim=5, dim=2).eval()
    real.load_state_dict(enc.state_dict())
    assert not torch.allclose(real(x, mask).tokens, out.tokens)  # the padding changes the state read
    with pytest.raises(ValueError, match="a sequence of 9 steps, but stored_steps=8"):
        enc(torch.randn(1, 9, 3))


def test_with_stored_steps_the_subnet_averages_over_them_as_mmsas_loader():
    """``stored_steps=S``: the real steps' sum / S, MMSA's average over its stored tensor, zero padding included."""
    torch.manual_seed(0)
    enc = MLPSubNet(input_dim=4, dim=8, stored_steps=10).eval()
    lengths = [5, 2, 1]
    x, mask = torch.randn(3, 5, 4), _prefix_mask(lengths, 5)
    noisy = torch.where(mask[..., None], x, torch.full_like(x, 50.0))
    stored = torch.zeros(3, 10, 4)
    for i, n in enumerate(lengths):
        stored[i, :n] = x[i, :n]
    out = enc(noisy, mask)
    torch.testing.assert_close(out.tokens[:, 0], enc.layers(enc.norm(stored.mean(dim=1))))
    with pytest.raises(ValueError, match="a sequence of 11 steps, but stored_steps=10"):
        enc(torch.randn(2, 11, 4))


@pytest.mark.parametrize("steps", [0, -3, 2.5, True, "24"])
def test_a_bad_stored_steps_is_refused(steps):
    with pytest.raises(ValueError, match="stored_steps=.* must be a positive integer or null"):
        MLPSubNet(input_dim=4, dim=8, stored_steps=steps)
    with pytest.raises(ValueError, match="stored_steps=.* must be a positive integer or null"):
        LSTMEncoder(input_dim=4, hidden_dim=5, dim=2, stored_steps=steps)


def test_subnet_layers_and_widths_are_mmsas():
    enc = MLPSubNet(input_dim=20, dim=128)
    linears = [m for m in enc.layers if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(20, 128), (128, 128), (128, 128)]
    assert isinstance(enc.norm, torch.nn.BatchNorm1d) and enc.norm.num_features == 20


def test_subnet_batchnorm_uses_batch_statistics_in_training_and_running_ones_in_evaluation():
    torch.manual_seed(0)
    enc = MLPSubNet(input_dim=4, dim=6)
    x = torch.randn(8, 3, 4) * 3 + 2
    before = enc.norm.running_mean.clone()
    enc.train()
    alone, together = enc(x[:2]).tokens[0], enc(x).tokens[0]
    assert not torch.allclose(alone, together)  # training: the batch's statistics
    assert not torch.equal(enc.norm.running_mean, before)  # and the running ones were updated
    enc.eval()
    running = enc.norm.running_mean.clone()
    torch.testing.assert_close(enc(x[:2]).tokens[0], enc(x).tokens[0])  # evaluation: a sample alone is the same
    assert torch.equal(enc.norm.running_mean, running)


def test_raw_features_hands_the_features_on():
    enc = RawFeatures(input_dim=5)
    x, mask = torch.randn(2, 4, 5), _prefix_mask([4, 2], 4)
    out = enc(x, mask)
    assert out.tokens is x and out.mask is mask and enc.dim == 5
    assert sum(p.numel() for p in enc.parameters()) == 0


@pytest.mark.parametrize("cls", [LSTMEncoder, MLPSubNet, RawFeatures])
def test_a_wrong_feature_size_or_no_input_dim_is_refused(cls):
    kwargs = {"hidden_dim": 4, "dim": 4} if cls is LSTMEncoder else {"dim": 4} if cls is MLPSubNet else {}
    with pytest.raises(ValueError, match="input_dim=None"):
        cls(input_dim=None, **kwargs)
    with pytest.raises(ValueError, match="features of size 3"):
        cls(input_dim=5, **kwargs).eval()(torch.randn(2, 4, 3))


# --- TemporalConv: MMSA's MulT projections (Conv1d, kernel k, no padding, no bias)


def test_temporal_conv_is_an_unpadded_biasless_convolution():
    torch.manual_seed(0)
    enc = TemporalConv(input_dim=6, dim=4, kernel_size=5).eval()
    assert enc.conv.bias is None and enc.conv.padding == (0,)
    x = torch.randn(2, 9, 6)
    out = enc(x)
    assert out.tokens.shape == (2, 5, 4) and out.mask.all()
    want = torch.nn.functional.conv1d(x.transpose(1, 2), enc.conv.weight).transpose(1, 2)  # (B, N - 4, D)
    torch.testing.assert_close(out.tokens, want)


def test_temporal_conv_marks_the_steps_whose_whole_window_is_real():
    """n real steps give n - k + 1 real outputs, each what the sample gives alone and unpadded; a sequence shorter
    than the kernel gives one step, read zero-padded to the kernel; an absent modality none."""
    torch.manual_seed(0)
    enc = TemporalConv(input_dim=3, dim=2, kernel_size=3).eval()
    lengths = [7, 4, 3, 2, 0]
    x, mask = torch.randn(5, 7, 3), _prefix_mask(lengths, 7)
    out = enc(torch.where(mask[..., None], x, torch.randn_like(x) * 100), mask)  # what the padding holds is ignored
    assert out.tokens.shape == (5, 5, 2)
    assert out.mask.sum(dim=1).tolist() == [5, 2, 1, 1, 0]
    assert out.mask.tolist()[1] == [True, True, False, False, False]  # a prefix
    for i, n in enumerate(lengths[:3]):  # at least the kernel: the sample alone, cut to its length
        torch.testing.assert_close(out.tokens[i, : n - 2], enc(x[i:i + 1, :n]).tokens[0])
    short = torch.nn.functional.pad(x[3:4, :2], (0, 0, 0, 1))  # 2 real steps, then zeros up to the kernel
    torch.testing.assert_close(out.tokens[3, :1], enc(short).tokens[0])


def test_temporal_conv_takes_a_batch_shorter_than_the_kernel():
    enc = TemporalConv(input_dim=3, dim=2, kernel_size=5).eval()
    x, mask = torch.randn(2, 3, 3), _prefix_mask([3, 1], 3)
    out = enc(x, mask)
    assert out.tokens.shape == (2, 1, 2) and out.mask.tolist() == [[True], [True]]
    torch.testing.assert_close(out.tokens[0, 0], enc(torch.nn.functional.pad(x[:1], (0, 0, 0, 2))).tokens[0, 0])
    with pytest.raises(ValueError, match="kernel_size=0"):
        TemporalConv(input_dim=3, dim=2, kernel_size=0)


def test_temporal_conv_drops_out_its_input_in_training_only():
    torch.manual_seed(0)
    enc = TemporalConv(input_dim=8, dim=4, kernel_size=1, dropout=0.5)
    x = torch.randn(2, 6, 8)
    assert not torch.allclose(enc(x).tokens, enc.eval()(x).tokens)
    enc.train()
    enc.drop.p = 1.0  # every input dropped: zeros (no bias)
    assert enc(x).tokens.abs().max() == 0
