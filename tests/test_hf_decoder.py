"""The hf_decoder: any transformers causal LM (tiny random GPT-2 / Llama saved to tmp_path) as mmgpt's decoder.

Parity with the LM itself, KV-cached == uncached generation for every conditioning, its own tokenizer for
captions and generation, captioning trains (loss down) for a prefix fusion and for cross-attention, checkpoints
rebuild it without re-reading weights, and a folder that is not there fails in one line.
"""

from pathlib import Path

import pytest
import torch

from mmgpt.decoder import Conditioning, NoConditioning
from mmgpt.errors import UserError
from mmgpt.generation import GenerationConfig, generate
from mmgpt.registry import build_network
from tests.helpers.tiny import DIM, tiny_hf_lm, tiny_spec

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gpt2")
    tiny_hf_lm(path)
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, gpt2_dir) -> Path:
    """A tiny random Llama (rotary positions, no cross-attention), with the GPT-2 folder's tokenizer."""
    path = tmp_path_factory.mktemp("llama")
    tok = transformers.AutoTokenizer.from_pretrained(gpt2_dir)
    tok.save_pretrained(path)
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(1)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def hf_net(folder: Path, fusion: str):
    spec = tiny_spec(fusion)
    spec["decoder"] = {"type": "hf_decoder", "name_or_path": str(folder), "dim": DIM, "max_length": 40}
    return build_network(spec, 5).eval()


def test_hf_decoder_is_the_lm_and_its_kv_cache_gives_the_same_logits(gpt2_dir):
    from mmgpt.hf_decoder import HFDecoder

    ref = transformers.AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    dec = HFDecoder(conditioner=NoConditioning(), name_or_path=str(gpt2_dir), dim=DIM).eval()
    ids = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        want = ref(ids).logits
        torch.testing.assert_close(dec(ids, Conditioning()).logits, want)
        cache = dec.new_cache()
        steps = [dec(ids[:, :5], Conditioning(), cache=cache).logits]
        steps += [dec(ids[:, t : t + 1], Conditioning(), cache=cache).logits for t in range(5, 17)]
    torch.testing.assert_close(torch.cat(steps, 1), want, atol=1e-5, rtol=1e-5)


def test_cross_attention_decoder_starts_as_the_pretrained_lm_and_its_new_layers_train(gpt2_dir):
    ref = transformers.AutoModelForCausalLM.from_pretrained(gpt2_dir).eval()
    net = hf_net(gpt2_dir, "cross_attention")
    assert net.decoder.cross_attention and net.decoder.lm.config.add_cross_attention
    batch_ids = torch.randint(0, 300, (3, 9))
    from tests.conftest import make_batch

    batch = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(net.decode(batch, batch_ids).logits, ref(batch_ids).logits)
    net.train()
    net.decode(batch, batch_ids).logits.square().mean().backward()
    new = {n: p.grad for n, p in net.decoder.lm.named_parameters() if "crossattention.c_proj.weight" in n}
    assert len(new) == 2 and all(g is not None and g.abs().sum() > 0 for g in new.values())


def test_freeze_lm_trains_only_the_new_cross_attention_and_the_media_projection(gpt2_dir):
    from mmgpt.decoder import MediaContext
    from mmgpt.hf_decoder import HFDecoder

    dec = HFDecoder(conditioner=MediaContext(dim=DIM), name_or_path=str(gpt2_dir), dim=DIM, cross_attention=True,
                    freeze_lm=True)
    trainable = {n for n, p in dec.lm.named_parameters() if p.requires_grad}
    assert trainable and all(".crossattention." in n or ".ln_cross_attn." in n for n in trainable)
    assert len(trainable) == 2 * 8  # per block: q_attn, c_attn, c_proj (weight + bias) and ln_cross_attn (w + b)
    assert all(p.requires_grad for p in dec.media_proj.parameters())
    assert len(dec.layers()) == 2 and type(dec.layers()[0]).__name__ == "GPT2Block"


@pytest.mark.parametrize("fusion", ["early", "late", "cross_attention"])
def test_generation_with_kv_cache_equals_uncached(gpt2_dir, fusion):
    from tests.conftest import make_batch

    net = hf_net(gpt2_dir, fusion)
    with torch.no_grad():  # open the cross-attention so the media change what is written
        for n, p in net.decoder.lm.named_parameters():
            if "crossattention.c_proj" in n:
                p.normal_(0, 0.5)
    batch = make_batch()
    prompts = ["2 red", "", "3 blue circles;"]  # left padding of different lengths
    for cfg in (GenerationConfig(max_new_tokens=12), GenerationConfig(max_new_tokens=12, temperature=1.5, top_k=50)):
        outs = []
        for use_cache in (True, False):
            cfg.use_cache = use_cache
            g = torch.Generator().manual_seed(0)
            outs.append(generate(net, batch, prompts, cfg, generator=g))
        assert outs[0].tokens.tolist() == outs[1].tokens.tolist()
        assert outs[0].texts == outs[1].texts
    # the texts are the LM tokenizer's: every id is below its vocabulary, the decode is its own
    tok = net.decoder_tokenizer
    assert type(tok).__name__ == "HFTokenizer" and tok.vocab_size == 300
    assert int(outs[0].tokens.max()) < 300
    assert outs[0].texts[0] == tok.decode(outs[0].tokens[0])


def test_a_non_gpt2_lm_works_with_a_prefix_and_refuses_cross_attention(llama_dir):
    from tests.conftest import make_batch

    net = hf_net(llama_dir, "early")
    batch = make_batch()
    a = generate(net, batch, ["2 red", "", "1"], GenerationConfig(max_new_tokens=8, use_cache=True))
    b = generate(net, batch, ["2 red", "", "1"], GenerationConfig(max_new_tokens=8, use_cache=False))
    assert a.tokens.tolist() == b.tokens.tolist()
    with pytest.raises(UserError, match="no cross-attention layers"):
        hf_net(llama_dir, "cross_attention")


def test_a_missing_folder_fails_in_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = tiny_spec("early")
    spec["decoder"] = {"type": "hf_decoder", "name_or_path": "no-such-org/no-such-model", "dim": DIM}
    with pytest.raises(UserError) as e:
        build_network(spec, 5)
    message = str(e.value)
    assert "no-such-org/no-such-model" in message and "save_pretrained" in message and "\n" not in message


def caption_cfg(compose_cfg, folder: Path, fusion: str, epochs: int):
    return compose_cfg(["experiment=smoke", "task=caption", f"model/fusion={fusion}", "model/decoder=hf",
                        f"model.decoder.name_or_path={folder}", "logger=csv", f"trainer.max_epochs={epochs}",
                        "data.num_train=96", "data.num_val=16", "data.num_test=16", "data.batch_size=16",
                        "model.module.objectives.lm.max_new_tokens=6", "model.module.optimizer.lr=5e-3"])


def epoch_losses(run_dir: Path) -> list[float]:
    import csv

    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    return [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]


@pytest.mark.slow  # minutes on 2 CPUs: in CI's slow run (make test-slow)
@pytest.mark.parametrize("fusion", ["early", "cross_attention"])
def test_captioning_trains_with_the_hf_decoder_and_its_checkpoint_generates(gpt2_dir, fusion, compose_cfg,
                                                                             tmp_path):
    import shutil

    from omegaconf import OmegaConf

    from mmgpt.cli.generate import run_generate
    from mmgpt.cli.train import train

    lm_dir = Path(shutil.copytree(gpt2_dir, tmp_path / "lm"))
    cfg = caption_cfg(compose_cfg, lm_dir, fusion, epochs=5)
    results = train(cfg)
    losses = epoch_losses(Path(cfg.paths.output_dir))
    assert len(losses) == 5 and losses[-1] < 0.7 * losses[0], losses
    assert {"val/token_acc", "val/ppl", "val/bleu"} <= set(results["val"])
    # the checkpoint rebuilds the LM from its config and tokenizer alone (its weights come from the state dict:
    # the folder's weight file is not read again) and mmgpt-generate writes with the LM's tokenizer
    (lm_dir / "model.safetensors").unlink()
    from mmgpt.datamodules.synthetic.export import export_synthetic

    export_synthetic(Path(cfg.paths.output_dir) / "media", num_train=2, num_val=0, num_test=0, seed=0)
    image = sorted((Path(cfg.paths.output_dir) / "media").rglob("*.png"))[0]
    texts = run_generate(OmegaConf.create({"ckpt_path": results["best_ckpt"], "image": str(image), "audio": None,
                                           "prompt": "2", "num_samples": 1, "max_new_tokens": 6,
                                           "temperature": 0.0, "top_k": None, "top_p": None, "use_cache": True,
                                           "seed": 0, "device": "cpu", "plugins": []}))
    assert len(texts) == 1 and texts[0].startswith("2")


def test_a_backbone_text_encoder_has_no_mmgpt_tokenizer_and_says_so(tmp_path):
    """Captions put into the text input must be tokenized as its encoder reads them: never silently as bytes."""
    from tests.helpers.backbones import encoder_spec, make_bert

    spec = tiny_spec("late", decoder=False)
    spec["encoders"]["text"] = encoder_spec("bert", make_bert(tmp_path / "bert"), dim=DIM)
    net = build_network(spec, 5)
    with pytest.raises(UserError, match="no mmgpt tokenizer"):
        net.encoder_tokenizer  # noqa: B018
    assert type(build_network(tiny_spec("late", decoder=False), 5).encoder_tokenizer).__name__ == "ByteTokenizer"


def test_a_missing_or_wrong_name_or_path_is_one_error_line_through_the_module_builder(compose_cfg, tmp_path):
    """The network is built inside Hydra's instantiate (the LightningModule): the command still prints one line."""
    from mmgpt.cli.common import user_errors
    from mmgpt.cli.train import build_module
    from mmgpt.datamodules.synthetic import SyntheticDataModule

    dm = SyntheticDataModule(num_train=4, num_val=4, num_test=4)
    for extra, words in (([], "model.decoder.name_or_path: missing"),
                         ([f"model.decoder.name_or_path={tmp_path / 'none'}"], "save_pretrained(DIR)")):
        cfg = compose_cfg(["experiment=smoke", "task=caption", "model/decoder=hf", *extra])
        with pytest.raises(SystemExit) as e:
            user_errors(build_module)(cfg, dm)
        assert str(e.value).startswith("error: ") and words in str(e.value) and "\n" not in str(e.value)
