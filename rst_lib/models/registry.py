"""Model registry: plain ``nn.Module`` architectures, masked after construction.

``create_model("resnet18", num_classes=10, keep_ratio=0.05, seed=0)`` builds the
architecture with ordinary ``nn.Conv2d`` / ``nn.Linear`` layers (no biases, as in
edge-popup), draws the frozen random weights from ``seed`` and turns every conv/linear
layer into a masked layer (:mod:`rst_lib.masks.masking`). A model's whole recipe is its
:class:`ModelConfig`, stored in tickets so the same network can be rebuilt anywhere.

Inputs are images in [0, 1]; the per-channel normalization is the model's first layer,
so every attack works in pixel space.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..masks import inits

from ..masks import masking, ranking
from ..config import RunConfig, allowed, default
from ..errors import ConfigError, check_choice, check_keep_ratio
from .layers import Normalize

MODELS: dict[str, Callable[..., nn.Module]] = {}
NORM_OPTIONAL: set[str] = set()  # models that can be built without BatchNorm (norm="none")
MODEL_OPTIONS: dict[str, tuple[str, ...]] = {}  # the model_kwargs each model accepts


def register_model(name: str, norm_optional: bool = False, options: tuple[str, ...] = ()):
    """Register ``fn(*, num_classes, in_channels, image_size, width, bn_affine, norm, **_)``.

    ``options`` names the extra ``model_kwargs`` the factory takes (e.g. ``depth``); any
    other key is refused with a :class:`ConfigError` before the model is built.

    The factory returns a plain ``nn.Module`` built from ``nn.Conv2d`` / ``nn.Linear``
    (``bias=False``) whose modules are registered in forward order: the first conv/linear
    registered is the input layer and the last one the classifier (``dense_first`` and
    ``dense_last`` rely on that). Weights are initialized and masked by :func:`build_model`.
    """
    def deco(fn):
        MODELS[name] = fn
        MODEL_OPTIONS[name] = tuple(options)
        if norm_optional:
            NORM_OPTIONAL.add(name)
        return fn
    return deco


def list_models() -> list[str]:
    return sorted(MODELS)


@dataclass
class ModelConfig:
    """Everything needed to rebuild a network bit for bit.

    Attributes:
        name: registry name (see :func:`list_models`).
        num_classes, in_channels, image_size: data shape.
        width: channel multiplier (1.0 = the published widths).
        model_kwargs: extra architecture arguments (``wide_resnet``: depth, widen_factor;
            ``mlp``: depth, hidden).
        keep_ratio: fraction of the masked weights that is kept (over all masked layers);
            ``None`` builds a dense network with trainable weights (no masks).
        adaptive_p: RBRN's per-layer rule ``r_l ~ n_l^(p-1)`` (see
            :func:`masking.allocate_keep_ratios`); 1.0 keeps the same ratio in every layer.
        granularity: what one score gates: ``weight``, ``kernel``, ``filter`` or ``row``.
        keep_rule: kept scores of a layer at its ratio (:func:`masking.keep_count`).
        keep_allocation: how ``keep_ratio`` and ``adaptive_p`` become per-layer ratios
            (:func:`masking.allocate_keep_ratios`).
        keep_scope: ``layer`` (top-k in each layer) or ``global`` (the layers' counts only add
            up to the budget; all scores compete for it: :class:`~rst_lib.masks.ranking.GlobalRanking`).
        keep_min_fraction: with ``global``, the fraction of its scores each layer keeps at least.
        weight_init: see :data:`inits.WEIGHT_INITS` (``signed_constant`` = RST,
            ``binary`` = RBRN).
        scale_fan: fan multiplied by the layer's keep ratio in the weight scale (RBRN).
        score_init: ``kaiming_uniform`` (RST) or ``uniform`` (U(-a, a), RBRN ``a``).
        score_init_scale: ``a`` for ``uniform`` score init.
        score_fan_mode: which layers divide the ``uniform`` bound by sqrt(fan): ``none``,
            ``all``, ``except_last``, ``only_last`` (RBRN's fan-scaled score modes).
        norm: ``bn`` (BatchNorm after every conv) or ``none`` (edge-popup conv nets only).
        bn_affine: learn BatchNorm scale/shift (the papers use non-affine BN: False).
        end_with_bn: non-affine BatchNorm1d on the logits (RBRN's last BN).
        dense_first / dense_last: leave the first conv / the classifier unmasked (their
            random weights stay frozen, as in edge-popup).
        bnn: binary-weight network with trained latent weights (sign + straight-through);
            only with ``keep_ratio=None`` (the RBRN BNN adversarial-training baseline).
        mean, std: per-channel input normalization applied inside the model.
        seed: seed of the random weights (and of the initial scores).
    """

    # Fields shared with RunConfig take its defaults (declared once, in rst_lib.config).
    name: str = default("model")
    num_classes: int = 10
    in_channels: int = 3
    image_size: int = 32
    width: float = default("width")
    model_kwargs: dict = field(default_factory=dict)
    keep_ratio: float | None = default("keep_ratio")
    adaptive_p: float = default("adaptive_p")
    granularity: str = default("granularity")
    keep_rule: str = default("keep_rule")
    keep_allocation: str = default("keep_allocation")
    keep_scope: str = default("keep_scope")
    keep_min_fraction: float = default("keep_min_fraction")
    weight_init: str = default("weight_init")
    scale_fan: bool = default("scale_fan")
    score_init: str = default("score_init")
    score_init_scale: float = default("score_init_scale")
    score_fan_mode: str = default("score_fan_mode")
    norm: str = default("norm")
    bn_affine: bool = default("bn_affine")
    end_with_bn: bool = default("end_with_bn")
    dense_first: bool = default("dense_first")
    dense_last: bool = default("dense_last")
    bnn: bool = False
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    seed: int = default("seed")

    @classmethod
    def from_run(cls, cfg: RunConfig, num_classes: int, in_channels: int, image_size: int,
                 mean=(0.0,), std=(1.0,)) -> "ModelConfig":
        """The model part of a run's parameters, for a dataset of this shape."""
        shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)
                  if f.name in RunConfig.__dataclass_fields__ and f.name != "name"}
        shared["model_kwargs"] = dict(cfg.model_kwargs)
        return cls(**shared, name=cfg.model, num_classes=num_classes, in_channels=in_channels,
                   image_size=image_size, mean=list(mean), std=list(std))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**d)


# ------------------------------------------------------------------------------ factory


class RandomNetwork(nn.Module):
    """normalize -> architecture -> optional last BN on the logits."""

    def __init__(self, config: ModelConfig, body: nn.Module):
        super().__init__()
        self.config = config
        self.normalize = Normalize(config.mean, config.std, config.in_channels)
        self.body = body
        self.last_bn = (nn.BatchNorm1d(config.num_classes, affine=False)
                        if config.end_with_bn else None)

    def forward(self, x):
        out = self.body(self.normalize(x))
        return self.last_bn(out) if self.last_bn is not None else out


def conv_linear_layers(body: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every conv / linear layer in module order (the prunable ones)."""
    return [(n, m) for n, m in body.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def validate_model_config(cfg: ModelConfig) -> None:
    check_choice("model", cfg.name, list_models())
    unknown = sorted(set(cfg.model_kwargs) - set(MODEL_OPTIONS[cfg.name]))
    if unknown:
        valid = ", ".join(MODEL_OPTIONS[cfg.name]) or "none"
        raise ConfigError(f"model_kwargs {', '.join(unknown)} unknown for model {cfg.name!r}: "
                          f"valid model_kwargs are {valid}")
    for name in ("weight_init", "score_init", "score_fan_mode", "granularity", "norm",
                 "keep_rule", "keep_allocation", "keep_scope"):
        check_choice(name, getattr(cfg, name), allowed(name))  # declared with RunConfig's field
    if not 0.0 <= cfg.adaptive_p <= 1.0:
        raise ConfigError(f"adaptive_p={cfg.adaptive_p!r} is invalid: it must be in [0, 1] "
                          "(1 = the same keep ratio in every layer)")
    if cfg.keep_ratio is not None:  # None: a dense network
        check_keep_ratio(cfg.keep_ratio)
        if not 0.0 <= cfg.keep_min_fraction <= cfg.keep_ratio:
            raise ConfigError(f"keep_min_fraction={cfg.keep_min_fraction!r} is invalid: it must be "
                              f"in [0, keep_ratio={cfg.keep_ratio}]")
    for key in ("num_classes", "in_channels", "image_size"):
        if int(getattr(cfg, key)) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)!r} is invalid: it must be >= 1")
    if cfg.bnn and cfg.keep_ratio is not None:
        raise ConfigError("bnn=True trains binary weights densely: it needs keep_ratio=None")
    if cfg.width <= 0:
        raise ConfigError(f"width={cfg.width!r} is invalid: it must be > 0")
    if cfg.norm == "none" and cfg.name not in NORM_OPTIONAL:
        raise ConfigError(f"norm='none' is only available for {', '.join(sorted(NORM_OPTIONAL))}, "
                          f"not {cfg.name!r}")


def check_run_model(cfg: RunConfig) -> None:
    """The model part of a run's parameters is valid (checked on a 28x28 grey shape)."""
    validate_model_config(ModelConfig.from_run(cfg, num_classes=10, in_channels=1, image_size=28))


def build_model(cfg: ModelConfig, structure_only: bool = False) -> RandomNetwork:
    """Build, initialize and mask the network described by ``cfg`` (on the CPU).

    ``structure_only``: the layers, masks and per-layer keep ratios without drawing any
    value (tensors on the ``meta`` device): the same shapes and kept counts, instantly, for
    looking at a network (``rst-workbook model``); it cannot run."""
    validate_model_config(cfg)
    # Every registered factory gets the same keyword arguments and ignores what it does not use.
    kw = dict(num_classes=cfg.num_classes, in_channels=cfg.in_channels, image_size=cfg.image_size,
              width=cfg.width, bn_affine=cfg.bn_affine, norm=cfg.norm)
    reserved = set(kw) & set(cfg.model_kwargs)
    if reserved:
        raise ConfigError(f"model_kwargs may not set {sorted(reserved)}: they are ModelConfig fields")
    kw.update(cfg.model_kwargs)
    # nn.Conv2d/nn.Linear draw a default init from the global RNG; building a model (e.g.
    # the reference inside save_ticket) must not shift a running search's random stream.
    with torch.random.fork_rng(devices=[]), torch.device("meta" if structure_only else "cpu"):
        try:
            body = MODELS[cfg.name](**kw)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model {cfg.name!r} cannot be built with {cfg.model_kwargs or 'these settings'}: {e}") from None
    model = RandomNetwork(cfg, body)
    layers = conv_linear_layers(body)
    dense = [cfg.keep_ratio is None or (cfg.dense_first and i == 0)
             or (cfg.dense_last and i == len(layers) - 1) for i in range(len(layers))]
    masked_idx = [i for i, d in enumerate(dense) if not d]
    ratios = dict(zip(masked_idx, masking.allocate_keep_ratios(
        [layers[i][1].weight.numel() for i in masked_idx], cfg.keep_ratio, cfg.adaptive_p,
        cfg.keep_allocation, shapes=[tuple(layers[i][1].weight.shape) for i in masked_idx])
        if masked_idx else []))
    # Two generators: the weights depend only on the seed (and the shapes), never on the
    # score init, so tickets of different keep ratios can share one random network.
    g_weight = torch.Generator().manual_seed(cfg.seed)
    g_score = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    last_masked = masked_idx[-1] if masked_idx else None
    for i, (name, layer) in enumerate(layers):
        kr = ratios.get(i, 1.0)
        if not structure_only:
            inits.init_weight_(layer.weight, cfg.weight_init, g_weight, kr, cfg.scale_fan)
        if cfg.keep_ratio is None:
            if cfg.bnn:
                parametrize.register_parametrization(layer, "weight", masking.BinarizeSTE())
            continue  # dense network: weights stay trainable
        if dense[i]:
            layer.weight.requires_grad_(False)  # random, frozen, unpruned (edge-popup)
            continue
        mask = masking.add_mask(layer, kr, cfg.granularity, cfg.keep_rule)
        is_last = i == last_masked
        fan_scaled = (cfg.score_fan_mode == "all" or (cfg.score_fan_mode == "except_last" and not is_last)
                      or (cfg.score_fan_mode == "only_last" and is_last))
        if not structure_only:
            inits.init_scores_(mask.scores, cfg.score_init, g_score, cfg.score_init_scale, fan_scaled)
    if cfg.keep_scope == "global" and cfg.keep_ratio is not None:
        ranking.rank_globally(model, cfg.keep_min_fraction)
    return model


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kw) -> RandomNetwork:
    """Build a registered model: ``create_model("conv4", 10, 1, image_size=28, keep_ratio=0.1)``."""
    return build_model(ModelConfig(name=name, num_classes=num_classes, in_channels=in_channels, **kw))
