"""The heads of mmgpt/model.py: MMSA's post-fusion MLP (with TFN's sigmoid output range), MulT's residual block and
the identity head."""

import pytest
import torch

from mmgpt.model import ClassificationHead, IdentityHead, MLPHead, ResidualHead


def test_mlp_head_layers_are_mmsas_post_fusion_layers():
    head = MLPHead(dim=30, num_classes=1, hidden_dims=[8, 8], dropout=0.5)
    linears = [m for m in head.net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(30, 8), (8, 8), (8, 1)]
    assert sum(p.numel() for p in head.parameters()) == 30 * 8 + 8 + 8 * 8 + 8 + 8 + 1
    assert head(torch.randn(4, 30)).shape == (4, 1)
    assert sum(p.numel() for p in MLPHead(dim=5, num_classes=3).parameters()) == 5 * 3 + 3  # no hidden layer


def test_output_range_bounds_every_output():
    torch.manual_seed(0)
    head = MLPHead(dim=6, num_classes=1, hidden_dims=[4], output_range=[-3.0, 3.0]).eval()
    with torch.no_grad():
        head.net[-1].bias.fill_(0.0)
    y = head(torch.randn(256, 6) * 1e3)  # saturating inputs
    assert y.min() >= -3.0 and y.max() <= 3.0 and y.abs().max() > 2.9
    assert head(torch.zeros(1, 6)).item() == pytest.approx(
        -3.0 + 6.0 * torch.sigmoid(head.net(torch.zeros(1, 6))).item())  # MMSA: sigmoid(x) * 6 - 3
    free = MLPHead(dim=6, num_classes=1, hidden_dims=[4]).eval()
    free.load_state_dict(head.state_dict())
    assert free(torch.randn(256, 6) * 1e3).abs().max() > 3.0  # without a range the outputs are unbounded


def test_hidden_dropout_sits_after_each_hidden_layer():
    head = MLPHead(dim=4, num_classes=1, hidden_dims=[4], dropout=0.5, hidden_dropout=0.25)
    kinds = [type(m).__name__ for m in head.net]
    assert kinds == ["Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert [m.p for m in head.net if isinstance(m, torch.nn.Dropout)] == [0.5, 0.25]


def test_bad_output_range_and_identity_head_mismatch_are_refused():
    with pytest.raises(ValueError, match="low < high"):
        MLPHead(dim=4, num_classes=1, output_range=[3.0, -3.0])
    with pytest.raises(ValueError, match="must equal the outputs"):
        IdentityHead(dim=4, num_classes=1)
    x = torch.randn(3, 1)
    assert IdentityHead(dim=1, num_classes=1)(x) is x
    assert sum(p.numel() for p in ClassificationHead(dim=4, num_classes=2).parameters()) == 4 * 2 + 2 + 8


def _spec(head: dict, fusion: dict) -> dict:
    encoders = {m: {"type": "mlp_subnet", "input_dim": 3, "dim": d} for m, d in (("a", 2), ("b", 5))}
    return {"encoders": encoders, "fusion": fusion, "head": head}


def test_a_head_of_dim_null_takes_the_fusions_output_width():
    from mmgpt.registry import build_network

    net = build_network(_spec({"type": "mlp_head", "dim": None, "hidden_dims": [4]},
                              {"type": "concat", "input_dims": {"a": 2, "b": 5}}), num_classes=1)
    assert net.head.net[1].in_features == 7  # Dropout, then Linear(2 + 5, 4)
    net = build_network(_spec({"type": "mlp_head", "dim": None, "output_range": [-3, 3]},
                              {"type": "tensor", "dim": None, "modality_dim": None, "input_dims": {"a": 2, "b": 5}}),
                        num_classes=1)
    assert net.head.net[1].in_features == 3 * 6


def test_a_head_of_another_width_than_the_fusions_output_is_refused_at_build_time():
    from mmgpt.registry import SpecError, build_network

    with pytest.raises(SpecError, match=r"model\.net\.head\.dim=8, but the fusion \(concat\) outputs 7 features"):
        build_network(_spec({"type": "classification_head", "dim": 8},
                            {"type": "concat", "input_dims": {"a": 2, "b": 5}}), num_classes=2)


def test_residual_head_is_mmsas_mult_output_block():
    """MMSA's MulT: out_layer(x + proj2(dropout(relu(proj1(x)))))."""
    torch.manual_seed(0)
    head = ResidualHead(dim=6, num_classes=1, dropout=0.5).eval()
    x = torch.randn(4, 6)
    want = head.out(x + head.proj2(torch.relu(head.proj1(x))))
    torch.testing.assert_close(head(x), want)
    assert sum(p.numel() for p in head.parameters()) == 2 * (6 * 6 + 6) + 6 + 1
    head.train()
    head.drop.p = 1.0  # the residual branch dropped entirely: the output layer on x
    torch.testing.assert_close(head(x), head.out(x + head.proj2.bias))
