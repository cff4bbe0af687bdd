"""GPT-2 loader parity with transformers' GPT2LMHeadModel (random weights, no download); torchvision stem."""

import pytest
import torch

from mmgpt.decoder import Conditioning
from mmgpt.encoders.image import TorchvisionStem
from mmgpt.pretrained import gpt2_decoder

transformers = pytest.importorskip("transformers")


def tiny_gpt2(tmp_path, safe: bool):
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=300, n_positions=40,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # make biases and norms non-trivial so a wrong mapping shows
        for n, p in ref.named_parameters():
            if "ln" in n or "bias" in n:
                p.add_(0.1 * torch.randn_like(p))
    if safe:
        ref.save_pretrained(tmp_path)  # config.json + model.safetensors
    else:  # the older .bin layout (recent transformers only writes safetensors)
        ref.config.to_json_file(tmp_path / "config.json")
        torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    return ref


@pytest.mark.parametrize("safe", [True, False])  # model.safetensors, pytorch_model.bin
def test_gpt2_decoder_matches_transformers(tmp_path, safe):
    ref = tiny_gpt2(tmp_path, safe)
    assert (tmp_path / ("model.safetensors" if safe else "pytorch_model.bin")).is_file()
    dec = gpt2_decoder(tmp_path).eval()
    ids = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        want = ref(ids).logits
        got = dec(ids, Conditioning()).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # The KV cache gives the same logits as the reference, token by token.
    cache = dec.new_cache()
    with torch.no_grad():
        steps = [dec(ids[:, :5], Conditioning(), cache=cache).logits]
        steps += [dec(ids[:, t : t + 1], Conditioning(), cache=cache).logits for t in range(5, 17)]
    torch.testing.assert_close(torch.cat(steps, 1), want, atol=1e-4, rtol=1e-4)


def test_gpt2_decoder_with_new_gated_cross_attention_starts_as_gpt2(tmp_path):
    ref = tiny_gpt2(tmp_path, safe=True)
    dec = gpt2_decoder(tmp_path, cross_attention=True, gate_init=0.0).eval()
    ids = torch.randint(0, 300, (1, 9))
    ctx = Conditioning(context=torch.randn(1, 4, 32), context_mask=torch.ones(1, 4, dtype=torch.bool))
    with torch.no_grad():
        torch.testing.assert_close(dec(ids, ctx).logits, ref(ids).logits, atol=1e-4, rtol=1e-4)


def test_gpt2_needs_heads_without_config(tmp_path):
    tiny_gpt2(tmp_path, safe=True)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match="num_heads"):
        gpt2_decoder(tmp_path / "model.safetensors")
    assert gpt2_decoder(tmp_path / "model.safetensors", num_heads=4).blocks[0].attn.num_heads == 4


def test_torchvision_stem_gives_the_token_grid_and_plugs_into_the_image_encoder():
    from mmgpt.encoders import ImageEncoder

    stem = TorchvisionStem(dim=16, patch_size=8, name="resnet18", weights=None)
    assert stem(torch.randn(2, 3, 32, 32)).shape == (2, 16, 4, 4)
    enc = ImageEncoder(dim=16, num_layers=1, num_heads=2, image_size=32, patch_size=8, stem=stem)
    out = enc(torch.randn(2, 3, 32, 32))
    assert out.tokens.shape == (2, 16, 16)
    frozen = TorchvisionStem(dim=16, patch_size=4, freeze=True)
    assert not any(p.requires_grad for p in frozen.trunk.parameters())
    assert all(p.requires_grad for p in frozen.proj.parameters())


def test_torchvision_stem_config_composes_and_trains_one_step(compose_cfg):
    from mmgpt.cli.train import train
    from mmgpt.config import check_targets

    cfg = compose_cfg(["experiment=smoke", "debug=fdr", "logger=csv", "+model/image_stem=torchvision"])
    check_targets(cfg)
    assert cfg.model.net.encoders.image.stem.weights is None and cfg.model.net.encoders.image.stem.patch_size == 8
    results = train(cfg)
    assert results["global_step"] == 1 and results["params"]["encoders.image"] > 100_000  # the ResNet trunk
