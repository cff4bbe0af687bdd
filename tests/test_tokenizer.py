import pytest

from mmgpt.tokenizer import ByteTokenizer


def test_roundtrip_utf8():
    tok = ByteTokenizer(64)
    text = "How many 圆 shapes? ünïcode"
    ids = tok.encode(text)
    assert ids[0] == tok.BOS and ids[-1] == tok.EOS
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids[1:]) == text


def test_truncation_keeps_specials():
    tok = ByteTokenizer(10)
    ids = tok.encode("a" * 100)
    assert len(ids) == 10 and ids[0] == tok.BOS and ids[-1] == tok.EOS


def test_batch_encode_pads_and_masks_missing_text():
    tok = ByteTokenizer(32)
    ids, mask = tok.batch_encode(["ab", None, "abcd"])
    assert ids.shape == mask.shape == (3, 6)
    assert mask.sum(1).tolist() == [4, 0, 6]
    assert (ids[~mask] == tok.PAD).all()


def test_rejects_too_small_limit():
    with pytest.raises(ValueError):
        ByteTokenizer(1)


# -- the trained byte-level BPE (mmgpt-data tokenizer) ------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from mmgpt.datamodules.synthetic.export import export_synthetic

    root = tmp_path_factory.mktemp("data") / "folder"
    export_synthetic(root, num_train=60, num_val=4, num_test=4, seed=0)
    return root


@pytest.fixture(scope="module")
def bpe_path(folder):
    from mmgpt.cli.data import main

    assert main(["tokenizer", str(folder), "--vocab-size", "400"]) == 0
    return folder / "tokenizer.json"


def test_bpe_trained_on_a_folder_round_trips_and_compresses_its_texts(bpe_path, folder):
    import json

    from mmgpt.tokenizer import SPECIAL_TOKENS, BPETokenizer, load_tokenizer

    tok = load_tokenizer(bpe_path, 64)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 400
    assert [tok.PAD, tok.BOS, tok.EOS, tok.SEP, tok.MASK] == list(range(400 - len(SPECIAL_TOKENS), 400))
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    for text in [rows[0]["caption"], rows[1]["text"], "unseen: ünïcode 圆 <eos> tabs\tand  spaces"]:
        ids = tok.encode(text)
        assert ids[0] == tok.BOS and ids[-1] == tok.EOS and all(0 <= i < 400 for i in ids)
        assert tok.decode(ids) == text  # byte-level: any text comes back, special-looking text included
        assert not set(ids[1:-1]) & tok.special_ids  # "<eos>" in a text is text, never the end token
    caption = rows[0]["caption"]
    assert len(tok.encode_text(caption)) < len(caption.encode()) / 2  # merges learnt from the folder's captions
    ids, mask = tok.batch_encode([caption, None])
    assert ids.shape[0] == 2 and mask[1].sum() == 0 and (ids[1] == tok.PAD).all()
    assert load_tokenizer(bpe_path.parent, 64).fingerprint() == tok.fingerprint()  # the folder or the file


def test_bpe_trains_on_a_shards_folder_too(tmp_path):
    from mmgpt.cli.data import main
    from mmgpt.tokenizer import load_tokenizer
    from tests.helpers.folders import export_and_shard

    shards = export_and_shard(tmp_path, num_train=40, samples_per_shard=16)
    assert main(["tokenizer", str(shards), "--vocab-size", "280", "--out", str(tmp_path / "tok.json")]) == 0
    assert load_tokenizer(tmp_path / "tok.json", 32).vocab_size == 280


def test_tokenizer_command_refuses_bad_input_in_one_line(tmp_path, folder, capsys):
    from mmgpt.cli.data import main

    assert main(["tokenizer", str(tmp_path), "--vocab-size", "300"]) == 1
    assert main(["tokenizer", str(folder), "--vocab-size", "100", "--out", str(tmp_path / "t.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no train.jsonl" in err[0] and "--vocab-size 100" in err[1]


def test_text_encoder_and_decoder_vocab_follow_the_tokenizer(bpe_path):
    from mmgpt.decoder import NoConditioning, TextDecoder
    from mmgpt.encoders.text import TextEncoder
    from mmgpt.errors import UserError

    enc = TextEncoder(dim=8, num_layers=1, num_heads=2, max_length=32, tokenizer=str(bpe_path))
    assert enc.tok_emb.num_embeddings == 400 and enc.tokenizer.vocab_size == 400
    ids, mask = enc.tokenizer.batch_encode(["2 red circles; 1 low beep"])
    assert enc(ids, mask).tokens.shape == (1, ids.shape[1], 8)
    dec = TextDecoder(conditioner=NoConditioning(), dim=8, num_layers=1, num_heads=2, max_length=32,
                      tokenizer=str(bpe_path))
    assert dec.lm_head.weight.shape[0] == 400 and dec.tokenizer.fingerprint() == enc.tokenizer.fingerprint()
    assert TextEncoder(dim=8, num_layers=1, num_heads=2).tok_emb.num_embeddings == ByteTokenizer.vocab_size
    with pytest.raises(UserError, match="vocab_size=261 but the tokenizer"):
        TextEncoder(dim=8, num_layers=1, num_heads=2, vocab_size=261, tokenizer=str(bpe_path))
    with pytest.raises(UserError, match="no such file"):
        TextEncoder(dim=8, num_layers=1, num_heads=2, tokenizer=str(bpe_path.parent / "missing.json"))


@pytest.mark.slow  # minutes on 2 CPUs: in CI's slow run (make test-slow)
def test_a_training_run_reads_and_writes_text_with_the_bpe(bpe_path, folder, compose_cfg):
    """The text processor tokenizes with the encoder's BPE (processors travel with the encoders), the scratch
    decoder shares it, and a short pre-training run (causal LM + masked LM on it) trains."""
    import json

    from omegaconf import OmegaConf

    from mmgpt.cli.common import build_datamodule
    from mmgpt.cli.train import build_module, train
    from mmgpt.tokenizer import BPETokenizer

    overrides = ["experiment=smoke", "task=pretrain", "'objectives={lm:1.0,mlm:1.0}'", "logger=csv",
                 "data=manifest", f"data.root={folder}", "data.num_train=48", "data.num_val=4", "data.num_test=4",
                 "data.batch_size=16", f"model.net.encoders.text.tokenizer={bpe_path}", "trainer.max_epochs=2",
                 "model.module.objectives.lm.max_new_tokens=4"]
    cfg = compose_cfg([o.strip("'") for o in overrides])
    dm = build_datamodule(cfg.data, OmegaConf.to_container(cfg.model.net, resolve=True))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    module = build_module(cfg, dm)
    tok = module.net.encoder_tokenizer
    assert isinstance(tok, BPETokenizer) and isinstance(module.net.decoder_tokenizer, BPETokenizer)
    assert module.net.encoders["text"].tok_emb.num_embeddings == module.net.decoder.lm_head.weight.shape[0] == 400
    ids, mask = batch.inputs["text"], batch.masks["text"]
    assert int(ids[mask].max()) < 400 and bool((ids[mask] > 260).any())  # merged tokens: not bytes
    rows = {r["id"]: r for r in map(json.loads, (folder / "train.jsonl").read_text().splitlines())}
    assert [tok.decode(row[m]) for row, m in zip(ids, mask)] == [rows[i]["text"] for i in batch.ids]
    results = train(cfg)
    assert results["global_step"] == 6 and {"val/token_acc", "val/mlm_acc"} <= set(results["val"])


@pytest.mark.parametrize(("text", "why"), [("{not json", "not a readable tokenizer.json"),
                                           ('["a", "list"]', "expected a BPE tokenizer.json"),
                                           ('{"model": "BPE"}', "expected a BPE tokenizer.json"),
                                           ('{"model": {"type": "BPE"}}', "not a readable tokenizer.json")])
def test_a_foreign_tokenizer_json_is_one_line(tmp_path, text, why):
    """A tokenizer.json from elsewhere is data: malformed, of another shape or not loadable, it is one line."""
    from mmgpt.errors import UserError
    from mmgpt.tokenizer import load_tokenizer

    path = tmp_path / "tokenizer.json"
    path.write_text(text)
    with pytest.raises(UserError) as refused:
        load_tokenizer(path, 16)
    assert str(refused.value).startswith(f"tokenizer {path}") and why in str(refused.value)
    assert "\n" not in str(refused.value)
