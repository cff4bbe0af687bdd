"""The one way to build a network: a typed spec of registered part names, and the builder that reads it.

A spec names parts by their registered ``type`` and gives their arguments; it never holds an import path::

    {"encoders": {"text": {"type": "text_encoder", "dim": 64, ...}, ...},
     "fusion": {"type": "early", "dim": 64, ...},
     "head": {"type": "classification_head", "dim": 64},
     "decoder": null}

The YAML under ``conf/model/`` writes these specs, the tests build networks from them, the LightningModule
receives them, and checkpoints store them. Since only registered names can be built, rebuilding a model from a
checkpoint cannot call anything mmgpt did not register (see :mod:`mmgpt.training.safe_load`).

Parts are kept in one table (:data:`BUILTIN`, name -> kind and where the class lives). A user's own part is added
with :func:`register` from their own code, imported through the ``plugins`` config key; a checkpoint cannot import
plugins by itself.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from mmgpt.errors import UserError

log = logging.getLogger(__name__)

#: Part kinds, and the spec slots whose values must be parts of a given kind.
KINDS = ("encoder", "image_stem", "fusion", "combiner", "head", "decoder", "conditioner", "objective", "optimizer",
         "scheduler")


@dataclass(frozen=True)
class Part:
    """A registered part: its kind and the callable that builds it (or ``module:attr`` where it lives)."""

    kind: str
    factory: str | Callable[..., Any]
    #: Arguments replaced when the part is rebuilt from a checkpoint, whose state dict supplies the weights
    #: (e.g. no download of pretrained weights named in a checkpoint).
    checkpoint_overrides: Mapping[str, Any] = field(default_factory=dict)

    def resolve(self) -> Callable[..., Any]:
        if callable(self.factory):
            return self.factory
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr)


NO_REMOTE_CODE: Mapping[str, Any] = {"trust_remote_code": False}

#: Every part mmgpt defines. Names are what specs (YAML, checkpoints) use in ``type:``.
BUILTIN: dict[str, Part] = {
    # encoders: raw input -> tokens (B, N, D) + mask
    "text_encoder": Part("encoder", "mmgpt.encoders.text:TextEncoder"),
    "image_encoder": Part("encoder", "mmgpt.encoders.image:ImageEncoder"),
    "audio_encoder": Part("encoder", "mmgpt.encoders.audio:AudioEncoder"),
    # pretrained backbones (transformers / timm, imported when built); their processors come from the backbone
    # (the data side's table, mmgpt.datamodules.encoder_processors).
    # Rebuilding one from a checkpoint never runs code shipped with a model (trust_remote_code is forced off).
    "hf_text": Part("encoder", checkpoint_overrides=NO_REMOTE_CODE, factory="mmgpt.encoders.hf:HFTextEncoder"),
    "hf_image": Part("encoder", checkpoint_overrides=NO_REMOTE_CODE, factory="mmgpt.encoders.hf:HFImageEncoder"),
    "hf_audio": Part("encoder", checkpoint_overrides=NO_REMOTE_CODE, factory="mmgpt.encoders.hf:HFAudioEncoder"),
    # a checkpoint's state dict holds the weights: timm's own pretrained weights are not fetched again
    "timm_image": Part("encoder", "mmgpt.encoders.timm_encoder:TimmImageEncoder",
                       checkpoint_overrides={"pretrained": False}),
    "features_encoder": Part("encoder", "mmgpt.encoders.features:FeaturesEncoder"),
    # MMSA's pre-fusion sub-networks: one vector per sample (an LSTM; BatchNorm + ReLU layers on the time average)
    "lstm_encoder": Part("encoder", "mmgpt.encoders.subnets:LSTMEncoder"),
    "mlp_subnet": Part("encoder", "mmgpt.encoders.subnets:MLPSubNet"),
    "raw_features": Part("encoder", "mmgpt.encoders.subnets:RawFeatures"),
    "temporal_conv": Part("encoder", "mmgpt.encoders.subnets:TemporalConv"),
    # image stems: (B, 3, H, W) -> (B, D, H/p, W/p)
    "patch_embed": Part("image_stem", "mmgpt.encoders.image:PatchEmbed"),
    "conv_stem": Part("image_stem", "mmgpt.encoders.image:ConvStem"),
    "torchvision_stem": Part("image_stem", "mmgpt.encoders.image:TorchvisionStem",
                             checkpoint_overrides={"weights": None}),
    # fusions and late fusion's combiners
    "early": Part("fusion", "mmgpt.fusion.early:EarlyFusion"),
    "late": Part("fusion", "mmgpt.fusion.late:LateFusion"),
    "cross_attention": Part("fusion", "mmgpt.fusion.cross_attention:CrossAttentionFusion"),
    "tensor": Part("fusion", "mmgpt.fusion.tensor:TensorFusion"),
    "low_rank": Part("fusion", "mmgpt.fusion.tensor:LowRankFusion"),
    "mult": Part("fusion", "mmgpt.fusion.mult:MulTFusion"),
    "mult_mmsa": Part("fusion", "mmgpt.fusion.mult_mmsa:MMSAMulTFusion"),
    "bottleneck": Part("fusion", "mmgpt.fusion.bottleneck:BottleneckFusion"),
    "resampler": Part("fusion", "mmgpt.fusion.resampler:ResamplerFusion"),
    "unimodal": Part("fusion", "mmgpt.fusion.unimodal:UnimodalBaseline"),
    "concat": Part("fusion", "mmgpt.fusion.concat:ConcatFusion"),
    "early_lstm": Part("fusion", "mmgpt.fusion.recurrent:EarlyLSTMFusion"),
    "concat_mlp": Part("combiner", "mmgpt.fusion.late:ConcatMLP"),
    "logit_average": Part("combiner", "mmgpt.fusion.late:LogitAverage"),
    # head, text decoder and its conditioners
    "classification_head": Part("head", "mmgpt.model:ClassificationHead"),
    "mlp_head": Part("head", "mmgpt.model:MLPHead"),
    "identity_head": Part("head", "mmgpt.model:IdentityHead"),
    "residual_head": Part("head", "mmgpt.model:ResidualHead"),
    "text_decoder": Part("decoder", "mmgpt.decoder:TextDecoder"),
    "hf_decoder": Part("decoder", "mmgpt.hf_decoder:HFDecoder",
                       checkpoint_overrides={"load_weights": False, **NO_REMOTE_CODE}),
    "fused_prefix": Part("conditioner", "mmgpt.decoder:FusedPrefix"),
    "pooled_prefix": Part("conditioner", "mmgpt.decoder:PooledPrefix"),
    "media_context": Part("conditioner", "mmgpt.decoder:MediaContext"),
    "no_conditioning": Part("conditioner", "mmgpt.decoder:NoConditioning"),
    # objectives
    "classify": Part("objective", "mmgpt.objectives.classify:Classification"),
    "adversarial_classify": Part("objective", "mmgpt.objectives.adversarial:AdversarialClassification"),
    "causal_lm": Part("objective", "mmgpt.objectives.lm:CausalLM"),
    "contrastive": Part("objective", "mmgpt.objectives.contrastive:Contrastive"),
    "masked_lm": Part("objective", "mmgpt.objectives.mlm:MaskedLM"),
    "matching": Part("objective", "mmgpt.objectives.matching:Matching"),
    "regress": Part("objective", "mmgpt.objectives.tasks:Regression"),
    "multilabel": Part("objective", "mmgpt.objectives.tasks:MultiLabel"),
    "binary": Part("objective", "mmgpt.objectives.tasks:Binary"),
    # optimisation: an optimizer is called with parameter groups, a schedule with (optimizer, total_steps)
    "adamw": Part("optimizer", "torch.optim:AdamW"),
    "adam": Part("optimizer", "torch.optim:Adam"),
    "sgd": Part("optimizer", "torch.optim:SGD"),
    "warmup_cosine": Part("scheduler", "mmgpt.training.optim:warmup_cosine"),
    "constant": Part("scheduler", "mmgpt.training.optim:constant"),
    "plateau": Part("scheduler", "mmgpt.training.optim:Plateau"),
}

_USER: dict[str, Part] = {}

#: Class paths that checkpoints written before the typed spec stored in ``_target_``, and their part names.
#: Only these are translated; any other ``_target_`` in a stored config is refused.
LEGACY_TARGETS: dict[str, str] = {
    "mmgpt.encoders.TextEncoder": "text_encoder",
    "mmgpt.encoders.ImageEncoder": "image_encoder",
    "mmgpt.encoders.AudioEncoder": "audio_encoder",
    "mmgpt.encoders.image.PatchEmbed": "patch_embed",
    "mmgpt.encoders.image.ConvStem": "conv_stem",
    "mmgpt.pretrained.TorchvisionStem": "torchvision_stem",
    "mmgpt.fusion.EarlyFusion": "early",
    "mmgpt.fusion.LateFusion": "late",
    "mmgpt.fusion.CrossAttentionFusion": "cross_attention",
    "mmgpt.fusion.ConcatMLP": "concat_mlp",
    "mmgpt.fusion.LogitAverage": "logit_average",
    "mmgpt.model.ClassificationHead": "classification_head",
    "mmgpt.decoder.TextDecoder": "text_decoder",
    "mmgpt.decoder.FusedPrefix": "fused_prefix",
    "mmgpt.decoder.PooledPrefix": "pooled_prefix",
    "mmgpt.decoder.MediaContext": "media_context",
    "mmgpt.objectives.Classification": "classify",
    "mmgpt.objectives.AdversarialClassification": "adversarial_classify",
    "mmgpt.objectives.CausalLM": "causal_lm",
    "mmgpt.objectives.Contrastive": "contrastive",
    "mmgpt.objectives.MaskedLM": "masked_lm",
    "mmgpt.objectives.Matching": "matching",
    "torch.optim.AdamW": "adamw",
    "torch.optim.Adam": "adam",
    "torch.optim.SGD": "sgd",
    "mmgpt.optim.warmup_cosine": "warmup_cosine",
}

#: Keys that mark Hydra instantiation: never accepted in a spec; not arguments of a config node's ``_target_``.
HYDRA_KEYS = ("_target_", "_partial_", "_args_", "_recursive_", "_convert_")


class SpecError(UserError):
    """A spec that cannot be built: an unknown or wrong-kind part, an argument the part does not take."""


def register(name: str, kind: str, factory: Callable[..., Any], *, replace: bool = False) -> None:
    """Add a user's own part (an encoder, a fusion...) under ``name``, usable in specs as ``type: name``.

    Call it from a module listed in the config's ``plugins`` (imported at start-up). Checkpoints that use the
    part load only when the same plugin is imported again: ``mmgpt-eval ckpt_path=... 'plugins=[my.module]'``.
    """
    if kind not in KINDS:
        raise SpecError(f"register({name!r}): kind {kind!r} is not one of {', '.join(KINDS)}")
    if not replace and (name in BUILTIN or name in _USER):
        raise SpecError(f"register({name!r}): a part of that name is already registered")
    _USER[name] = Part(kind, factory)


def import_plugins(modules: list[str] | tuple[str, ...] | None) -> None:
    """Import the user's plugin modules, whose :func:`register` calls add their parts."""
    for module in modules or ():
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise SpecError(f"plugins: cannot import {module!r} ({e})") from e


def part(name: Any, kind: str | None, where: str) -> Part:
    """The registered part ``name``, checked to be of ``kind``; :class:`SpecError` naming ``where`` otherwise."""
    found = (_USER.get(name) or BUILTIN.get(name)) if isinstance(name, str) else None
    if found is None:
        known = sorted(n for n, p in {**BUILTIN, **_USER}.items() if kind is None or p.kind == kind)
        raise SpecError(f"{where}.type: {name!r} is not a registered {kind or 'part'} (known: {', '.join(known)}; "
                        "a part of your own is added with mmgpt.registry.register from a module in `plugins`)")
    if kind is not None and found.kind != kind:
        raise SpecError(f"{where}.type: {name!r} is a {found.kind}, but a {kind} is expected here")
    return found


def is_spec(node: Any) -> bool:
    return isinstance(node, Mapping) and "type" in node


def check_spec(node: Any, where: str, kind: str | None = None) -> None:
    """Check a spec tree without building it: every ``type`` registered, every key an argument of its part.

    Raises:
        SpecError: naming the key path, for an unknown part, a Hydra ``_target_``-style key, an argument the
            part does not take, or ``trust_remote_code`` anywhere but as an explicit boolean of a backbone encoder
            (it runs code shipped with the model: the user's explicit choice, off by default).
    """
    if isinstance(node, Mapping):
        for key in node:
            if key in HYDRA_KEYS:
                raise SpecError(f"{where}.{key}: import paths are not accepted in a network spec "
                                f"({key}={node[key]!r}); name a registered part with `type:` instead")
            if key == "trust_remote_code" and node[key] is not False and not (
                    node[key] is True and "type" in node and "name_or_path" in node):
                # Allowed only as an explicit `true` on a backbone encoder's own spec (the encoder logs a warning).
                raise SpecError(f"{where}.trust_remote_code={node[key]!r}: only `true` or `false` on a backbone "
                                "encoder that loads name_or_path (it runs code shipped with the model)")
        if "type" in node:
            found = part(node["type"], kind, where)
            _check_arguments(found, node, where)
        for key, value in node.items():
            if key != "type":
                check_spec(value, f"{where}.{key}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_spec(value, f"{where}[{i}]")


def unknown_argument(factory: Callable[..., Any], keys: Iterable[Any]) -> tuple[str, str] | None:
    """The first of ``keys`` that ``factory`` has no parameter for, with the parameters it has (for the message);
    None when every key is one, or when ``factory`` takes ``**kwargs`` or has no signature. The one argument check
    of specs (:func:`check_spec`) and of Hydra ``_target_`` nodes (:func:`mmgpt.config.check_targets`)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    for key in keys:
        if key not in params:
            return str(key), ", ".join(k for k in params if k not in ("self", "args", "kwargs"))
    return None


def _check_arguments(found: Part, node: Mapping[str, Any], where: str) -> None:
    unknown = unknown_argument(found.resolve(), (k for k in node if k != "type"))
    if unknown is not None:
        raise SpecError(f"{where}.{unknown[0]}: not an argument of {node['type']!r} (it takes: {unknown[1]})")


def build(node: Any, where: str, kind: str | None = None, **extra: Any) -> Any:
    """Build a spec: a part (a mapping with ``type``) from its arguments, nested parts built first.

    Args:
        node: the spec; mappings without ``type`` and lists are built element-wise.
        where: the key path, for error messages.
        kind: the kind this part must be, or None.
        extra: arguments added to (and taking precedence over) the spec's own, for the top part only.
    """
    if kind is not None and not is_spec(node):
        raise SpecError(f"{where}: expected a {kind} spec (a mapping with `type: <registered name>`), got {node!r}")
    if isinstance(node, Mapping) and "type" in node:
        check_spec(node, where, kind)
        found = part(node["type"], kind, where)
        kwargs = {k: build(v, f"{where}.{k}") for k, v in node.items() if k != "type"}
        kwargs.update(extra)
        try:
            return found.resolve()(**kwargs)
        except TypeError as e:
            raise SpecError(f"{where} ({node['type']}): {e}") from e
    if isinstance(node, Mapping):
        return {k: build(v, f"{where}.{k}") for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [build(v, f"{where}[{i}]") for i, v in enumerate(node)]
    return node


def for_checkpoint(node: Any) -> Any:
    """A copy of a spec with each part's ``checkpoint_overrides`` applied (used when rebuilding a checkpoint's
    network, whose state dict supplies the weights: no pretrained weights are fetched for it)."""
    if isinstance(node, Mapping):
        out = {k: for_checkpoint(v) for k, v in node.items()}
        if "type" in node and isinstance(node["type"], str):
            found = _USER.get(node["type"]) or BUILTIN.get(node["type"])
            if found is not None:
                out.update(found.checkpoint_overrides)
        return out
    if isinstance(node, (list, tuple)):
        return [for_checkpoint(v) for v in node]
    return node


@dataclass
class NetworkSpec:
    """What a :class:`~mmgpt.model.MultimodalTransformer` is built from; what checkpoints store (``net``).

    Attributes:
        encoders: modality name -> encoder spec.
        fusion: the fusion spec (built for the encoders' modalities).
        head: the classification head spec; ``num_classes`` is given at build time.
        decoder: the text decoder spec, or None. Without a ``conditioner`` it gets the one that suits the
            fusion (:func:`decoder_pairing`).
        text_modality: the modality the decoder writes.
    """

    encoders: dict[str, dict[str, Any]]
    fusion: dict[str, Any]
    head: dict[str, Any]
    decoder: dict[str, Any] | None = None
    text_modality: str = "text"

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], where: str = "model.net") -> NetworkSpec:
        known = {"encoders", "fusion", "head", "decoder", "text_modality"}
        for key in spec:
            if key not in known:
                raise SpecError(f"{where}.{key}: not a field of a network spec (fields: {', '.join(sorted(known))})")
        for key in ("encoders", "fusion", "head"):
            if spec.get(key) is None:
                raise SpecError(f"{where}.{key}: missing")
        return cls(**{k: v for k, v in spec.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self, where: str = "model.net") -> None:
        """:func:`check_spec` on every part, each checked to be of the kind its slot needs."""
        for m, enc in self.encoders.items():
            check_spec(enc, f"{where}.encoders.{m}", "encoder")
        check_spec(self.fusion, f"{where}.fusion", "fusion")
        check_spec(self.head, f"{where}.head", "head")
        if self.decoder is not None:
            check_spec(self.decoder, f"{where}.decoder", "decoder")


def decoder_pairing(fusion_type: str) -> tuple[str, bool]:
    """The (conditioner, does the decoder cross-attend) that suits ``fusion_type``: what its class declares in
    :attr:`mmgpt.fusion.Fusion.decoder_pairing`. The YAML, the tests and every builder go through this."""
    declared = getattr(part(fusion_type, "fusion", "model.net.fusion").resolve(), "decoder_pairing", None)
    if declared is None:
        raise SpecError(f"model.net.fusion.type: {fusion_type!r} declares no decoder conditioning; give "
                        "model.net.decoder.conditioner explicitly")
    return declared


def encoder_kind(spec: Mapping[str, Any], where: str) -> str | None:
    """The modality kind the encoder of ``spec`` reads (its class's ``modality_kind``); None when it declares none."""
    return getattr(part(spec.get("type"), "encoder", where).resolve(), "modality_kind", None)


def fit_to_data(net: Mapping[str, Any], modalities: Mapping[str, Mapping[str, Any]],
                where: str = "model.net") -> dict[str, Any]:
    """Check a network spec against the data's declared modalities and fill in what the data decides.

    Every encoder must be for a declared modality of the kind it reads (``image_encoder`` for an ``image``
    modality); a features encoder's ``input_dim: null`` becomes the declared feature size, and a fusion's
    ``input_dims.<m>: null`` encoder m's output width (its ``dim``, else its ``input_dim``). A declared modality
    without an encoder is not used by the network (logged).

    Args:
        net: the network spec (a plain dict).
        modalities: name -> ``{"kind": ..., "dim": ...}`` of every declared modality.

    Returns:
        The spec with the filled-in values (a copy).

    Raises:
        SpecError: naming the encoder of an undeclared modality or of the wrong kind.
    """
    out = dict(net)
    encoders = {}
    for name, enc in dict(net.get("encoders") or {}).items():
        at = f"{where}.encoders.{name}"
        if name not in modalities:
            raise SpecError(f"{at}: the data declares no modality {name!r} (it declares: "
                            f"{', '.join(sorted(modalities))}); remove the encoder (~{at}) or declare the "
                            f"modality (data.modalities)")
        kind, declared = encoder_kind(enc, at), modalities[name]["kind"]
        if kind is not None and kind != declared:
            raise SpecError(f"{at}: {enc['type']!r} reads {kind} inputs, but data.modalities.{name} is {declared}")
        enc = dict(enc)
        if "input_dim" in enc and enc["input_dim"] is None and modalities[name].get("dim") is not None:
            enc["input_dim"] = int(modalities[name]["dim"])
        encoders[name] = enc
    fusion = net.get("fusion")
    if isinstance(fusion, Mapping) and isinstance(fusion.get("input_dims"), Mapping):
        # a fusion's `input_dims.<m>: null` is encoder m's output width: its dim, or the features it hands on
        fusion = dict(fusion)
        fusion["input_dims"] = {m: _encoder_width(encoders.get(m), f"{where}.fusion.input_dims.{m}") if d is None
                                else d for m, d in fusion["input_dims"].items()}
        out["fusion"] = fusion
    unused = sorted(set(modalities) - set(encoders))
    if unused:
        log.warning("data modalities %s have no encoder in %s.encoders: the network does not use them", unused,
                    where)
    out["encoders"] = encoders
    return out


def _encoder_width(enc: Mapping[str, Any] | None, where: str) -> int:
    width = None if enc is None else enc.get("dim", enc.get("input_dim"))
    if width is None:
        raise SpecError(f"{where}: null (the encoder's output width), but there is no such encoder width to take")
    return int(width)


def build_network(spec: NetworkSpec | Mapping[str, Any], num_classes: int) -> nn.Module:
    """Build the :class:`~mmgpt.model.MultimodalTransformer` of ``spec`` with a ``num_classes`` head."""
    from mmgpt.encoders.backbone import BackboneEncoder
    from mmgpt.layers import init_weights
    from mmgpt.model import MultimodalTransformer

    spec = spec if isinstance(spec, NetworkSpec) else NetworkSpec.from_dict(spec)
    spec.check()
    where = "model.net"
    fusion_spec = dict(spec.fusion)
    if fusion_spec.get("modalities") is None:  # the fusion fuses every encoder's modality
        fusion_spec["modalities"] = sorted(spec.encoders)
    fusion = build(fusion_spec, f"{where}.fusion", "fusion")
    unused = sorted(set(spec.encoders) - set(fusion.modalities))
    if unused:  # e.g. a unimodal baseline: the other encoders are neither built nor run
        log.info("the fusion uses %s: encoders %s are not built", list(fusion.modalities), unused)
    encoders = {m: build(e, f"{where}.encoders.{m}", "encoder")
                for m, e in spec.encoders.items() if m in fusion.modalities}
    head_spec = dict(spec.head)
    if "dim" in head_spec and head_spec["dim"] is None:  # the fusion's output width (a flattened TFN product...)
        head_spec["dim"] = _fusion_width(fusion, f"{where}.head.dim")
    elif isinstance(getattr(fusion, "out_dim", None), int) and head_spec.get("dim") not in (None, fusion.out_dim):
        raise SpecError(f"{where}.head.dim={head_spec['dim']}, but the fusion ({spec.fusion['type']}) outputs "
                        f"{fusion.out_dim} features: set {where}.head.dim=null to take the fusion's width")
    head = build(head_spec, f"{where}.head", "head", num_classes=num_classes)
    decoder = None
    if spec.decoder is not None:
        dec = dict(spec.decoder)
        if "conditioner" not in dec:
            conditioner, cross = decoder_pairing(spec.fusion["type"])
            media = sorted(set(spec.encoders) - {spec.text_modality})
            dec["conditioner"] = {"type": conditioner, "dim": dec["dim"],
                                  **({"modalities": media} if conditioner == "media_context" else {})}
            dec.setdefault("cross_attention", cross)
        decoder = build(dec, f"{where}.decoder", "decoder")
    for m, encoder in encoders.items():
        if isinstance(encoder, BackboneEncoder):  # freeze / unfreeze / adapters before anything sees the weights
            try:
                encoder.apply_tuning()
            except UserError as e:
                raise SpecError(f"{where}.encoders.{m}.{e}") from e
    net = MultimodalTransformer(encoders=encoders, fusion=fusion, head=head, decoder=decoder,
                                text_modality=spec.text_modality)
    init_weights(net)  # once, on the assembled network (parts with loaded weights are marked and skipped)
    return net


def _fusion_width(fusion: nn.Module, where: str) -> int:
    """The width of a fusion's pooled output, for a head spec whose ``dim`` is null."""
    width = getattr(fusion, "out_dim", None)
    if not isinstance(width, int):
        raise SpecError(f"{where}: null (take the fusion's output width), but {type(fusion).__name__} does not "
                        "declare one (out_dim); give the head's dim")
    return width


def from_legacy(node: Any, where: str) -> Any:
    """Translate a config of a checkpoint written before the typed spec: known ``_target_`` paths become
    ``type`` names and ``_partial_`` is dropped. Any other ``_target_`` is refused, naming the key."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "_target_":
                if value not in LEGACY_TARGETS:
                    raise SpecError(f"{where}._target_: {value!r} is not a part mmgpt defines; refused "
                                    "(nothing was imported or called)")
                out["type"] = LEGACY_TARGETS[value]
            elif key == "_partial_":
                continue
            else:
                out[key] = from_legacy(value, f"{where}.{key}")
        return out
    if isinstance(node, (list, tuple)):
        return [from_legacy(v, f"{where}[{i}]") for i, v in enumerate(node)]
    return node
