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
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import (ConfigError, check_choice, check_keep_ratio, did_you_mean,  # noqa: F401
                     parse_number, warn_once)  # ConfigError re-exported


def param(default, help: str, unit: str | None = None, choices=None):
    """A schema entry: the default, a one-line help, the unit and the allowed values (the
    type is the annotation). ``choices``: the values allowed, a tuple or a mapping of value
    to a short note; :func:`check_fields` checks them and the help shows them first
    (``a | b (note) | c: help``). The notebooks' parameters cells, ``rst-workbook params``
    and validation all read these."""
    meta = {"help": _help_text(help, choices), "unit": unit,
            "choices": tuple(choices) if choices is not None else None}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _help_text(help: str, choices) -> str:
    if choices is None:
        return help
    notes = choices if isinstance(choices, dict) else dict.fromkeys(choices)
    shown = " | ".join((str(v).lower() if isinstance(v, bool) else str(v))
                       + (f" ({note})" if note else "") for v, note in notes.items())
    return f"{shown}: {help}" if help else shown


def allowed(name: str, schema: type | None = None) -> tuple:
    """The allowed values of a parameter, from its declaration (RunConfig by default)."""
    return (schema or RunConfig).__dataclass_fields__[name].metadata["choices"]


def default(name: str):
    """The schema's default of a parameter (a fresh copy for lists and dicts)."""
    f = RunConfig.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def check_fields(obj, names: Iterable[str] | None = None) -> None:
    """Every field of a schema dataclass (or those in ``names``) has its annotated type and,
    where declared, one of its allowed values: one ConfigError naming the first that does
    not. RunConfig and the notebooks' own parameters are checked by this one function."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if names is not None and f.name not in names:
            continue
        value = getattr(obj, f.name)
        check_type(f.name, value, hints[f.name])
        if f.metadata.get("choices") is not None and value is not None:
            check_choice(f.name, value, f.metadata["choices"])


@dataclass
class RunConfig:
    """Every parameter of a run: its default, type, unit and help are declared here once.

    Defaults are a CPU-sized robust search on the embedded ``mnist5k`` digits that holds
    up under AutoAttack (PGD-3 with an eps warm-up; see the README's quickstart); the
    papers' settings live in ``params/presets/``.
    Units: eps/alpha in [0, 1] pixel scale ('8/255' works).
    """

    # --- run
    name: str | None = param(None, "run name: the folder is <name>-<time> (None: the notebook's name)")
    task: str = param("search", "", choices=("search", "finetune", "finetune_reinit", "finetune_full", "dense", "bnn"))
    ticket: str | None = param(None, "a ticket.pt or a run folder (finetune tasks; 02 and 06 take it too)", "path")
    finetune_init: str = param("kaiming_normal", "finetune_reinit draws weights so (RST --ft_init)", choices={
        "kaiming_normal": None, "kaiming_uniform": None, "signed_constant": None, "unsigned_constant": None,
        "xavier_normal": None, "xavier_constant": None, "binary": None, "uniform": None, "same": "the ticket's scheme"})
    pretrained: str | None = param(None, "trained dense checkpoint to search in (robust trained tickets)", "path")
    seed: int = param(0, "seed of the random weights, the validation split and the attacks")
    device: str = param("auto", "auto | cpu | cuda | cuda:N")
    channels_last: bool | str = param("auto", "NHWC conv layout", choices={"auto": "on for CUDA, off for CPU", True: None, False: None})
    precision: str = param("auto", "autocast of the training steps, their attacks, the per-epoch check", choices={"auto": "bf16 where native and measured faster, else fp32", "fp32": None, "bf16": None, "fp16": "loss-scaled"})
    eval_precision: str = param("fp32", "autocast of the final test numbers (PGD, AutoAttack)", choices=("fp32", "bf16", "fp16"))
    compile: bool = param(False, "torch.compile the network (masks stay eager); falls back to eager with one warning")
    # --- data
    dataset: str = param("mnist5k", "", choices={"mnist5k": "embedded", "cifar10": None, "cifar100": None, "svhn": None, "mnist": None, "imagefolder": None})
    data_dir: str | None = param(None, "where the data lives (None: $RST_DATA_DIR or data/)", "path")
    download: bool = param(False, "let torchvision download a missing dataset")
    train_examples: int | None = param(None, "training examples used (None: all but the validation split)", "examples")
    val_fraction: float = param(0.02, "training split held out to pick the best epoch (RBRN 2 %); 0: pick on test", "fraction")
    eval_examples: int | None = param(None, "validation examples of the per-epoch check (None: all)", "examples")
    final_examples: int | None = param(None, "test examples of the final numbers (None: all)", "examples")
    batch_size: int = param(32, "training batch (the global batch under torchrun)", "examples")
    eval_batch_size: int = param(500, "evaluation batch", "examples")
    augment: bool = param(True, "random crop + flip (32x32 color data only)")
    data_cache: bool = param(True, "decode small images (up to 64 px) once into a uint8 cache; batches augmented on the device")
    data_cache_dir: str | None = param(None, "where that cache goes (None: data_dir/.rst-cache, or ~/.cache/rst-workbook if read-only)", "path")
    normalization: str = param("dataset", "input mean/std inside the model", choices={"dataset": "its usual statistics", "rst": "RST's loader", "rbrn": "RBRN's DataNormalizeLayer"})
    num_workers: int | str = param("auto", "loader processes for resized (uncached) images: auto (CPUs - 1, max 8; none with 2 CPUs or fewer) | N")
    # --- model (rst_lib.models.registry.ModelConfig takes these)
    model: str = param("conv4", "conv2/4/6/8, mlp, resnet18/34/50, preact_resnet18, wide_resnet, vgg16, mobilenet_v2")
    model_kwargs: dict = param({}, "extra model arguments, e.g. {depth: 28, widen_factor: 10}")
    width: float = param(0.5, "channel multiplier")
    keep_ratio: float = param(0.1, "fraction of the weights KEPT (RBRN's --prune-rate)", "fraction")
    adaptive_p: float = param(1.0, "RBRN's p: a layer keeps ~ size^(p-1); 1: the same ratio everywhere")
    granularity: str = param("weight", "what one score gates", choices=("weight", "kernel", "filter", "row"))
    keep_rule: str = param("round", "kept scores of a layer", choices={"round": "round(k n), at least 1", "getsubnet": "n - int((1 - k) n), the seeds' GetSubnet"})
    keep_allocation: str = param("closed_form", "per-layer keep ratios from keep_ratio (and adaptive_p)", choices={"closed_form": "one solve", "rbrn": "RBRN's set_model_prune_rate walk", "erk": "Erdos-Renyi-Kernel, RigL; ignores adaptive_p"})
    keep_scope: str = param("layer", "where scores compete for the kept places", choices={"layer": "top-k in each layer", "global": "top-k over all masked layers; the allocation sets only the total"})
    keep_min_fraction: float = param(0.0, "global scope: each layer keeps at least this fraction of its scores (0: a layer may be emptied)", "fraction")
    rerand_freq: int = param(0, "IteRand: re-draw pruned weights before every N-th optimizer step (0: off)", "steps")
    rerand_rate: float = param(1.0, "IteRand: the lowest-scored fraction of the pruned weights that may be re-drawn", "fraction")
    rerand_lambda: float = param(0.1, "IteRand: probability that each of those is re-drawn at an event (their bernoulli mode)", "fraction")
    keep_ratio_schedule: str = param("none", "", choices={"none": None, "staged": "RBRN pr_steps", "geometric": "per epoch", "biprop": "global: 0.5 kept to keep_ratio, biprop main.py"})
    keep_ratio_stages: int = param(1, "staged: stage k of S keeps keep_ratio^(k/S); the cosine LR restarts")
    keep_ratio_warmup: int = param(0, "geometric: dense epochs before shrinking", "epochs")
    keep_ratio_steps: int = param(0, "geometric: epochs to shrink from 1 to keep_ratio; biprop: its prune_rate_epoch", "epochs")
    discard: bool = param(False, "RST discard mode: the lowest scores stop getting gradient")
    discard_every: int = param(10, "RST --discard_epoch: epochs between discards", "epochs")
    discard_rate: float = param(0.1, "RST --discard_rate: scores discarded per discard", "fraction")
    discard_progressive: bool = param(False, "RST --progressive_prune: keep 0.9 - discarded (not below keep_ratio)")
    weight_init: str = param("signed_constant", "frozen random weights", choices={
        "signed_constant": "RST", "binary": "RBRN", "unsigned_constant": None, "kaiming_normal": None,
        "kaiming_uniform": None, "xavier_normal": None, "xavier_constant": None, "uniform": None})
    scale_fan: bool = param(True, "weight scale uses fan x keep ratio (RBRN's correct init)")
    score_init: str = param("kaiming_uniform", "", choices={"kaiming_uniform": "RST", "uniform": "U(-a, a), RBRN"})
    score_init_scale: float = param(0.01, "a of the uniform score init")
    score_fan_mode: str = param("none", "uniform scores divided by sqrt(fan)", choices=("none", "all", "except_last", "only_last"))
    norm: str = param("bn", "", choices=("bn", "none"))
    bn_affine: bool = param(False, "affine BatchNorm (both seeds: non-affine)")
    end_with_bn: bool = param(False, "RBRN's last BatchNorm on the logits")
    dense_first: bool = param(False, "keep the first layer dense (unmasked)")
    dense_last: bool = param(False, "keep the last layer dense (unmasked)")
    # --- optimization (of the scores; of the weights when finetuning)
    epochs: int = param(6, "training epochs", "epochs")
    optimizer: str = param("sgd", "", choices=("sgd", "adam"))
    lr: float = param(0.2, "base learning rate")
    momentum: float = param(0.9, "SGD momentum")
    weight_decay: float = param(5e-4, "weight decay (on the scores in a search, as both seeds)")
    lr_schedule: str = param("cosine", "", choices=("cosine", "step", "multistep", "cifar_piecewise", "constant"))
    lr_step: str = param("batch", "when the LR changes", choices={"batch": "every batch", "epoch": "once per epoch, before it: both seeds"})
    lr_milestones: list[int] = param([], "step / multistep: epochs where the LR is multiplied by lr_gamma; cifar_piecewise: x0.1 at each (empty: at 50 % and 75 % of the epochs)", "epochs")
    lr_gamma: float = param(0.1, "step / multistep LR factor")
    warmup_epochs: float = param(0, "linear LR warm-up", "epochs")
    # --- training attack
    train_attack: str = param("pgd", "", choices={"pgd": None, "fgsm_rs": None, "fgsm_carried": "RBRN fast", "free": None, "trades": None, "none": "natural"})
    threat_model: str = param("linf", "", choices=("linf", "l2"))
    free_repeats: int = param(4, "Free AT: replays of each minibatch")
    trades_beta: float = param(6.0, "TRADES: weight of the KL term")
    eps: Any = param(0.3, "attack budget ('8/255' works)", "pixels in [0, 1]")
    eps_warmup_epochs: float = param(2, "the training attack's eps (and step) ramps up from 0", "epochs")
    alpha: Any = param(0.1, "training attack step (FGSM-RS: 1.25 x eps)", "pixels in [0, 1]")
    steps: int = param(3, "PGD / TRADES steps of the training attack")
    attack_train_mode: bool | None = param(None, "BN mode of the training attack (None: train; eval for trades)")
    # --- evaluation
    eval_eps: Any = param(None, "evaluation budget (None: eps)", "pixels in [0, 1]")
    eval_alpha: Any = param(0.0375, "PGD step of the evaluation (None: alpha)", "pixels in [0, 1]")
    eval_steps: int = param(20, "PGD steps of the evaluation")
    eval_restarts: int = param(1, "PGD restarts of the evaluation")
    eval_early_stop: bool = param(True, "PGD stops on an input once it is misclassified (RST; stronger and cheaper)")
    autoattack: str = param("fast", "final AutoAttack", choices={"none": None, "fast": "APGD-CE + APGD-T", "standard": None})
    autoattack_examples: int = param(1000, "test examples of the final AutoAttack", "examples")
    autoattack_precision: str = param("auto", "autocast of AutoAttack's search for adversarial examples", choices={
        "auto": "bf16 where native and measured faster, else fp32", "fp32": "as eval_precision",
        "bf16": "bf16 search, every adversarial example confirmed on the fp32 model"})
    # --- monitoring
    collapse_patience: int = param(2, "epochs at chance level (loss ~ ln C, accuracy ~ 1/C) that mean collapse", "epochs")
    stop_on_collapse: bool = param(True, "stop a collapsed run (the reason goes to metrics.json)")
    loss_jump_factor: float | None = param(None, "debug: warn when a batch loss exceeds factor x its running mean")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, params: dict, strict: bool = True) -> "RunConfig":
        """Build from a dict; unknown keys are an error (``strict``) listing the valid ones."""
        names = set(cls.field_names())
        unknown = sorted(set(params) - names)
        if unknown and strict:
            hint = did_you_mean(unknown[0], names) if len(unknown) == 1 else ""
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}{hint}; valid parameters: "
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
        check_fields(self)  # types and allowed values, as declared above
        if self.normalization != "dataset" and self.dataset not in ("cifar10", "cifar100", "imagefolder"):
            raise ConfigError(f"normalization={self.normalization!r} is the seeds' CIFAR normalization: "
                              f"it needs dataset cifar10, cifar100 or imagefolder, not {self.dataset!r} "
                              "(use normalization: dataset)")
        ramp = self.keep_ratio_schedule in ("geometric", "biprop")  # over keep_ratio_steps epochs
        if ramp and self.keep_ratio_steps < 1 or not ramp and self.keep_ratio_steps or \
                self.keep_ratio_schedule != "geometric" and self.keep_ratio_warmup:
            raise ConfigError("keep_ratio_steps (>= 1: the epochs of the ramp) belongs to keep_ratio_schedule "
                              "'geometric' or 'biprop', keep_ratio_warmup to 'geometric'")
        if self.keep_ratio_schedule == "biprop" and not (self.keep_scope == "global" and self.keep_ratio
                                                         <= 0.5 and self.keep_ratio_steps < self.epochs):
            raise ConfigError("keep_ratio_schedule='biprop' ramps a global ranking from 0.5 kept to keep_ratio "
                              "over keep_ratio_steps epochs: it needs keep_scope='global', keep_ratio <= 0.5 "
                              "(biprop skips the ramp above) and keep_ratio_steps < epochs (an epoch at the target)")
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
            if path is not None and not Path(path).expanduser().exists():
                raise ConfigError(f"{name}={path!r} does not exist: no file or run folder at "
                                  f"{str(Path(path).expanduser().resolve())!r}")
        if self.loss_jump_factor is not None and self.loss_jump_factor <= 1:
            raise ConfigError(f"loss_jump_factor={self.loss_jump_factor!r} is invalid: it must be "
                              "> 1 (or null to switch the check off)")
        if not 0.0 <= self.adaptive_p <= 1.0:
            raise ConfigError(f"adaptive_p={self.adaptive_p!r} is invalid: it must be in [0, 1]")
        for name in ("keep_ratio_warmup", "keep_ratio_steps", "warmup_epochs", "eps_warmup_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: it must be >= 0")
        if self.train_attack != "none" and self.eps_warmup_epochs >= self.epochs > 0:
            warn_once(f"eps_warmup_epochs={self.eps_warmup_epochs:g} >= epochs={self.epochs}: the "
                      f"training attack never reaches eps={self.eps} (at most "  # the ramp's last value
                      f"{self.epochs / self.eps_warmup_epochs:.0%} of it); use fewer warm-up epochs or more epochs")
        check_keep_ratio(self.keep_ratio)
        if not 0.0 <= self.keep_min_fraction <= self.keep_ratio:
            raise ConfigError(f"keep_min_fraction={self.keep_min_fraction!r} is invalid: it must be "
                              f"in [0, keep_ratio={self.keep_ratio}] (a floor above the average "
                              "cannot be met)")
        if self.keep_min_fraction and self.keep_scope != "global":
            raise ConfigError("keep_min_fraction belongs to keep_scope='global' (with per-layer "
                              "ranking every layer keeps its allocated share)")
        if self.keep_allocation == "erk" and self.adaptive_p != 1.0:
            raise ConfigError(f"adaptive_p={self.adaptive_p!r} is RBRN's per-layer rule; "
                              "keep_allocation='erk' has its own (leave adaptive_p at 1.0)")
        if self.keep_allocation == "erk" and self.keep_ratio_schedule == "staged" \
                and self.keep_ratio_stages > 1:
            raise ConfigError("keep_allocation='erk' with keep_ratio_schedule='staged' is not "
                              "available (the stages re-allocate from layer sizes, ERK needs "
                              "the layers' shapes): use closed_form or rbrn, or a geometric schedule")
        if self.rerand_freq and self.task != "search":
            raise ConfigError(f"rerand_freq={self.rerand_freq} (IteRand) re-draws the weights of a "
                              f"search; task={self.task!r} trains the weights themselves: set "
                              "rerand_freq: 0")
        if self.rerand_freq < 0:
            raise ConfigError(f"rerand_freq={self.rerand_freq!r} is invalid: it must be >= 0 (0: off)")
        for name in ("rerand_rate", "rerand_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid: it must be in [0, 1]")
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
            raise ConfigError(f"weight_decay and momentum must be >= 0 and lr_gamma > 0, got {self.weight_decay!r}, {self.momentum!r}, {self.lr_gamma!r}")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigError(f"device={self.device!r} is invalid: use auto, cpu, cuda or cuda:N")
        if self.num_workers != "auto" and not (isinstance(self.num_workers, int)
                                                and self.num_workers >= 0):
            raise ConfigError(f"num_workers={self.num_workers!r} is invalid: use auto or a number "
                              "of worker processes >= 0")
        if self.dataset == "imagefolder" and not self.data_dir:
            raise ConfigError("dataset='imagefolder' needs data_dir: a folder with train/ and "
                              "test/ (or val/) class subfolders")
        if self.data_dir is not None and not Path(self.data_dir).expanduser().exists() \
                and not self.download:
            raise ConfigError(f"data_dir={self.data_dir!r} does not exist; create it, point it "
                              "at your data, or set download: true where downloading is possible")
        return self

    # ------------------------------------------------------------------ derived

    @property
    def eval_eps_value(self) -> float:
        return self.eps if self.eval_eps is None else self.eval_eps

    @property
    def eval_alpha_value(self) -> float:
        return self.alpha if self.eval_alpha is None else self.eval_alpha


# The fields that say how and where a run executes, never what it computes: a paper preset may
# leave them out; it must write every other field (tests/test_presets.py). Why each computes
# nothing new: a label (name); the same arithmetic, rounded or scheduled differently (device,
# channels_last, compile); where data and its cache are read (data_dir, download,
# data_cache_dir); loader processes of the uncached path (num_workers); the batch of the
# evaluation, whose BatchNorm is in eval mode (eval_batch_size); warnings only: collapse
# detection stops a run only with stop_on_collapse, which every preset sets to false
# (collapse_patience), and the debug loss-jump warning (loss_jump_factor). Device, worker
# count and evaluation batch can change which random numbers an example meets (crops, attack
# starts): another draw of the same distributions, not another computation.
EXECUTION_ONLY_FIELDS = ("name", "device", "channels_last", "compile", "data_dir", "download",
                         "data_cache_dir", "num_workers", "eval_batch_size", "collapse_patience",
                         "loss_jump_factor")


def check_type(name: str, value, hint) -> None:
    """Small runtime type check for the annotation shapes RunConfig uses."""
    if hint is Any:
        return
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        errors = []
        for opt in options:
            try:
                check_type(name, value, opt)
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
            check_type(name, v, item)
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
    if t is bool:
        return "true or false"
    return "null" if t is type(None) else getattr(t, "__name__", str(t))


def parse_override(text: str) -> tuple[str, Any]:
    """'key=value' with the value parsed as YAML ('keep_ratio=0.1', 'eps=8/255')."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def read_yaml_mapping(path: str | Path, kind: str) -> dict:
    """A YAML file holding a mapping; a syntax error names the file, line and column."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{kind} {str(path.resolve())!r} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path.resolve()}{where}: YAML syntax error: {problem}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path.resolve()}: expected a mapping of parameter: value")
    return loaded


def load_params(path: str | Path | None = None, overrides: Iterable[str] | dict = ()) -> dict:
    """Read a YAML parameter file (flat mapping) and apply overrides; no validation."""
    params: dict = {}
    if path is not None:
        params.update(read_yaml_mapping(path, "parameter file"))
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    for k, v in items:
        params[k] = v
    return params


def load_config(path: str | Path | None = None, overrides: Iterable[str] | dict = ()) -> RunConfig:
    return RunConfig.from_dict(load_params(path, overrides))
