"""Tensor fusion (TFN) and low-rank fusion (LMF) against hand-computed values."""

import torch

from mmgpt.fusion import LowRankFusion, TensorFusion


def test_tfn_outer_product_holds_every_product_term():
    a = torch.tensor([[2.0, 3.0, 1.0]])  # [h_a; 1]
    b = torch.tensor([[5.0, 1.0]])       # [h_b; 1]
    # a1*b1, a1, a2*b1, a2, b1, 1: the bimodal products, each unimodal term and the constant
    assert TensorFusion.outer([a, b]).tolist() == [[10.0, 2.0, 15.0, 3.0, 5.0, 1.0]]
    c = torch.tensor([[7.0, 1.0]])
    abc = TensorFusion.outer([a, b, c])
    assert abc.shape == (1, 12) and abc[0, 0].item() == 2 * 5 * 7 and abc[0, -1].item() == 1.0


def test_a_missing_modality_leaves_only_the_others_terms():
    torch.manual_seed(0)
    fusion = TensorFusion(modalities=["audio", "image", "text"], dim=8, modality_dim=2)
    tokens = {m: torch.randn(1, 3, 8) for m in fusion.modalities}
    masks = {m: torch.ones(1, 3, dtype=torch.bool) for m in fusion.modalities}
    masks["image"][:] = False
    z = fusion.extended(tokens, masks)
    assert z[1].tolist() == [[0.0, 0.0, 1.0]]  # image (sorted second) absent: [0; 1]
    fused = TensorFusion.outer(z).view(3, 3, 3)
    assert torch.count_nonzero(fused[:, :2, :]) == 0  # every term with an image factor is zero


def test_lmf_equals_the_full_tensor_built_from_its_factors():
    """LMF's output is the rank-R weight tensor sum_r w_r (x)_m W_m^(r) applied to TFN's outer product, plus b."""
    torch.manual_seed(0)
    mods = ["audio", "image", "text"]
    lmf = LowRankFusion(modalities=mods, dim=4, modality_dim=2, rank=3)
    with torch.no_grad():
        lmf.bias.normal_()
    tokens = {m: torch.randn(2, 5, 4) for m in mods}
    masks = {m: torch.ones(2, 5, dtype=torch.bool) for m in mods}
    out = lmf(tokens, masks).pooled  # (2, 4)

    fa, fi, ft = (lmf.factors[m] for m in mods)  # (R, 3, 4) each
    w = lmf.rank_weights[0]  # (R,)
    full = torch.zeros(3, 3, 3, 4)
    for r in range(3):
        for i in range(3):
            for j in range(3):
                for k in range(3):
                    full[i, j, k] += w[r] * fa[r, i] * fi[r, j] * ft[r, k]  # (4,)
    z = TensorFusion.outer(lmf.extended(tokens, masks))  # (2, 27), first modality's index slowest
    expected = z @ full.reshape(27, 4) + lmf.bias
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_lmf_by_hand_on_one_sample():
    lmf = LowRankFusion(modalities=["a", "b"], dim=1, modality_dim=1, rank=2)
    z = [torch.tensor([[2.0, 1.0]]), torch.tensor([[3.0, 1.0]])]
    with torch.no_grad():
        lmf.factors["a"].copy_(torch.tensor([[[1.0], [0.5]], [[-1.0], [2.0]]]))  # (R=2, 2, 1)
        lmf.factors["b"].copy_(torch.tensor([[[0.5], [1.0]], [[1.0], [0.0]]]))
        lmf.rank_weights.copy_(torch.tensor([[1.0, 0.5]]))
        lmf.bias.fill_(0.25)
    lmf.extended = lambda tokens, masks: z  # type: ignore[method-assign]  # feed z directly
    # r=0: (2*1 + 1*0.5) * (3*0.5 + 1*1) = 2.5 * 2.5 = 6.25; r=1: (2*-1 + 1*2) * (3*1 + 0) = 0
    # h = 1.0 * 6.25 + 0.5 * 0 + 0.25 = 6.5
    assert lmf({}, {}).pooled.item() == 6.5


def test_without_projection_the_encoders_vectors_of_their_own_widths_enter_the_product():
    """MMSA's TFN: no projection before the product (modality_dim: None), per-modality widths (input_dims), no MLP
    after it (dim: None): the fused vector is the flattened product itself, prod_m (d_m + 1) wide."""
    widths = {"acoustic": 3, "language": 2, "visual": 4}
    fusion = TensorFusion(modalities=sorted(widths), dim=None, modality_dim=None, input_dims=widths)
    assert fusion.out_dim == 4 * 3 * 5 and sum(p.numel() for p in fusion.parameters()) == 0
    tokens = {m: torch.randn(2, 1, d) for m, d in widths.items()}
    masks = {m: torch.ones(2, 1, dtype=torch.bool) for m in widths}
    pooled = fusion(tokens, masks).pooled
    expected = TensorFusion.outer([torch.cat([tokens[m][:, 0], torch.ones(2, 1)], -1) for m in sorted(widths)])
    torch.testing.assert_close(pooled, expected)


def test_lmf_without_projection_has_mmsas_factor_shapes():
    widths = {"acoustic": 16, "language": 64, "visual": 128}
    lmf = LowRankFusion(modalities=sorted(widths), dim=1, modality_dim=None, rank=3, input_dims=widths)
    assert {m: tuple(f.shape) for m, f in lmf.factors.items()} == {m: (3, d + 1, 1) for m, d in widths.items()}
    assert lmf.out_dim == 1
    tokens = {m: torch.randn(5, 1, d) for m, d in widths.items()}
    assert lmf(tokens, {m: torch.ones(5, 1, dtype=torch.bool) for m in widths}).pooled.shape == (5, 1)


def test_input_dims_must_cover_the_modalities():
    import pytest

    with pytest.raises(ValueError, match=r"no width for modalities \['visual'\]"):
        TensorFusion(modalities=["language", "visual"], dim=None, modality_dim=None, input_dims={"language": 2})
    with pytest.raises(ValueError, match=r"modalities \['audio'\] the fusion does not fuse"):
        LowRankFusion(modalities=["language"], dim=1, input_dims={"language": 2, "audio": 3})
