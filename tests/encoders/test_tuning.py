"""Fine-tuning controls of pretrained backbones (``tuning:``), on a tiny BERT saved and loaded by path: freeze
(eval mode, no_grad, bit-identical after training), unfreeze_last and peft LoRA train exactly what they claim,
lr_mult parameter groups, gradient checkpointing, and refused settings."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmgpt.encoders.tuning import counts
from mmgpt.registry import SpecError, build_network
from mmgpt.training.lit_module import MultimodalModule
from mmgpt.training.optim import param_groups
from tests.helpers.backbones import FAMILIES
from tests.helpers.bert_double import bert_run_cfg, bert_spec, save_tiny_bert

H, LAYERS, DIM = 32, 3, 16
#: One BERT layer of hidden size H (intermediate 2H): attention q, k, v, o + LayerNorm, up, down + LayerNorm.
LAYER_PARAMS = 4 * (H * H + H) + 2 * H + (H * 2 * H + 2 * H) + (2 * H * H + H) + 2 * H
PROJ = H * DIM + DIM


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "tiny-bert", hidden_size=H, num_layers=LAYERS)


def _encoder(bert, **tuning):
    torch.manual_seed(0)
    net = build_network(bert_spec(bert, dim=DIM, **tuning), 3)
    return net, net.encoders["text"]


def _tokens(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[0, 6:] = False
    return x, mask


def _trained_names(encoder: nn.Module) -> set[str]:
    """Parameters that receive a gradient from one backward pass."""
    encoder.zero_grad()
    encoder(*_tokens()).tokens.square().sum().backward()
    return {n for n, p in encoder.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_layer_count_formula_matches_the_model(bert):
    _, enc = _encoder(bert, freeze=False)
    assert sum(p.numel() for p in enc.layers()[0].parameters()) == LAYER_PARAMS


def test_frozen_backbone_trains_only_the_projection_in_eval_mode_without_grad(bert):
    net, enc = _encoder(bert)
    c = counts(enc)
    assert (c.trainable, c.adapters, c.backbone_trainable) == (PROJ, 0, 0)
    assert c.frozen == sum(p.numel() for p in enc.backbone.parameters())
    net.train()  # what Lightning calls every epoch
    assert enc.training and enc.proj.training
    assert not any(m.training for m in enc.backbone.modules()), "a frozen backbone must stay in eval mode"
    seen = []
    enc.backbone.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    a, b = enc(*_tokens()), enc(*_tokens())
    assert seen == [False, False]
    assert torch.equal(a.tokens, b.tokens)  # dropout (p=0.1 in the config) is off
    assert _trained_names(enc) == {"proj.weight", "proj.bias"}


@pytest.mark.parametrize("n", [1, 2])
def test_unfreeze_last_trains_exactly_the_top_layers(bert, n):
    net, enc = _encoder(bert, unfreeze_last=n)
    c = counts(enc)
    assert c.trainable == PROJ + n * LAYER_PARAMS and c.backbone_trainable == n * LAYER_PARAMS
    top = {f"backbone.encoder.layer.{i}." for i in range(LAYERS - n, LAYERS)}
    claimed = {name for name, p in enc.named_parameters() if p.requires_grad}
    assert claimed == {name for name, _ in enc.named_parameters() if name.startswith(("proj.", *top))}
    assert _trained_names(enc) == claimed
    net.train()
    layers = enc.layers()
    assert [m.training for m in layers] == [False] * (LAYERS - n) + [True] * n
    assert not enc.backbone.embeddings.training
    net.eval()
    assert not any(m.training for m in layers)


def test_lora_trains_exactly_the_adapters(bert):
    net, enc = _encoder(bert, lora={"r": 2, "alpha": 4, "target_modules": ["query", "value"]})
    c = counts(enc)
    adapters = LAYERS * 2 * 2 * (H + H)  # layers x (query, value) x r x (in + out)
    assert (c.adapters, c.backbone_trainable, c.trainable) == (adapters, adapters, PROJ + adapters)
    claimed = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert claimed == {n for n, _ in enc.named_parameters() if "lora_" in n} | {"proj.weight", "proj.bias"}
    # B starts at zero (the adapted model equals the base model), so only B gets a gradient on the first step
    assert _trained_names(enc) == {n for n in claimed if "lora_B" in n} | {"proj.weight", "proj.bias"}
    net.train()
    assert enc.backbone.training  # adapters train through the backbone: its dropout is on, as in peft


def test_lora_with_unfreeze_last(bert):
    _, enc = _encoder(bert, unfreeze_last=1, lora={"r": 2, "target_modules": ["query"]})
    c = counts(enc)
    assert c.adapters == LAYERS * 2 * (H + H)
    # the top layer trains whole (its query's base weights and its adapter), the others only their adapters
    assert c.backbone_trainable == LAYER_PARAMS + (LAYERS - 1) * 2 * (H + H) + 2 * (H + H)


def test_peft_lora_computes_what_mmgpt_lora_computes():
    """The two LoRA implementations (mmgpt's for its own layers, peft's for backbones) are the same function."""
    from peft import LoraConfig, inject_adapter_in_model

    from mmgpt.lora import LoRALinear

    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    ours = LoRALinear(nn.Linear(8, 6), rank=2, alpha=5.0)
    ours.base.load_state_dict(base.state_dict())
    theirs = nn.Sequential()
    theirs.add_module("lin", base)
    theirs = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=5.0, target_modules=["lin"]), theirs)
    nn.init.normal_(ours.lora_b)
    with torch.no_grad():
        theirs.lin.lora_A["default"].weight.copy_(ours.lora_a)
        theirs.lin.lora_B["default"].weight.copy_(ours.lora_b)
    x = torch.randn(4, 8)
    torch.testing.assert_close(theirs(x), ours(x))


def test_gradient_checkpointing_gives_the_same_gradients(bert):
    grads = {}
    for ckpt in (False, True):
        net, enc = _encoder(bert, unfreeze_last=2, gradient_checkpointing=ckpt)
        net.train()
        torch.manual_seed(1)
        enc.zero_grad()
        enc(*_tokens()).tokens.square().sum().backward()
        grads[ckpt] = {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}
        assert all(layer.gradient_checkpointing == ckpt for layer in enc.layers()[-2:])
    assert grads[True].keys() == grads[False].keys()
    for n in grads[True]:
        torch.testing.assert_close(grads[True][n], grads[False][n], msg=n)


@pytest.mark.parametrize(("tuning", "message"), [
    ({"unfreeze_last": 4}, "tuning.unfreeze_last=4: the backbone has only 3 layers"),
    ({"unfreeze_last": -1}, "tuning.unfreeze_last: expected a number of layers >= 0"),
    ({"freeze": False, "lora": {"r": 2, "target_modules": ["query"]}}, "tuning.lora with tuning.freeze=false"),
    ({"lora": {"r": 2}}, "tuning.lora.target_modules: missing"),
    ({"lora": {"r": 2, "target_modules": ["qkv"]}}, "linear layers of this backbone are named: dense, key, query"),
    ({"lora": {"r": 2, "rank_typo": 3, "target_modules": ["query"]}}, "tuning.lora: "),
    ({"lr_mult": 0}, "tuning.lr_mult: expected a positive multiplier"),
])
def test_bad_tuning_is_one_line_naming_the_key(bert, tuning, message):
    with pytest.raises(SpecError) as e:
        build_network(bert_spec(bert, dim=DIM, **tuning), 3)
    assert str(e.value).startswith("model.net.encoders.text.tuning.") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_a_misspelt_tuning_key_names_itself(bert):
    with pytest.raises(SpecError, match=r"^model\.net\.encoders\.text \(test_bert\): tuning\.unfreze_last: not a "
                                        r"tuning setting \(settings: freeze, unfreeze_last, lora"):
        build_network(bert_spec(bert, dim=DIM, unfreze_last=1), 3)


def test_lr_mult_puts_backbone_parameters_in_their_own_groups(bert):
    module = MultimodalModule(net=bert_spec(bert, dim=DIM, unfreeze_last=1, lr_mult=0.1), num_classes=3,
                              optimizer={"type": "adamw", "lr": 1e-3, "weight_decay": 0.05}, scheduler=None)
    optimizer = module.configure_optimizers()["optimizer"]
    enc = module.net.encoders["text"]
    backbone = {id(p) for p in enc.backbone.parameters() if p.requires_grad}
    by_lr: dict[float, set[int]] = {}
    for group in optimizer.param_groups:
        by_lr.setdefault(round(group["lr"], 12), set()).update(id(p) for p in group["params"])
        for p in group["params"]:  # weight decay on matrices only, in every group
            assert group["weight_decay"] == (0.05 if p.ndim >= 2 else 0.0)
    assert by_lr[1e-4] == backbone and len(backbone) == 16
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert by_lr[1e-3] == trainable - backbone and id(enc.proj.weight) in by_lr[1e-3]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)  # each parameter once


def test_lr_mult_needs_an_explicit_lr(bert):
    net = build_network(bert_spec(bert, dim=DIM, unfreeze_last=1, lr_mult=0.5), 3)
    with pytest.raises(ValueError, match="encoders.text.tuning.lr_mult=0.5"):
        param_groups(net, 0.0)
    assert len(param_groups(net, 0.0, lr=1.0)) == 4


@pytest.mark.parametrize("tuning", [{}, {"unfreeze_last": 1}, {"lora": {"r": 2, "target_modules": ["query"]}}])
def test_frozen_weights_are_bit_identical_after_lightning_training(bert, tuning):
    """Through the LightningModule and the Trainer (which calls model.train() every epoch): every frozen backbone
    tensor, buffers included, is bit-identical after training; every trainable one moved."""
    import pytorch_lightning as pl

    from mmgpt.datamodules.synthetic import SyntheticDataModule

    torch.manual_seed(0)
    module = MultimodalModule(net=bert_spec(bert, dim=DIM, **tuning), num_classes=15, scheduler=None,
                              optimizer={"type": "adamw", "lr": 1e-2, "weight_decay": 0.05, "fused": True})
    backbone = module.net.encoders["text"].backbone
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    dm = SyntheticDataModule(num_train=32, num_val=8, num_test=8, batch_size=8, augment=False)
    pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1).fit(module, dm)
    after = backbone.state_dict()
    for k, v in before.items():
        if k in trainable:
            assert not torch.equal(after[k], v), f"{k} should have trained"
        else:
            assert torch.equal(after[k], v), f"frozen {k} changed"
    assert len(trainable) == {"": 0, "unfreeze_last": 16, "lora": 6}[next(iter(tuning), "")]


def test_frozen_backbone_is_bit_identical_after_training_and_counts_are_in_results(bert, compose_cfg, tmp_path):
    from mmgpt.cli.train import train

    cfg = bert_run_cfg(compose_cfg, bert, {"unfreeze_last": 1, "lr_mult": 0.5}, "model.dropout=0.1")
    results = train(cfg)
    trained = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    _, fresh = _encoder(bert)
    state = trained["state_dict"]
    omitted = set(trained["backbones"]["net.encoders.text"]["omitted"])
    # the frozen tensors are not even written (slim checkpoint): they are the ones read from the folder
    frozen = {f"net.encoders.text.backbone.{k}" for k in fresh.backbone.state_dict()
              if not k.startswith("encoder.layer.2.")}
    assert omitted == frozen
    top = [k for k in state if k.startswith("net.encoders.text.backbone.encoder.layer.2.")]
    assert len(top) == 16 and any(not torch.equal(state[k], fresh.backbone.state_dict()[k[27:]]) for k in top)
    counted = results["params_by_part"]["encoders.text"]
    assert counted == {"trainable": PROJ + LAYER_PARAMS, "frozen": counts(fresh).frozen - LAYER_PARAMS,
                       "adapters": 0, "backbone_trainable": LAYER_PARAMS}



#: LoRA target modules of each tiny family of tests/helpers/backbones.py (peft matches module-name suffixes).
LORA_TARGETS = {"bert": ["query", "value"], "gpt2": ["c_attn"], "vit": ["q_proj", "v_proj"],
                "clip": ["q_proj", "v_proj"], "wav2vec2": ["q_proj", "v_proj"], "whisper": ["q_proj", "v_proj"],
                "timm": ["qkv"]}


def _family_input(family: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(0)
    kind = FAMILIES[family][1]
    if kind == "text":
        return torch.randint(5, 40, (2, 8), generator=g), torch.ones(2, 8, dtype=torch.bool)
    if kind == "image":
        return torch.randn(2, 3, 32, 32, generator=g), None
    if family == "whisper":
        return torch.randn(2, 16, 100, generator=g), None
    return torch.randn(2, 4000, generator=g), torch.ones(2, 4000, dtype=torch.bool)


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {name: make(root) for name, (make, _, _) in FAMILIES.items()}


@pytest.mark.parametrize("family", sorted(LORA_TARGETS))
def test_tuning_of_every_backbone_family(families, family):
    """freeze, unfreeze_last, LoRA and gradient checkpointing on the real HF / timm encoder classes."""
    from mmgpt.registry import build
    from tests.helpers.backbones import encoder_spec

    def built(**tuning):
        torch.manual_seed(0)
        enc = build(encoder_spec(family, families[family], dim=DIM, tuning=tuning), "enc", "encoder")
        enc.apply_tuning()  # what build_network does
        return enc

    x, mask = _family_input(family)
    frozen = built()
    proj = sum(p.numel() for p in frozen.proj.parameters())
    assert counts(frozen).trainable == proj and frozen.frozen
    top = built(unfreeze_last=1)
    assert counts(top).backbone_trainable == sum(p.numel() for p in top.layers()[-1].parameters()) > 0
    lora = built(lora={"r": 2, "target_modules": LORA_TARGETS[family]})
    c = counts(lora)
    assert c.adapters > 0 and c.trainable == proj + c.adapters == proj + c.backbone_trainable
    lora.train()
    lora(x, mask).tokens.square().sum().backward()
    assert all(p.grad is not None for n, p in lora.named_parameters() if "lora_B" in n)
    ckpt = built(freeze=False, gradient_checkpointing=True)
    ckpt.train()
    ckpt(x, mask).tokens.sum().backward()
    assert all(p.grad is not None for p in ckpt.layers()[0].parameters())


def test_tuning_from_the_command_line(families, compose_cfg, tmp_path):
    """`model/encoder/text@...=hf` + `tuning.*` overrides, as the README writes them, through mmgpt-train."""
    from mmgpt.cli.train import train

    at = "model.net.encoders.text"
    cfg = compose_cfg(["experiment=smoke", "logger=csv", "model/fusion=late", "data.num_train=32", "data.num_val=16",
                       "test=false", f"model/encoder/text@{at}=hf", f"{at}.name_or_path={families['bert']}",
                       f"{at}.tuning.lora={{r:2,alpha:4,target_modules:[query,value]}}", f"{at}.tuning.lr_mult=0.1",
                       f"{at}.tuning.gradient_checkpointing=true"])
    results = train(cfg)
    part = results["params_by_part"]["encoders.text"]
    assert part["adapters"] == part["backbone_trainable"] == 2 * 2 * 2 * (32 + 32)  # 2 layers x (q, v) x r x (H+H)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["net"]["encoders"]["text"]["tuning"]["lr_mult"] == 0.1
    lrs = sorted(g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"])
    assert lrs[0] == pytest.approx(0.1 * lrs[-1])  # the adapters' groups at lr * lr_mult
    # a slim checkpoint of the real hf_text encoder (identity: the sha256 of its weight files), evaluated again
    from omegaconf import open_dict

    from mmgpt.cli.evaluate import evaluate

    entry = ckpt["backbones"]["net.encoders.text"]
    assert entry["name_or_path"] == str(families["bert"]) and len(entry["sha256"]) == 64 and entry["omitted"]
    eval_cfg = compose_cfg([f"ckpt_path={results['best_ckpt']}"], config_name="eval")
    with open_dict(eval_cfg):
        eval_cfg.paths.output_dir = str(tmp_path / "eval")
    assert evaluate(eval_cfg)["metrics"]["val/acc"] == pytest.approx(results["val"]["val/acc"], abs=1e-6)
