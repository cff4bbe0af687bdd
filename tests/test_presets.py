"""The preset builders write the same network specs as the YAML under conf/model/ composes, for every option of
conf/model/fusion/ (a new fusion YAML without its builder fails here), at the default sizes and at others."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from mmgpt import presets
from mmgpt.config import CONFIG_DIR
from mmgpt.model import MultimodalTransformer
from mmgpt.presets import Sizes

FUSION_YAMLS = sorted(p.stem for p in (CONFIG_DIR / "model" / "fusion").glob("*.yaml"))
SMALL = Sizes(dim=16, num_heads=2, mlp_ratio=3.0, dropout=0.1, encoder_layers=2, image_size=16, patch_size=4,
              sample_rate=16000, n_mels=16, n_fft=128, max_text_length=24)
#: The same sizes as overrides of the train config.
SMALL_OVERRIDES = ["model.dim=16", "model.num_heads=2", "model.mlp_ratio=3.0", "model.dropout=0.1",
                   "model.encoder_layers=2", "data.image_size=16", "model.net.encoders.image.patch_size=4",
                   "data.sample_rate=16000", "model.net.encoders.audio.n_mels=16",
                   "model.net.encoders.audio.n_fft=128", "data.max_text_length=24"]


def test_every_fusion_yaml_has_a_preset() -> None:
    assert set(FUSION_YAMLS) == set(presets.FUSIONS) | set(presets.FEATURE_FUSIONS)


@pytest.mark.parametrize("fusion", FUSION_YAMLS)
def test_the_preset_spec_is_what_the_yaml_composes(compose_cfg, fusion: str) -> None:
    # The default sizes with and without the caption decoder; other sizes with it (every size reaches a part).
    for small, task in ((False, "classify"), (False, "caption"), (True, "caption")):
        cfg = compose_cfg([f"model/fusion={fusion}", f"task={task}", *(SMALL_OVERRIDES if small else [])])
        composed = OmegaConf.to_container(cfg.model.net, resolve=True)
        spec = presets.network_spec(fusion, SMALL if small else Sizes(), decoder=task == "caption")
        assert spec == composed, (fusion, task, small)


def test_named_builders_build_the_network_of_their_preset() -> None:
    tiny = Sizes(dim=16, num_heads=2, image_size=16)
    for builder, fusion in ((presets.early_fusion, "early"), (presets.late_fusion, "late"),
                            (presets.cross_attention_fusion, "cross_attention"),
                            (presets.resampler_fusion, "resampler")):
        net = builder(num_classes=3, sizes=tiny)
        assert isinstance(net, MultimodalTransformer) and net.decoder is None
        assert net.encoders["text"].pos_emb.weight.shape == (1, 64, 16)
        assert type(net.fusion).__name__.lower().startswith(fusion.split("_")[0]), fusion
    assert presets.early_fusion(num_classes=3, sizes=tiny, decoder=True).decoder is not None


def test_an_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="presets: early, late"):
        presets.network_spec("no_such_fusion")
