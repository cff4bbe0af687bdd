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
