"""Structured config schemas (registered with Hydra's ConfigStore) and a check of every ``_target_`` node.

The schemas make Hydra reject a misspelt key at compose time, both on the command line and inside YAML files.
:func:`check_targets` then checks, before anything is built, that every key of every ``_target_`` node names
a parameter of its target, and reports the full key path otherwise.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf, open_dict

from mmgpt.datamodules.options import config_defaults as data_option_defaults
from mmgpt.errors import UserError
from mmgpt.paths import CONFIG_DIR  # noqa: F401  (re-exported: mmgpt.config.CONFIG_DIR)
from mmgpt.registry import HYDRA_KEYS, NetworkSpec, check_spec, unknown_argument
from mmgpt.secrets import redacted


@dataclass
class TrainerSchema:
    """The ``pytorch_lightning.Trainer`` arguments mmgpt's trainer configs may set."""

    _target_: str = "pytorch_lightning.Trainer"
    default_root_dir: str | None = None
    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: Any = "auto"
    precision: Any = "32-true"
    max_epochs: int | None = None
    min_epochs: int | None = None
    max_steps: int = -1
    max_time: Any = None
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str | None = None
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 50
    check_val_every_n_epoch: int | None = 1
    val_check_interval: Any = None
    num_sanity_val_steps: int = 2
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    overfit_batches: Any = 0.0
    fast_dev_run: Any = False
    deterministic: Any = False
    benchmark: bool | None = None
    detect_anomaly: bool = False
    profiler: Any = None
    enable_model_summary: bool = False
    enable_progress_bar: bool = True
    enable_checkpointing: bool | None = None
    use_distributed_sampler: bool = True
    sync_batchnorm: bool = False
    plugins: Any = None


@dataclass
class ModelSchema:
    """``model``: shared sizes plus the network, fusion and LightningModule configs."""

    dim: int = 64
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    encoder_layers: int = 1
    modalities: Any = "${mmgpt_keys:${model.net.encoders}}"  # the encoders' modality names, sorted
    net: Any = MISSING
    fusion: Any = MISSING
    decoder: Any = None                 # model/decoder: the text decoder matching the fusion (task=caption)
    freeze: list[str] = field(default_factory=list)  # network parts not trained (fine-tuning)
    lora: Any = None                    # add_lora arguments ({rank, alpha, parts, targets}) or null
    init: Any = None                    # a peer's initial weights ({peer, model, seed}: mmgpt.peers) or null
    module: Any = MISSING
    compile: bool = False                   # torch.compile the network
    activation_checkpointing: bool = False  # recompute Transformer blocks in backward to save memory


@dataclass
class PathsSchema:
    log_dir: str = "logs"
    output_dir: str = MISSING


@dataclass
class PrimaryMetricSchema:
    """``primary_metric``: the metric that ranks checkpoints, early stopping and ``mmgpt-compare`` (set by the task).

    ``name`` is logged as ``val/<name>`` and ``test/<name>``; ``mode`` is ``max`` (higher is better) or ``min``.
    """

    name: str = "acc"
    mode: str = "max"


@dataclass
class TuneSchema:
    """``compare.tune``: the search space of ``mmgpt-compare tune=N`` (N trials for every configuration).

    ``space`` maps a config key to its range: ``{low, high}`` (float), ``{low, high, log: true}`` (log-uniform
    float), ``{low, high, int: true}`` (integer) or ``{choices: [...]}``. A key a configuration does not have
    (``model.fusion.num_layers`` of a unimodal baseline) is not tuned for it.
    """

    space: dict[str, Any] = field(default_factory=dict)
    sampler_seed: int = 0               # the sampler of trial k of a configuration is seeded from this and k


@dataclass
class CompareSchema:
    """``compare``: what ``mmgpt-compare`` sweeps and reports (unused by ``mmgpt-train``).

    ``fusions`` and ``seeds`` are Hydra sweep strings (``early,late``, ``range(0,3)``); the command line's
    ``model/fusion=...`` and ``seed=...`` take precedence over them.
    """

    fusions: str = "early,late,cross_attention"
    baselines: bool = True              # also one unimodal baseline per modality (model/fusion=unimodal_<m>)
    seeds: str = "0,1,2"
    metric: str = "${primary_metric.name}"  # the report's metric: val/<metric> and test/<metric>
    mode: str = "${primary_metric.mode}"    # max: higher is better; min: lower is better
    robustness: bool = True             # evaluate every modality subset on the best checkpoint
    robustness_split: str = "test"
    match: str | None = None            # params | flops: scale every fusion to the reference's cost first
    match_reference: str | None = None  # the fusion whose configured size is the budget (null: the first one)
    match_tolerance: float = 0.05
    cost: bool = True                   # measure every configuration's cost (cost.json) when the runs are done
    cost_rounds: int = 5                # interleaved rounds of the latency and throughput measurement
    tune: TuneSchema = field(default_factory=TuneSchema)


@dataclass
class FeatureCacheSchema:
    """``feature_cache``: frozen backbones' hidden states stored on disk (datamodules/feature_cache/)."""

    mode: str = "auto"      # auto: cache every frozen backbone whose modality has no random augmentation; off
    dir: str = MISSING      # the cache folder, shared by runs (conf/train.yaml: ${paths.log_dir}/cache/features)
    dtype: str = "float16"  # storage dtype: float16 (half the disk, ~1e-3 relative) or float32
    batch_size: int = 32    # samples per backbone call while filling


@dataclass
class TrainSchema:
    """The top level of ``conf/train.yaml``."""

    data: Any = MISSING
    model: ModelSchema = field(default_factory=ModelSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    logger: Any = None
    callbacks: Any = None
    paths: PathsSchema = field(default_factory=PathsSchema)
    task_name: str = "train"
    seed: int = 0
    tags: list[str] = field(default_factory=list)
    train: bool = True
    test: bool = True
    ckpt_path: str | None = None
    resume: str | None = None  # null | auto: continue from the run directory's newest good checkpoint
    init_from: str | None = None        # initialise the network from this checkpoint (partial load, reported)
    objectives: Any = None  # shorthand weights, e.g. {classify: 1.0, lm: 1.0}: see apply_objectives
    encoders: dict[str, Any] = field(default_factory=dict)  # short backbone choices, e.g. {text: "hf:DIR"}
    print_config: bool = True           # print the resolved config as a tree when the run starts
    plugins: list[str] = field(default_factory=list)  # modules imported first, registering parts of the user's own
    compare: CompareSchema = field(default_factory=CompareSchema)
    feature_cache: FeatureCacheSchema = field(default_factory=FeatureCacheSchema)
    primary_metric: PrimaryMetricSchema = field(default_factory=PrimaryMetricSchema)


@dataclass
class EvalSchema:
    """The top level of ``conf/eval.yaml``."""

    data: Any = None
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    logger: Any = None
    paths: PathsSchema = field(default_factory=PathsSchema)
    task_name: str = "eval"
    seed: int = 0
    ckpt_path: str = MISSING
    split: str = "val"
    subsets: bool = True
    plugins: list[str] = field(default_factory=list)  # the user's modules registering parts the checkpoint uses
    feature_cache: FeatureCacheSchema = field(default_factory=FeatureCacheSchema)


def sorted_keys(node: Any) -> list[str]:
    """``${mmgpt_keys:${model.net.encoders}}``: the sorted keys of a mapping (the network's modality names)."""
    return sorted(str(k) for k in node.keys())


OmegaConf.register_new_resolver("mmgpt_keys", sorted_keys, replace=True)


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainSchema)
    cs.store(name="eval_schema", node=EvalSchema)
    # The shared data options and their defaults, read from their one declaration; every conf/data/*.yaml starts
    # from this node (`defaults: [options, _self_]`) and sets only what differs.
    cs.store(group="data", name="options", node=data_option_defaults())


class ConfigKeyError(UserError):
    """A config key that its ``_target_`` does not accept."""


def _resolve_target(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        obj = importlib.import_module(module)
        return getattr(obj, name)
    except (ImportError, AttributeError):
        # Nested attributes (Class.method) or a module path.
        parts = path.split(".")
        for i in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr)
            return obj
        raise


def check_targets(cfg: Any, prefix: str = "") -> None:
    """Raise :class:`ConfigKeyError` naming the key path when a node has a key nobody reads.

    Checks that every key of a ``_target_`` node is a parameter of its target (targets taking ``**kwargs``
    accept any key), that every ``_target_`` imports, and that nodes typed by a schema dataclass hold only
    its fields (Hydra's ``+key=value`` overrides can add keys that the schema does not have).
    """
    if isinstance(cfg, DictConfig):
        items = [(k, cfg._get_node(k)) for k in cfg.keys()]
        schema = OmegaConf.get_type(cfg)
        if dataclasses.is_dataclass(schema):
            known = {f.name for f in dataclasses.fields(schema)}
            for key in cfg.keys():
                if key not in known:
                    raise ConfigKeyError(
                        f"config key '{prefix + '.' if prefix else ''}{key}' is not in the {schema.__name__} schema "
                        f"(known keys: {', '.join(sorted(known))})"
                    )
        target = cfg.get("_target_") if "_target_" in cfg else None
        if target is not None:
            where = prefix or "<root>"
            try:
                obj = _resolve_target(str(target))
            except (ImportError, AttributeError) as e:
                raise ConfigKeyError(f"{where}._target_: cannot import {target!r} ({e})") from e
            unknown = unknown_argument(obj, (k for k in cfg.keys() if k not in HYDRA_KEYS))
            if unknown is not None:
                raise ConfigKeyError(f"config key '{prefix + '.' if prefix else ''}{unknown[0]}' is not a parameter "
                                     f"of {target} (it accepts: {unknown[1]})")
        for key, node in items:
            if isinstance(node, (DictConfig, ListConfig)):
                check_targets(node, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(cfg, ListConfig):
        for i, node in enumerate(cfg):
            if isinstance(node, (DictConfig, ListConfig)):
                check_targets(node, f"{prefix}[{i}]")


def apply_objectives(cfg: DictConfig) -> None:
    """Apply the ``objectives`` shorthand (objective name -> weight) to the task's objective definitions.

    ``objectives: {classify: 1.0, lm: 1.0, contrastive: 0.1}`` sets those weights under
    ``model.module.objectives`` and turns every other objective the task defines off (weight 0). With
    ``task=classify`` (no definitions) only ``classify`` may be named: classification is the default objective.

    Raises:
        ConfigKeyError: a name the task does not define (naming the defined ones) or a negative weight.
    """
    weights = cfg.get("objectives")
    if not weights:
        return
    defined = cfg.model.module.get("objectives") or {}
    for name, weight in weights.items():
        if float(weight) < 0:
            raise ConfigKeyError(f"objectives.{name}={weight}: weights must be >= 0")
        if name not in defined and not (name == "classify" and not defined):
            raise ConfigKeyError(
                f"objectives.{name}: the task defines no objective of that name (it defines: "
                f"{', '.join(defined) or 'none; classification is the default'}); task=pretrain defines "
                "classify, lm, contrastive, mlm and matching"
            )
    for name, definition in defined.items():
        definition.weight = float(weights.get(name, 0.0))


#: The short backbone syntax: ``encoders.<modality>=<family>[:<reference>[@<weights or revision>]]``.
_SHORT = re.compile(r"^(?P<family>[a-z_]+)(?::(?P<ref>[^@]+?))?(?:@(?P<at>.+))?$")
#: family -> (the key its reference sets, the key its ``@`` part sets) in conf/model/encoder/<kind>/<family>.yaml.
_SHORT_KEYS: dict[str, tuple[str | None, str | None]] = {
    "scratch": (None, None),
    "hf": ("name_or_path", "revision"),
    "timm": ("model_name", "checkpoint_path"),
}
_SHORT_FORMS = "scratch, hf:NAME_OR_PATH[@REVISION] or timm:MODEL_NAME[@WEIGHTS_FILE]"


def parse_backbone(value: str, where: str) -> tuple[str, dict[str, str]]:
    """``hf:bert-base-uncased`` -> ``("hf", {"name_or_path": "bert-base-uncased"})``: the short syntax's family and
    the encoder config keys it sets (``timm:convnext_tiny@/m/w.safetensors`` also sets ``checkpoint_path``).

    Raises:
        ConfigKeyError: naming ``where`` and the accepted forms.
    """
    found = _SHORT.match(str(value).strip())
    family = found and found["family"]
    if not found or family not in _SHORT_KEYS or (family != "scratch") != bool(found["ref"]) or (
            found["at"] and _SHORT_KEYS[family][1] is None):
        raise ConfigKeyError(f"{where}={value!r}: expected {_SHORT_FORMS}")
    ref_key, at_key = _SHORT_KEYS[family]
    keys = {ref_key: found["ref"].strip()} if ref_key else {}
    if found["at"]:
        keys[at_key] = found["at"].strip()  # type: ignore[index]
    return family, keys


def _modality_kind(cfg: DictConfig, name: str) -> str:
    """The kind of modality ``name``: its current encoder's, else the data's declaration, else the name itself."""
    from mmgpt.registry import encoder_kind

    current = OmegaConf.select(cfg, f"model.net.encoders.{name}")
    if current is not None and current.get("type") is not None:
        kind = encoder_kind({"type": current.type}, f"model.net.encoders.{name}")
        if kind:
            return kind
    declared = OmegaConf.select(cfg, f"data.modalities.{name}")
    if declared is not None:
        return str(declared if isinstance(declared, str) else declared.get("kind"))
    return name


def apply_backbones(cfg: DictConfig) -> None:
    """Expand the short backbone syntax into today's encoder configs, before anything reads ``model.net``.

    ``encoders.text=hf:bert-base-uncased`` does what the long form does
    (``model/encoder/text@model.net.encoders.text=hf model.net.encoders.text.name_or_path=bert-base-uncased``): the
    modality's encoder becomes ``conf/model/encoder/<kind>/<family>.yaml`` with the reference set. The kind is the
    current encoder's (``text``, ``image``, ``audio``...), or the data's declaration for a new modality
    (``+encoders.image2=hf:DIR``). Values are plain strings, so ``mmgpt-compare`` sweeps them like any key.

    Raises:
        ConfigKeyError: an unknown form or family, or a family the modality's kind has no config for.
    """
    for name, value in (cfg.get("encoders") or {}).items():
        if value is None:
            continue
        where = f"encoders.{name}"
        family, keys = parse_backbone(value, where)
        kind = _modality_kind(cfg, str(name))
        path = CONFIG_DIR / "model" / "encoder" / kind / f"{family}.yaml"
        if not path.is_file():
            have = sorted(p.stem for p in (CONFIG_DIR / "model" / "encoder" / kind).glob("*.yaml"))
            raise ConfigKeyError(f"{where}={value!r}: no {family} encoder for {kind} modalities "
                                 f"(conf/model/encoder/{kind}/ has: {', '.join(have) or 'nothing'})")
        node = OmegaConf.load(path)
        for key, setting in keys.items():
            node[key] = setting
        with open_dict(cfg.model.net):
            if cfg.model.net.get("encoders") is None:
                cfg.model.net.encoders = {}
            with open_dict(cfg.model.net.encoders):
                cfg.model.net.encoders[name] = node


def check_model_specs(cfg: DictConfig) -> None:
    """Check the typed specs of ``model``: the network, the objectives, the optimizer and the schedule.

    Raises:
        SpecError: naming the key path of an unknown part, a part of the wrong kind or an argument it lacks.
    """
    NetworkSpec.from_dict(OmegaConf.to_container(cfg.model.net, resolve=True)).check()
    module = OmegaConf.to_container(cfg.model.module, resolve=True)
    for name, spec in (module.get("objectives") or {}).items():
        check_spec(spec, f"model.module.objectives.{name}", "objective")
    check_spec(module.get("optimizer"), "model.module.optimizer", "optimizer")
    if module.get("scheduler") is not None:
        check_spec(module["scheduler"], "model.module.scheduler", "scheduler")


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain containers with every interpolation resolved (hydra: nodes included when available),
    credentials left out (:func:`redacted`): what run files, loggers and checkpoints keep."""
    return redacted(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[return-value]
