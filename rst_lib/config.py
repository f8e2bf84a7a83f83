"""One flat parameter schema for every entry point, loadable from YAML with overrides.

Flat on purpose: a papermill ``parameters`` cell, a YAML file in ``params/`` and a
``key=value`` override all name the same fields. :meth:`RunConfig.validate` checks every
field before any data is loaded or any compute starts and raises :class:`ConfigError`
naming the parameter, the bad value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable

import yaml


class ConfigError(ValueError):
    """A parameter has a bad name, type or value. Raised before any compute."""


def check_choice(param: str, value, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{param}={value!r} is invalid: valid choices are {', '.join(allowed)}")


def parse_number(param: str, value) -> float:
    """Accept 0.03, 8, or a fraction string such as '8/255' (how papers write eps)."""
    if isinstance(value, bool):
        raise ConfigError(f"{param}={value!r} is invalid: expected a number")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            pass
    raise ConfigError(f"{param}={value!r} is invalid: expected a number or a fraction like '8/255'")


DATASETS = ("mnist5k", "mnist", "cifar10", "cifar100", "svhn", "imagefolder")
TRAIN_ATTACKS = ("pgd", "fgsm_rs", "fgsm_carried", "free", "trades", "none")
KEEP_RATIO_SCHEDULES = ("none", "staged", "geometric")
THREAT_MODELS = ("linf", "l2")
TASKS = ("search", "finetune", "finetune_reinit", "finetune_full", "dense", "bnn")
FINETUNE_INITS = ("kaiming_normal", "kaiming_uniform", "signed_constant", "unsigned_constant",
                  "xavier_normal", "xavier_constant", "binary", "uniform", "same")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("cosine", "step", "multistep", "cifar_piecewise", "constant")
AUTOATTACK = ("none", "fast", "standard")


@dataclass
class RunConfig:
    """Parameters of a search run. Units: eps/alpha in [0, 1] pixel scale ('8/255' works)."""

    # run
    name: str = "search"
    task: str = "search"               # search | finetune | finetune_reinit | finetune_full | dense | bnn
    ticket: str | None = None          # the ticket to finetune (finetune* tasks)
    finetune_init: str = "kaiming_normal"  # finetune_reinit: RST's --ft_init; same: the ticket's scheme
    pretrained: str | None = None      # trained dense checkpoint to search in (robust trained tickets)
    seed: int = 0
    device: str = "auto"
    channels_last: bool = False        # NHWC convs: faster idle, slower on a busy CPU (make bench)
    output_dir: str = "outputs"
    # data
    dataset: str = "mnist5k"
    data_dir: str | None = None
    download: bool = False
    train_examples: int | None = None  # None: the whole training split
    val_fraction: float = 0.02         # training examples held out to pick the best epoch (RBRN: 2 %); 0: pick on test
    eval_examples: int | None = None   # per-epoch check on the validation split; None: all of it
    final_examples: int | None = None  # test examples of the final evaluation; None: all
    batch_size: int = 128
    eval_batch_size: int = 500
    augment: bool = True               # random crop + flip for 32x32 color data only
    # model (see rst_lib.models.ModelConfig)
    model: str = "conv4"
    model_kwargs: dict = field(default_factory=dict)  # e.g. {depth: 34, widen_factor: 10}
    width: float = 1.0
    keep_ratio: float = 0.05
    adaptive_p: float = 1.0            # RBRN's p: layer keep ratio ~ n_l^(p-1); 1 = uniform
    granularity: str = "weight"        # weight | kernel | filter | row
    keep_ratio_schedule: str = "none"  # none | staged (RBRN pr_steps) | geometric (per epoch)
    keep_ratio_stages: int = 1         # staged: stage k of S keeps keep_ratio^(k/S), cosine LR restarts
    keep_ratio_warmup: int = 0         # geometric: epochs dense before shrinking
    keep_ratio_steps: int = 0          # geometric: epochs to shrink from 1 to keep_ratio
    discard: bool = False              # RST discard mode: the lowest scores stop getting gradient
    discard_every: int = 10            # RST --discard_epoch: epochs between discards
    discard_rate: float = 0.1          # RST --discard_rate: fraction of scores discarded per discard
    discard_progressive: bool = False  # RST --progressive_prune: keep ratio 0.9 - discarded (>= keep_ratio)
    weight_init: str = "signed_constant"
    scale_fan: bool = True
    score_init: str = "kaiming_uniform"
    score_init_scale: float = 0.01
    score_fan_mode: str = "none"       # none | all | except_last | only_last (RBRN)
    norm: str = "bn"
    bn_affine: bool = False
    end_with_bn: bool = False
    dense_first: bool = False
    dense_last: bool = False
    # optimization (of the scores)
    epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"
    lr_milestones: list[int] = field(default_factory=list)  # epochs, for step/multistep
    lr_gamma: float = 0.1
    warmup_epochs: float = 0           # linear LR warm-up
    # inner attack (training) and evaluation attack
    train_attack: str = "pgd"          # pgd | fgsm_rs | fgsm_carried (RBRN fast) | free | trades | none
    threat_model: str = "linf"         # linf | l2
    free_repeats: int = 4              # Free AT: replays of each minibatch
    trades_beta: float = 6.0           # TRADES: weight of the KL term
    eps: Any = "8/255"
    eps_warmup_epochs: float = 0       # inner attack's eps (and step) ramps linearly from 0
    alpha: Any = "2/255"
    steps: int = 7
    attack_train_mode: bool | None = None  # inner attack's BN mode; None: train (pgd/fgsm, both seeds), eval (trades, RBRN)
    eval_eps: Any = None               # None: eps
    eval_alpha: Any = None             # None: alpha
    eval_steps: int = 20
    eval_restarts: int = 1
    eval_early_stop: bool = False      # PGD stops perturbing an example once it is misclassified (RST)
    autoattack: str = "none"           # after the search: none | fast (APGD-CE + APGD-T) | standard
    autoattack_examples: int = 1000
    # monitoring
    collapse_patience: int = 2         # epochs at chance level (loss ~ ln C, accuracy ~ 1/C)
    stop_on_collapse: bool = True      # stop a collapsed run early (reason in metrics.json)
    loss_jump_factor: float | None = None  # debug: warn when a batch loss > factor * running mean

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, params: dict, strict: bool = True) -> "RunConfig":
        """Build from a dict; unknown keys are an error (``strict``) listing the valid ones."""
        names = set(cls.field_names())
        unknown = sorted(set(params) - names)
        if unknown and strict:
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}; valid parameters: "
                              f"{', '.join(cls.field_names())}")
        cfg = cls(**{k: v for k, v in params.items() if k in names})
        return cfg.validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes).validate()

    # ----------------------------------------------------------------- validation

    def validate(self) -> "RunConfig":
        """Check types and ranges; normalize eps-like fields to floats. Returns self."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), hints[f.name])
        check_choice("dataset", self.dataset, DATASETS)
        check_choice("train_attack", self.train_attack, TRAIN_ATTACKS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("task", self.task, TASKS)
        check_choice("threat_model", self.threat_model, THREAT_MODELS)
        check_choice("autoattack", self.autoattack, AUTOATTACK)
        check_choice("keep_ratio_schedule", self.keep_ratio_schedule, KEEP_RATIO_SCHEDULES)
        check_choice("finetune_init", self.finetune_init, FINETUNE_INITS)
        if self.keep_ratio_schedule == "geometric" and self.keep_ratio_steps < 1:
            raise ConfigError("keep_ratio_schedule='geometric' needs keep_ratio_steps >= 1 (epochs "
                              "to shrink from 1 to keep_ratio)")
        if self.keep_ratio_schedule != "geometric" and (self.keep_ratio_steps
                                                        or self.keep_ratio_warmup):
            raise ConfigError("keep_ratio_steps and keep_ratio_warmup belong to "
                              "keep_ratio_schedule='geometric'")
        if not 1 <= self.keep_ratio_stages <= self.epochs:
            raise ConfigError(f"keep_ratio_stages={self.keep_ratio_stages!r} is invalid: it must be "
                              f"in [1, epochs={self.epochs}]")
        if not 0.0 < self.discard_rate <= 1.0 or self.discard_every < 1:
            raise ConfigError(f"discard_rate={self.discard_rate!r} must be in (0, 1] and "
                              f"discard_every={self.discard_every!r} >= 1")
        if self.discard_progressive and not self.discard:
            raise ConfigError("discard_progressive=True needs discard=True (RST: --progressive_prune "
                              "goes with --discard_mode)")
        if self.task.startswith("finetune") and not self.ticket:
            raise ConfigError(f"task={self.task!r} needs ticket: the path of a ticket.pt to finetune")
        for name in ("ticket", "pretrained"):
            path = getattr(self, name)
            if path is not None and not Path(path).expanduser().is_file():
                raise ConfigError(f"{name}={path!r} does not exist (expected a file)")
        if self.ticket and self.task.startswith("finetune"):
            self._check_ticket_matches()
        if self.loss_jump_factor is not None and self.loss_jump_factor <= 1:
            raise ConfigError(f"loss_jump_factor={self.loss_jump_factor!r} is invalid: it must be "
                              "> 1 (or null to switch the check off)")
        if not 0.0 <= self.adaptive_p <= 1.0:
            raise ConfigError(f"adaptive_p={self.adaptive_p!r} is invalid: it must be in [0, 1]")
        for name in ("keep_ratio_warmup", "keep_ratio_steps", "warmup_epochs", "eps_warmup_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: it must be >= 0")
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ConfigError(f"keep_ratio={self.keep_ratio!r} is invalid: it must be in (0, 1] "
                              "(the fraction of weights KEPT; RBRN's --prune-rate 0.01 is 0.01)")
        for name in ("eps", "alpha", "eval_eps", "eval_alpha"):
            value = getattr(self, name)
            if value is None and name.startswith("eval_"):
                continue
            v = parse_number(name, value)
            if v < 0:
                raise ConfigError(f"{name}={value!r} is invalid: it must be >= 0")
            setattr(self, name, v)
        for name in ("epochs", "batch_size", "eval_batch_size", "steps", "eval_steps",
                     "eval_restarts", "collapse_patience", "free_repeats", "autoattack_examples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: it must be >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction!r} is invalid: it must be in "
                              "[0, 1) (0: choose the best epoch on the test split)")
        for name in ("train_examples", "eval_examples", "final_examples"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name}={v!r} is invalid: it must be >= 1 or null (all)")
        for name in ("lr", "width"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: it must be > 0")
        if self.weight_decay < 0 or self.momentum < 0 or self.lr_gamma <= 0:
            raise ConfigError("weight_decay and momentum must be >= 0 and lr_gamma > 0, got "
                              f"{self.weight_decay!r}, {self.momentum!r}, {self.lr_gamma!r}")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigError(f"device={self.device!r} is invalid: use auto, cpu, cuda or cuda:N")
        if self.dataset == "imagefolder" and not self.data_dir:
            raise ConfigError("dataset='imagefolder' needs data_dir: a folder with train/ and "
                              "test/ (or val/) class subfolders")
        if self.data_dir is not None and not Path(self.data_dir).expanduser().exists() \
                and not self.download:
            raise ConfigError(f"data_dir={self.data_dir!r} does not exist; create it, point it "
                              "at your data, or set download: true where downloading is possible")
        from .models import validate_model_config
        validate_model_config(self.model_config(num_classes=10, in_channels=1, image_size=28))
        return self

    def _check_ticket_matches(self) -> None:
        """A finetune ticket must be of the configured architecture (read before compute)."""
        from .tickets import TicketError, ticket_meta
        try:
            t = ticket_meta(self.ticket)["model_config"]
        except TicketError as e:
            raise ConfigError(f"ticket={self.ticket!r}: {e}") from None
        diff = [f"{k}: ticket has {t[k]!r}, parameters say {getattr(self, f)!r}"
                for k, f in (("name", "model"), ("width", "width")) if t.get(k) != getattr(self, f)]
        if diff:
            raise ConfigError(f"ticket={self.ticket!r} does not match the model ("
                              + "; ".join(diff) + ")")

    # ------------------------------------------------------------------ derived

    @property
    def eval_eps_value(self) -> float:
        return self.eps if self.eval_eps is None else self.eval_eps

    @property
    def eval_alpha_value(self) -> float:
        return self.alpha if self.eval_alpha is None else self.eval_alpha

    def model_config(self, num_classes: int, in_channels: int, image_size: int,
                     mean=(0.0,), std=(1.0,), keep_ratio: float | None | str = "config"):
        from .models import ModelConfig
        return ModelConfig(
            name=self.model, num_classes=num_classes, in_channels=in_channels,
            image_size=image_size, width=self.width,
            keep_ratio=self.keep_ratio if keep_ratio == "config" else keep_ratio,
            adaptive_p=self.adaptive_p, granularity=self.granularity,
            weight_init=self.weight_init, scale_fan=self.scale_fan, score_init=self.score_init,
            score_init_scale=self.score_init_scale, score_fan_mode=self.score_fan_mode,
            model_kwargs=dict(self.model_kwargs),
            norm=self.norm, bn_affine=self.bn_affine, end_with_bn=self.end_with_bn,
            dense_first=self.dense_first, dense_last=self.dense_last,
            mean=list(mean), std=list(std), seed=self.seed)


def _check_type(name: str, value, hint) -> None:
    """Small runtime type check for the annotation shapes RunConfig uses."""
    if hint is Any:
        return
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        errors = []
        for opt in options:
            try:
                _check_type(name, value, opt)
                return
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{name}={value!r} is invalid: expected "
                          f"{' or '.join(_type_name(o) for o in options)}")
    if hint is type(None):
        if value is not None:
            raise ConfigError(f"{name}={value!r} is invalid: expected null")
        return
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r} is invalid: expected a list")
        (item,) = typing.get_args(hint) or (Any,)
        for v in value:
            _check_type(name, v, item)
        return
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid: expected {_type_name(hint)}, "
                          f"got {type(value).__name__}")


def _type_name(t) -> str:
    return "null" if t is type(None) else getattr(t, "__name__", str(t))


def parse_override(text: str) -> tuple[str, Any]:
    """'key=value' with the value parsed as YAML ('keep_ratio=0.1', 'eps=8/255')."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def load_params(path: str | Path | None = None, overrides: Iterable[str] | dict = ()) -> dict:
    """Read a YAML parameter file (flat mapping) and apply overrides; no validation."""
    params: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"parameter file {str(path)!r} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of parameter: value")
        params.update(loaded)
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    for k, v in items:
        params[k] = v
    return params


def load_config(path: str | Path | None = None, overrides: Iterable[str] | dict = ()) -> RunConfig:
    return RunConfig.from_dict(load_params(path, overrides))
