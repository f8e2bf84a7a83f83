"""The seeds' checkpoints in: a checkpoint written by RST's or RBRN's own code as a ticket.

``import_checkpoint("ckpt/cResNet18_0.05.pth", "rst", "tickets/rst18")`` reads the dict the
seed's trainer saves (``state_dict`` with the ``module.`` prefix of ``nn.DataParallel``; RBRN
``module.1.``: index 0 of its ``nn.Sequential`` is the normalization layer, which has no
state), maps every key to the workbook's network of the same shape, copies the frozen random
weights and the BatchNorm statistics, computes the masks from the checkpoint's scores as the
seed does, and writes a ticket folder (``ticket.pt`` + ``import.json``) that
:func:`~rst_lib.models.tickets.load_ticket` and every notebook read like any other ticket.

What the seed's code does, and what is done here (RST = GATECH-EIC/Robust-Scratch-Ticket
f77b41c, RBRN = IVRL/RobustBinarySubNet 3c5bd5d, edge-popup = allenai/hidden-networks):

* Masks: ``GetSubnet`` (RST ``utils/conv_type.py``, RBRN ``code/arch/conv_type.py``) ranks the
  |scores| of the whole layer and keeps ``n - int((1 - k) * n)`` of them
  (:func:`~rst_lib.masks.masking.getsubnet_keep_count`).
* Per-layer keep ratios: not in the checkpoint; the seeds rebuild them from the command line.
  RST: every layer ``--prune-rate`` (``utils/net_utils.set_model_prune_rate``); RBRN:
  ``--prune-rate`` spread with ``--pr-scale`` by ``code/arch/net_utils.set_model_prune_rate``
  (:func:`~rst_lib.masks.masking.rbrn_keep_ratios`), walked in the checkpoint's module order.
* Normalization: RST's model has none, its data loader normalizes (``data/cifar.py``); RBRN's
  ``DataNormalizeLayer`` constants (``code/util/model_parser.py``). Inside the workbook's
  model both are the first layer, so the imported model takes [0, 1] images.
* Architectures: RST/edge-popup ``Conv2/4/6/8`` (``models/frankle.py``: no BatchNorm, the
  linear layers are 1x1 convs) = the workbook's ``convN`` with ``norm: none``; ``cResNet18/34/50``
  (post-activation, CIFAR stem, 1x1-conv ``fc``) = ``resnet18/34/50``; RBRN's small baselines
  (``code/arch/resnet_cifar_small.py``) = ``resnet18/34/50`` with ``planes``; RBRN's ``last``
  BatchNorm (``--end-with-bn``) = ``end_with_bn``.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from ..data.datasets import SEED_NORMALIZATIONS
from ..errors import ConfigError, did_you_mean
from ..masks import masking
from ..models.registry import ModelConfig, build_model
from ..models.tickets import save_ticket
from ..utils.files import TORCH_LOAD_ERRORS, staged_folder, write_json
from .sources import PARAMS, SOURCES

WEIGHT_INIT = {"rst": "signed_constant", "rbrn": "binary"}  # the shipped CIFAR configs' --init
# seed architecture (lower case) -> (workbook model, model_kwargs)
ARCHITECTURES = {
    **{f"conv{n}": (f"conv{n}", {}) for n in (2, 4, 6, 8)},
    **{f"cresnet{d}": (f"resnet{d}", {}) for d in (18, 34, 50)},
    **{f"cresnet{d}_cifar100": (f"resnet{d}", {}) for d in (18, 34, 50)},
}
_SMALL = {  # RBRN code/arch/resnet_cifar_small.py: planes = stem and stage widths
    "resnet34_001_p1": [6, 13, 26, 51], "resnet34_001_p05": [14, 20, 29, 40],
    "resnet34_001_p01": [23, 25, 27, 29], "resnet34_001_p0": [26, 26, 26, 26],
    "resnet18_001_p01": [23, 25, 27, 29], "resnet18_001_p1": [6, 13, 26, 51],
    "resnet50_001_p01": [23, 25, 27, 31], "resnet50_001_p1": [7, 13, 26, 51],
}
for _name, _planes in _SMALL.items():
    for _suffix in ("", "_cifar100"):
        ARCHITECTURES[_name + _suffix] = ("resnet" + _name[6:8], {"planes": _planes})
BLOCKS = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3], "resnet50": [3, 4, 6, 3]}
FILE_NAME = re.compile(r"^(?P<arch>.+)_(?P<keep>\d*\.?\d+(?:[eE]-?\d+)?)$")  # {network}_{keep}.pth


class ImportRefused(ConfigError):
    """A checkpoint that does not fit the model asked for (one line: which key, what shape)."""


def read_checkpoint(path: Path) -> dict:
    """The checkpoint dict (tensors and plain values only: ``weights_only``)."""
    if not path.is_file():
        raise ImportRefused(f"no checkpoint at {str(path.resolve())!r}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except TORCH_LOAD_ERRORS:
        head = path.read_bytes()[:2]
        raise ImportRefused(
            f"{str(path)!r} " + ("holds Python objects beyond tensors and plain values, which "
                                 "torch.load(weights_only=True) refuses to run" if head == b"PK"
                                 else "is not a PyTorch checkpoint (not a torch.save file)")) from None
    if not isinstance(ck, dict) or not isinstance(ck.get("state_dict"), dict):
        what = type(ck).__name__ if not isinstance(ck, dict) else f"a dict with keys {sorted(ck)[:6]}"
        raise ImportRefused(f"{str(path)!r} is {what}, not a checkpoint of the seeds' trainers "
                            "(a dict with a 'state_dict' entry)")
    return ck


def strip_prefix(state: dict, source: str) -> dict:
    """The model's own key names: without ``module.`` (RST) / ``module.1.`` or ``1.`` (RBRN)."""
    keys = list(state)
    if source == "rst" and keys and all(k.startswith(("module.1.", "1.")) for k in keys):
        prefix = "module.1." if keys[0].startswith("module.1.") else "1."
        raise ImportRefused(f"state_dict keys start with {prefix!r} as RBRN's do (its "
                            "normalization layer is module 0): use --source rbrn")
    prefixes = ("module.1.", "1.") if source == "rbrn" else ("module.", "")
    for prefix in prefixes:
        if keys and all(k.startswith(prefix) for k in keys):
            return {k[len(prefix):]: v for k, v in state.items()}
    other = "rst" if source == "rbrn" else "rbrn"
    raise ImportRefused(f"state_dict keys do not start as {source}'s do ({' or '.join(p or 'no prefix' for p in prefixes)}): "
                        f"first key {keys[0] if keys else None!r}" + (
                            f"; an {other} checkpoint? use --source {other}" if keys else ""))


def seed_module_name(name: str, model: str) -> str | None:
    """The seed's module name of the workbook module ``name`` (None: no counterpart)."""
    if name == "last_bn":
        return "last"
    if not name.startswith("body."):
        return None
    name = name[5:]
    if model.startswith("conv"):
        m = re.fullmatch(r"features\.(\d+)", name)
        if m:
            return f"convs.{m[1]}"
        m = re.fullmatch(r"classifier\.(\d+)", name)
        return f"linear.{int(m[1]) - 1}" if m else None  # classifier.0 is the Flatten
    m = re.fullmatch(r"layers\.(\d+)(\..+)?", name)
    if m:
        i, stage = int(m[1]), 0
        while i >= BLOCKS[model][stage]:
            i, stage = i - BLOCKS[model][stage], stage + 1
        return f"layer{stage + 1}.{i}{m[2] or ''}"
    return name  # conv1, bn1, fc


def _expected(model: nn.Module, cfg: ModelConfig) -> dict[str, tuple[str, str, tuple]]:
    """seed key -> (workbook module, what, shape) for every state entry of ``model``."""
    out = {}
    for name, m in model.named_modules():
        seed = seed_module_name(name, cfg.name)
        if seed is None:
            continue
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = masking.raw_weight(m)
            out[f"{seed}.weight"] = (name, "weight", tuple(w.shape))
            if masking.is_masked(m):
                out[f"{seed}.scores"] = (name, "scores", tuple(masking.get_mask_param(m).scores.shape))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            for key, v in m.state_dict().items():
                out[f"{seed}.{key}"] = (name, key, tuple(v.shape))
    return out


def _fits(found: torch.Size, expected: tuple) -> bool:
    """Same shape, or the seed's 1x1 conv (out, in, 1, 1) of a workbook Linear (out, in)."""
    found = tuple(found)
    return found == expected or (len(found) == 4 and found[2:] == (1, 1)
                                 and len(expected) == 2 and found[:2] == expected)


def _resolve_params(path: Path, ck: dict, source: str, params: dict) -> dict:
    unknown = set(params) - set(PARAMS)
    if unknown:
        key = sorted(unknown)[0]
        raise ImportRefused(f"-p {key}: not an import parameter{did_you_mean(key, set(PARAMS))} "
                            f"(import takes {', '.join(PARAMS)})")
    p = dict(params)
    from_name = FILE_NAME.match(path.stem)
    arch = p.get("model") or ck.get("arch") or (from_name["arch"] if from_name else None)
    if not arch:
        raise ImportRefused(f"{str(path)!r}: the checkpoint names no 'arch' and the file name is "
                            "not {network}_{keep}.pth: give -p model=... (e.g. cResNet18)")
    if str(arch).lower() not in ARCHITECTURES:
        raise ImportRefused(f"model={arch!r} is not an architecture the import knows"
                            f"{did_you_mean(str(arch).lower(), set(ARCHITECTURES))}; known: "
                            f"{', '.join(sorted(ARCHITECTURES))}")
    p["model"] = str(arch)
    if "keep_ratio" not in p and from_name and from_name["arch"].lower() == p["model"].lower():
        p["keep_ratio"] = float(from_name["keep"])
    if p.get("keep_ratio") is None:
        raise ImportRefused("keep_ratio is not in the checkpoint (the seeds rebuild it from "
                            "--prune-rate): give -p keep_ratio=... (the kept fraction)")
    if source == "rbrn" and p.get("adaptive_p") is None:
        raise ImportRefused("adaptive_p is not in the checkpoint (RBRN rebuilds the per-layer "
                            "ratios from --pr-scale): give -p adaptive_p=... (its --pr-scale)")
    if source == "rst" and float(p.get("adaptive_p", 1.0)) != 1.0:
        raise ImportRefused(f"adaptive_p={p['adaptive_p']!r}: RST keeps the same ratio in every "
                            "layer (adaptive_p must be 1)")
    return p


def import_checkpoint(checkpoint: str | os.PathLike, source: str, out_dir: str | os.PathLike,
                      params: dict | None = None) -> Path:
    """Import a seed's checkpoint into a ticket folder ``out_dir`` (new or empty)."""
    if source not in SOURCES:
        raise ImportRefused(f"source={source!r} is invalid: valid sources are {', '.join(SOURCES)}")
    path, out_dir = Path(checkpoint).expanduser(), Path(out_dir).expanduser()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ImportRefused(f"output folder {str(out_dir.resolve())!r} exists and is not empty: "
                            "give a new folder")
    ck = read_checkpoint(path)
    p = _resolve_params(path, ck, source, params or {})
    state = strip_prefix(ck["state_dict"], source)
    model, info = build_ticket(state, source, p)
    meta = {"import": {"source": source, "checkpoint": str(path.resolve()), "name": p.get("name") or path.stem,
                       "dataset": p.get("dataset", "cifar10"), "params": p, "layers": info,
                       "checkpoint_fields": {k: v for k, v in ck.items() if k != "state_dict"
                                             and isinstance(v, (int, float, str, type(None)))}},
            "run": {"task": "import", "dataset": p.get("dataset", "cifar10"),
                    "data_dir": p.get("data_dir"), "name": p.get("name") or path.stem}}
    with staged_folder(out_dir, "rst-import-") as tmp:
        save_ticket(model, tmp / "ticket.pt", meta)
        summary = masking.mask_summary(model)
        write_json(tmp / "import.json", {**meta["import"], "model_config": model.config.to_dict(),
                                         "total_weights": summary["total"],
                                         "total_kept": summary["kept"]})
    return out_dir


def build_ticket(state: dict, source: str, p: dict) -> tuple[nn.Module, list[dict]]:
    """The workbook network holding ``state`` (the seed's names, prefix stripped) with the
    seed's masks; and per masked layer (seed order) its name, weights, keep ratio and kept."""
    name, kwargs = ARCHITECTURES[p["model"].lower()]
    first = "convs.0" if name.startswith("conv") else "conv1"
    classifier = "linear.4" if name.startswith("conv") else "fc"
    fc = state.get(f"{classifier}.weight")
    num_classes = int(fc.shape[0]) if fc is not None else 10
    # RST's loader / RBRN's DataNormalizeLayer constants (RST and edge-popup share theirs)
    mean, std = SEED_NORMALIZATIONS[source]["cifar100" if num_classes == 100 else "cifar10"]
    try:
        cfg = ModelConfig(
            name=name, num_classes=num_classes, in_channels=3,
            image_size=32, width=1.0, model_kwargs=dict(kwargs), keep_ratio=float(p["keep_ratio"]),
            adaptive_p=float(p.get("adaptive_p", 1.0)), weight_init=WEIGHT_INIT[source],
            norm="none" if name.startswith("conv") else "bn", bn_affine=False,
            end_with_bn=bool(p.get("end_with_bn", False)), keep_rule="getsubnet",
            keep_allocation="rbrn" if source == "rbrn" else "closed_form",
            dense_first=f"{first}.weight" in state and f"{first}.scores" not in state,
            mean=list(mean), std=list(std))
        model = build_model(cfg)
    except (TypeError, ValueError) as e:
        raise ImportRefused(f"the parameters do not build a model: {e}") from None
    expected = _expected(model, cfg)
    left = [k for k in state if k not in expected]
    if left:
        hint = ""
        if any(k.startswith("last.") for k in left) and not cfg.end_with_bn:
            hint = (" (RBRN's last BatchNorm: add -p end_with_bn=true; RBRN's own loader "
                    "would silently drop these)")
        elif f"{classifier}.bias" in left:
            hint = " (a dense classifier with bias, RST's --last-layer-dense: not supported)"
        raise ImportRefused(f"checkpoint keys left over for {p['model']}: {left[:4]}"
                            f"{' ...' if len(left) > 4 else ''}{hint}")
    missing = [k for k in expected if k not in state]
    if missing:
        raise ImportRefused(f"checkpoint lacks keys {p['model']} needs: {missing[:4]}"
                            f"{' ...' if len(missing) > 4 else ''} (wrong model or source?)")
    for key, (_, _, shape) in expected.items():
        if not _fits(state[key].shape, shape):
            raise ImportRefused(f"{key}: {p['model']} needs shape {shape}, the checkpoint has "
                                f"{tuple(state[key].shape)} (wrong model?)")
    modules = dict(model.named_modules())
    scores: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, (module, what, shape) in expected.items():
            value = state[key].reshape(shape)
            m = modules[module]
            if what == "weight":
                masking.raw_weight(m).copy_(value)
            elif what == "scores":
                scores[module] = value
            else:
                getattr(m, what).copy_(value)
    # per-layer keep ratios in the seed's module order (= the checkpoint's key order)
    order = [expected[k][0] for k in state if expected[k][1] == "scores"]
    sizes = [scores[n].numel() for n in order]
    ratios = masking.allocate_keep_ratios(sizes, cfg.keep_ratio, cfg.adaptive_p,
                                          allocation=cfg.keep_allocation)
    masks, info = {}, []
    for n, r in zip(order, ratios):
        layer = masking.get_mask_param(modules[n])
        with torch.no_grad():
            layer.scores.copy_(scores[n])
        layer.keep_ratio, layer.keep_rule = float(r), cfg.keep_rule  # GetSubnet's count on |scores|
        masks[n] = layer.mask().clone()
        info.append({"name": seed_module_name(n, cfg.name), "numel": scores[n].numel(),
                     "prune_rate": float(r), "kept": int(masks[n].sum())})
    masking.set_masks(model, masks)
    return model.eval(), info
