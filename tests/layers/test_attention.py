import math

import pytest
import torch

from mmgpt.layers import (
    Attention,
    Block,
    GatedCrossAttentionBlock,
    SharedNormBlock,
    Transformer,
    build_attention_mask,
)
from mmgpt.layers.attention import attend
from mmgpt.layers.dropout import MIN_NUMEL, keep_mask


def naive_attention(attn: Attention, x, context=None, key_mask=None, causal=False):
    """softmax(QK^T / sqrt(d)) V written out by hand, with the same weights."""
    B, N, D = x.shape
    ctx = x if context is None else context
    H = attn.num_heads
    q = attn.q(x).view(B, N, H, D // H).transpose(1, 2)
    k, v = attn.kv(ctx).view(B, ctx.shape[1], 2, H, D // H).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // H)
    mask = build_attention_mask(key_mask, N, ctx.shape[1], causal, x.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    y = scores.softmax(-1) @ v
    return attn.proj(y.transpose(1, 2).reshape(B, N, D))


@pytest.mark.parametrize("causal", [False, True])
def test_matches_naive_reference(causal):
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=4).eval()
    x = torch.randn(2, 5, 16)
    key_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    got = attn(x, key_mask=key_mask, causal=causal)
    want = naive_attention(attn, x, key_mask=key_mask, causal=causal)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_cross_attention_matches_naive_reference():
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=2).eval()
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 6, 16)
    key_mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(
        attn(x, context=ctx, key_mask=key_mask), naive_attention(attn, x, ctx, key_mask), atol=1e-5, rtol=1e-5
    )


def test_padded_keys_are_ignored():
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=4).eval()
    x = torch.randn(1, 6, 16)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    y1 = attn(x, key_mask=mask)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(1, 2, 16) * 100
    y2 = attn(x2, key_mask=mask)
    torch.testing.assert_close(y1[:, :4], y2[:, :4])


def test_causal_attention_never_sees_the_future():
    torch.manual_seed(0)
    model = Transformer(dim=16, num_layers=2, num_heads=2).eval()
    x = torch.randn(1, 8, 16)
    y1 = model(x, causal=True)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(1, 3, 16)
    y2 = model(x2, causal=True)
    torch.testing.assert_close(y1[:, :5], y2[:, :5])
    assert not torch.allclose(y1[:, 5:], y2[:, 5:])


def test_fully_masked_rows_stay_finite():
    attn = Attention(dim=16, num_heads=2)
    x = torch.randn(2, 4, 16)
    y = attn(x, key_mask=torch.zeros(2, 4, dtype=torch.bool))
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())


def test_gated_block_starts_as_identity_when_gate_is_zero():
    block = GatedCrossAttentionBlock(dim=16, num_heads=2, gate_init=0.0)
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    torch.testing.assert_close(block(x, context=ctx), x)
    ungated = Block(dim=16, num_heads=2)
    assert not torch.allclose(ungated(x, context=ctx), x)


def test_gated_block_names_its_gates_and_loads_the_old_gate_vector():
    block = GatedCrossAttentionBlock(dim=16, num_heads=2, gate_init=0.25)
    assert {n for n, _ in block.named_parameters() if "gate" in n} == {"attn_gate", "ff_gate"}
    old = {k: v for k, v in block.state_dict().items() if not k.endswith("_gate")}
    old["gates"] = torch.tensor([0.5, -0.75])  # checkpoints written before the gates had names
    block.load_state_dict(old)
    assert block.attn_gate.item() == 0.5 and block.ff_gate.item() == -0.75


def test_dim_must_divide_heads():
    with pytest.raises(ValueError, match="divisible"):
        Attention(dim=10, num_heads=3)


# --- What MMSA's MulT (fairseq's layers) needs of the one attention


def test_per_sample_causal_offsets_on_rectangular_cross_attention():
    """Query i of sample b sees keys j <= i + offset[b]: MMSA's future mask, offset by |M - N| of each sample."""
    mask = build_attention_mask(None, 3, 6, True, torch.device("cpu"), causal_offset=torch.tensor([3, 0]))
    assert mask.shape == (2, 1, 3, 6)
    assert mask[0, 0].int().tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]
    assert mask[1, 0].int().tolist() == [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]]
    # more queries than keys: MMSA's |M - N| (4 - 2 = 2) opens the keys to the early queries, M - N would close them
    mask = build_attention_mask(None, 4, 2, True, torch.device("cpu"), causal_offset=torch.tensor([2]))
    assert mask[0, 0].all()
    # with padded keys: both masks apply
    key_mask = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    mask = build_attention_mask(key_mask, 3, 6, True, torch.device("cpu"), causal_offset=torch.tensor([3]))
    assert mask[0, 0, 2].int().tolist() == [1, 1, 1, 1, 1, 0]


def test_cross_attention_with_a_causal_offset_never_sees_later_keys():
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=2).eval()
    x, ctx = torch.randn(1, 3, 16), torch.randn(1, 6, 16)
    mask = build_attention_mask(None, 3, 6, True, torch.device("cpu"), causal_offset=torch.tensor([3]))
    y1 = attn(x, context=ctx, attn_mask=mask)
    ctx2 = ctx.clone()
    ctx2[:, 5] = torch.randn(16) * 10  # only the last query (2 + 3 = 5) sees key 5
    y2 = attn(x, context=ctx2, attn_mask=mask)
    torch.testing.assert_close(y1[:, :2], y2[:, :2])
    assert not torch.allclose(y1[:, 2], y2[:, 2])


def test_separate_values_take_the_value_rows_of_the_packed_projection():
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=4).eval()
    x, keys, values = torch.randn(2, 3, 16), torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    torch.testing.assert_close(attn(x, context=keys, values=keys), attn(x, context=keys))
    B, H, Dh = 2, 4, 4
    q = attn.q(x).view(B, 3, H, Dh).transpose(1, 2)
    k = attn.kv(keys)[..., :16].reshape(B, 5, H, Dh).transpose(1, 2)
    v = attn.kv(values)[..., 16:].reshape(B, 5, H, Dh).transpose(1, 2)
    y = ((q @ k.transpose(-1, -2)) / math.sqrt(Dh)).softmax(-1) @ v  # (B, H, 3, Dh)
    want = attn.proj(y.transpose(1, 2).reshape(B, 3, 16))
    torch.testing.assert_close(attn(x, context=keys, values=values), want, atol=1e-5, rtol=1e-5)


def test_output_dropout_can_differ_from_the_weights_dropout():
    assert Attention(dim=8, num_heads=2, dropout=0.3).proj_drop.p == 0.3
    attn = Attention(dim=8, num_heads=2, dropout=0.0, proj_dropout=1.0).train()
    assert attn(torch.randn(2, 3, 8)).abs().max() == 0  # every output dropped, the weights untouched


def test_shared_norm_block_normalises_queries_keys_and_values_with_one_layer_norm():
    """fairseq's pre-norm layer (MMSA's MulT): x + Attn(LN(x), LN(keys), LN(values)), then x + MLP(LN2(x)) with a
    ReLU; by hand with the same weights."""
    torch.manual_seed(0)
    block = SharedNormBlock(dim=16, num_heads=2).eval()
    for p in block.parameters():
        p.data.add_(torch.randn_like(p) * 0.1)  # LayerNorm affine away from (1, 0)
    x, keys, values = torch.randn(2, 3, 16), torch.randn(2, 4, 16), torch.randn(2, 4, 16)
    n = block.norm1
    h = x + block.attn(n(x), context=n(keys), values=n(values))
    fc1, fc2 = block.mlp.net[0], block.mlp.net[2]
    want = h + fc2(torch.relu(fc1(block.norm2(h))))
    torch.testing.assert_close(block(x, context=keys, values=values), want)
    assert [type(m).__name__ for m in block.mlp.net[1]] == ["ReLU", "Dropout"]


def test_weight_dropout_on_a_cpu_drops_the_softmax_with_the_fast_mask():
    """On a CPU in training, the weights are computed explicitly and dropped with mmgpt's mask (same draws as
    ``keep_mask`` after the same seed); masked keys get no weight; without dropout it is SDPA's result."""
    torch.manual_seed(0)
    B, H, N, M, Dh = 4, 4, 16, 20, 8
    assert B * H * N * M >= MIN_NUMEL
    q, k, v = torch.randn(B, H, N, Dh), torch.randn(B, H, M, Dh), torch.randn(B, H, M, Dh)
    mask = build_attention_mask(torch.arange(M)[None] < torch.tensor([[20], [12], [5], [1]]), N, M, True,
                                torch.device("cpu"), causal_offset=torch.tensor([4, 0, 2, 7]))
    weights = (q @ k.transpose(-1, -2) / math.sqrt(Dh)).masked_fill(~mask, float("-inf")).softmax(-1)
    torch.manual_seed(1)
    y = attend(q, k, v, mask, 0.3)
    torch.manual_seed(1)
    keep, scale = keep_mask((B, H, N, M), 0.3)
    torch.testing.assert_close(y, (weights * keep * scale) @ v)
    v2 = v.clone()
    v2[1, :, 12:] = 1e3  # padded keys of sample 1
    torch.manual_seed(1)
    torch.testing.assert_close(attend(q, k, v2, mask, 0.3), y)
    torch.testing.assert_close(attend(q, k, v, mask, 0.0), weights @ v, atol=1e-5, rtol=1e-5)


def test_separate_values_through_a_wrapped_projection_match_the_plain_one():
    """A projection that is not a plain ``nn.Linear`` (an adapter's wrapper) goes through the module: same result."""
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=4).eval()
    x, keys, values = torch.randn(2, 3, 16), torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    want = attn(x, context=keys, values=values)
    attn.kv = torch.nn.Sequential(attn.kv)
    torch.testing.assert_close(attn(x, context=keys, values=values), want)
