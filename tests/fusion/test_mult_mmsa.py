"""MMSA's MulT fusion (``mult_mmsa``): widths, the order of its concatenations, padding and batch-mates that do not
matter, the future mask, missing modalities, MMSA's initialisation. Its equality with MMSA's own network is
tests/test_mmsa_exact.py (slow: it imports MMSA)."""

import math

import pytest
import torch

from mmgpt.fusion import MMSAMulTFusion

MODS = ["acoustic", "language", "visual"]
D, H = 8, 2


def _fusion(**kwargs) -> MMSAMulTFusion:
    torch.manual_seed(0)
    args = {"modalities": MODS, "dim": D, "num_heads": H, "num_layers": 2, "self_layers": 2} | kwargs
    return MMSAMulTFusion(**args).eval()


def _inputs(lengths: dict[str, list[int]], fill: float = 0.0) -> tuple[dict, dict]:
    tokens, masks = {}, {}
    for m, ns in lengths.items():
        N = max(ns)
        masks[m] = torch.arange(N)[None, :] < torch.tensor(ns)[:, None]  # (B, N)
        tokens[m] = torch.where(masks[m][..., None], torch.randn(len(ns), N, D), fill)  # (B, N, D)
    return tokens, masks


def test_widths_and_the_dropout_of_each_stack():
    fusion = _fusion(cross_attn_dropout={"language": 0.3, "acoustic": 0.2}, attn_dropout=0.1)
    assert fusion.out_dim == 3 * 2 * D
    assert set(fusion.cross) == {f"{s}->{t}" for t in MODS for s in MODS if s != t}
    # the attention dropout of a cross-modal stack is its source's (MMSA: trans_a_with_l uses attn_dropout, l's)
    assert fusion.cross["language->acoustic"].blocks[0].attn.dropout == 0.3
    assert fusion.cross["acoustic->visual"].blocks[0].attn.dropout == 0.2
    assert fusion.cross["visual->language"].blocks[0].attn.dropout == 0.0
    assert fusion.memory["language"].blocks[0].attn.dropout == 0.1
    assert fusion.memory["language"].norm.normalized_shape == (2 * D,)
    tokens, masks = _inputs({m: [5, 4] for m in MODS})
    assert fusion(tokens, masks).pooled.shape == (2, 6 * D)


def test_order_sets_the_concatenation_and_input_dict_order_does_not_matter():
    tokens, masks = _inputs({"acoustic": [6, 4], "language": [5, 5], "visual": [3, 7]})
    sorted_out = _fusion()(tokens, masks).pooled
    mmsa = _fusion(order=["language", "acoustic", "visual"])
    out = mmsa(tokens, masks).pooled
    assert not torch.allclose(out, sorted_out)  # another concatenation (and so other weights in other places)
    reversed_tokens = dict(reversed(list(tokens.items())))
    torch.testing.assert_close(mmsa(reversed_tokens, masks).pooled, out)
    # the summaries in order: language's memory stack first
    lang = mmsa.memory["language"](torch.cat([mmsa.cross[f"{s}->language"](tokens["language"], masks["language"],
                                                                          tokens[s], masks[s])
                                              for s in ("acoustic", "visual")], dim=-1), masks["language"])
    torch.testing.assert_close(out[:, :2 * D], lang[torch.arange(2), masks["language"].sum(1) - 1])
    with pytest.raises(ValueError, match="must name each"):
        _fusion(order=["language", "acoustic"])
    with pytest.raises(ValueError, match="not among"):
        _fusion(cross_attn_dropout={"text": 0.3})


def test_a_sample_gets_what_it_gets_alone_whatever_its_padding_and_batch_mates():
    """Padded steps masked, the future mask's diagonal from the sample's own lengths, its last real step read."""
    fusion = _fusion()
    lengths = {"acoustic": [6, 2, 4], "language": [3, 5, 5], "visual": [7, 7, 1]}
    tokens, masks = _inputs(lengths, fill=50.0)  # the padding holds large values
    pooled = fusion(tokens, masks).pooled
    for i in range(3):
        alone = {m: tokens[m][i:i + 1, :lengths[m][i]] for m in MODS}
        ones = {m: torch.ones(1, lengths[m][i], dtype=torch.bool) for m in MODS}
        torch.testing.assert_close(pooled[i:i + 1], fusion(alone, ones).pooled, atol=1e-5, rtol=1e-5)


def test_the_future_mask_hides_later_target_steps_and_source_steps_past_the_offset():
    fusion = _fusion()
    stack = fusion.cross["acoustic->language"]
    x, ctx = torch.randn(1, 4, D), torch.randn(1, 6, D)
    xm, cm = torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 6, dtype=torch.bool)
    y = stack(x, xm, ctx, cm)  # offset |6 - 4| = 2: step i sees source steps j <= i + 2
    later = x.clone()
    later[:, 3] = torch.randn(D)
    torch.testing.assert_close(stack(later, xm, ctx, cm)[:, :3], y[:, :3])  # no step sees a later one of its own
    ctx2 = ctx.clone()
    ctx2[:, 5] = torch.randn(D)  # only step 3 (3 + 2 = 5) sees source step 5
    y2 = stack(x, xm, ctx2, cm)
    torch.testing.assert_close(y2[:, :3], y[:, :3])
    assert not torch.allclose(y2[:, 3], y[:, 3])
    open_fusion = _fusion(causal=False)
    y3 = open_fusion.cross["acoustic->language"](x, xm, ctx2, cm)
    assert not torch.allclose(y3[:, 0], open_fusion.cross["acoustic->language"](x, xm, ctx, cm)[:, 0])


def test_missing_modalities_stay_finite_and_gradients_reach_every_stack():
    fusion = _fusion().train()
    tokens, masks = _inputs({"acoustic": [4, 3], "language": [5, 2], "visual": [3, 3]})
    masks["visual"][1] = False  # the second sample lacks vision
    tokens = {m: t.requires_grad_() for m, t in tokens.items()}
    out = fusion(tokens, masks).pooled
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fusion.parameters())
    assert all(tokens[m].grad.abs().sum() > 0 for m in MODS)


def test_mmsas_initialisation():
    """Xavier-uniform attention and MLP matrices, zero biases; query and key/value rows share the bound of MMSA's
    packed (3D, D) in_proj_weight."""
    block = _fusion(dim=40, num_heads=4).cross["language->visual"].blocks[0]
    bound = math.sqrt(6 / (40 + 120))
    for w in (block.attn.q.weight, block.attn.kv.weight):
        assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert block.attn.proj.weight.abs().max() <= math.sqrt(6 / 80)
    assert block.mlp.net[0].weight.abs().max() <= math.sqrt(6 / 200) < block.attn.proj.weight.abs().max()
    assert all(b.abs().max() == 0 for n, b in block.named_parameters() if n.endswith("bias") and "norm" not in n)
