"""Plain models out: a ticket as a model that loads without rst_lib.

``export_ticket(TICKET, DIR)`` writes

* ``model.pt2``: a ``torch.export`` program of the ticket's network with the masked weights
  baked in (``torch.export.load(path).module()(x)`` with ``x`` images in [0, 1], batch
  dimension dynamic; the input normalization is inside the program);
* ``state_dict.pt``: the same network's ``state_dict`` (plain ``Conv2d`` / ``Linear`` /
  ``BatchNorm`` entries, pruned weights are zeros); its keys are the exported program's, so
  ``torch.export.load(...).module().load_state_dict(sd)`` works, and ``architecture.json``
  lists every layer with its constructor arguments for rebuilding it by hand;
* ``model.onnx`` when the ONNX exporter (``onnx`` + ``onnxscript``) is installed, else a note;
* ``export_log.json`` / ``export_log.txt``: the check of every file against the ticket (same
  logits on test images: the ticket's dataset when readable, else seeded random images);
* ``model_card.json``: RobustBench's fields, from the ticket's run folder when it has one.

Everything is written to a temporary folder first and moved into place only when every check
passed: a failed export leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..data.datasets import DatasetUnavailable, fixed_subset, load_dataset
from ..errors import ConfigError
from ..masks import masking
from ..models.registry import RandomNetwork, build_model
from ..models.tickets import TicketError, load_ticket, read_ticket, resolve_ticket, ticket_masks
from ..utils.files import read_json, staged_folder, write_json, write_text

# Logits of two float32 computations of the same network agree to about 1e-6 relative; the
# tolerance leaves room for a different kernel order (ONNX reference evaluator) and no more.
REL_TOLERANCE = 1e-4
ONNX_CHECK_IMAGES = 16  # the ONNX reference evaluator is plain NumPy: a few images suffice


class ExportError(ConfigError):
    """An export that cannot be made or does not reproduce the ticket."""


def bake_masks(model: RandomNetwork) -> RandomNetwork:
    """A copy of ``model`` whose layers are ordinary modules with the masked weights baked in
    (pruned weights are 0; no scores, no parametrizations), in eval mode, frozen."""
    plain = build_model(model.config)
    plain.load_state_dict(model.state_dict())
    if any(True for _ in masking.masked_layers(model)):
        masking.set_masks(plain, masking.get_masks(model))
    for _, layer in list(plain.named_modules()):
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return plain.eval().requires_grad_(False)


def architecture(plain: nn.Module) -> dict:
    """Every parametrized leaf layer of ``plain`` with the arguments that rebuild it."""
    layers = []
    for name, m in plain.named_modules():
        if isinstance(m, nn.Conv2d):
            args = dict(in_channels=m.in_channels, out_channels=m.out_channels,
                        kernel_size=list(m.kernel_size), stride=list(m.stride),
                        padding=list(m.padding), groups=m.groups, bias=m.bias is not None)
        elif isinstance(m, nn.Linear):
            args = dict(in_features=m.in_features, out_features=m.out_features,
                        bias=m.bias is not None)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            args = dict(num_features=m.num_features, eps=m.eps, momentum=m.momentum,
                        affine=m.affine)
        else:
            continue
        layers.append({"name": name, "type": type(m).__name__, "args": args})
    return {"layers": layers,
            "forward": "the exported program model.pt2 is the forward pass (its state_dict "
                       "keys are state_dict.pt's)"}


def _check_images(payload: dict, n: int) -> tuple[torch.Tensor, str]:
    """``n`` test images for the check: the ticket's dataset if it can be read, else seeded
    uniform random images of the network's input shape."""
    cfg = json.loads(payload["model_config"])
    run = json.loads(payload["meta"]).get("run", {})
    dataset = run.get("dataset")
    if dataset:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                bundle = load_dataset(dataset, run.get("data_dir"), augment=False, cache=False,
                                      image_size=cfg["image_size"] if dataset == "imagefolder" else None)
            test = fixed_subset(bundle.test, n)
            x = torch.stack([test[i][0] for i in range(len(test))])
            if tuple(x.shape[1:]) == (cfg["in_channels"], cfg["image_size"], cfg["image_size"]):
                return x.float(), f"{len(test)} test images of {dataset}"
        except (DatasetUnavailable, ConfigError, FileNotFoundError, OSError, RuntimeError):
            pass
    g = torch.Generator().manual_seed(0)
    shape = (n, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    why = f"dataset {dataset!r} not readable here" if dataset else "the ticket names no dataset"
    return torch.rand(shape, generator=g), f"{n} uniform random images (seed 0; {why})"


def compare_logits(reference: torch.Tensor, other: torch.Tensor) -> dict:
    """How closely ``other`` reproduces ``reference`` (logits of the same images)."""
    reference, other = reference.detach().float().cpu(), torch.as_tensor(other).float().cpu()
    diff = float((reference - other).abs().max()) if reference.numel() else 0.0
    tol = REL_TOLERANCE * max(1.0, float(reference.abs().max()))
    same_pred = int((reference.argmax(1) == other.argmax(1)).sum())
    return {"images": len(reference), "max_abs_diff": diff, "tolerance": tol,
            "same_predictions": same_pred, "ok": diff <= tol and same_pred == len(reference)}


def _export_onnx(plain: nn.Module, x: torch.Tensor, path: Path, reference: torch.Tensor) -> dict:
    try:
        import onnx  # noqa: F401 - optional extra (pip install rst-workbook[onnx])
        import onnxscript  # noqa: F401
    except ImportError:
        return {"written": False, "note": "ONNX skipped: the onnx and onnxscript packages are "
                "not installed (pip install 'rst-workbook[onnx]')"}
    batch = torch.export.Dim("batch")
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(plain, (x,), dynamo=True, dynamic_shapes=({0: batch},),
                                    verbose=False)
    program.save(str(path))
    out = {"written": True, "file": path.name}
    try:
        import onnxruntime  # optional: faster, and the runtime most users load ONNX with
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        run, runner = (lambda a: session.run(None, {session.get_inputs()[0].name: a})[0]), "onnxruntime"
    except ImportError:
        from onnx.reference import ReferenceEvaluator
        ev = ReferenceEvaluator(str(path))
        run, runner = (lambda a: ev.run(None, {ev.input_names[0]: a})[0]), "onnx.reference"
    k = min(ONNX_CHECK_IMAGES, len(x))
    out["check"] = {**compare_logits(reference[:k], torch.from_numpy(run(x[:k].numpy()))),
                    "runner": runner}
    return out


def model_card(ticket: Path, model: RandomNetwork, payload: dict) -> dict:
    """RobustBench's model-info fields plus the ticket's size, from its run folder."""
    folder = ticket.parent
    metrics, summary = read_json(folder / "metrics.json"), read_json(folder / "summary.json")
    meta = json.loads(payload["meta"])
    run = meta.get("run") or metrics.get("config") or {}
    final = metrics.get("final") or {}
    head = summary.get("headline") if isinstance(summary.get("headline"), dict) else {}
    summ = masking.mask_summary(model)
    code_bits = sum(v.numel() * v.element_size() * 8 for code in payload["masks"].values()
                    for v in (code.values() if isinstance(code, dict) else [code])
                    if isinstance(v, torch.Tensor))
    notes = []

    def pick(key, *sources):
        for s in sources:
            if s.get(key) is not None:
                return s[key]
        notes.append(f"{key}: not recorded in this ticket's folder")
        return None

    aa = final.get("autoattack") if isinstance(final.get("autoattack"), dict) else {}
    threat = pick("threat_model", final, run)
    card = {
        "name": run.get("name") or meta.get("import", {}).get("name") or folder.name,
        "architecture": model.config.name + (f" (width {model.config.width:g})"
                                             if model.config.width != 1 else ""),
        "dataset": pick("dataset", head, run, meta.get("import", {})),
        "threat_model": {"linf": "Linf", "l2": "L2"}.get(threat, threat),
        "eps": pick("eps", final, {"eps": run.get("eval_eps") or run.get("eps")}),
        "clean_acc": pick("clean_acc", head, final),
        "autoattack_acc": pick("autoattack_acc", head, final),
        "number_of_examples": aa.get("examples") or final.get("examples") or None,
        "autoattack_version": aa.get("version"),
        "additional_data": False,
        "number_forward_passes": 1,
        "keep_ratio": summ["keep_ratio"],
        "kept_weights": summ["kept"],
        "masked_weights": summ["total"],
        "bits_per_kept_weight": code_bits / summ["kept"] if summ["kept"] else None,
        "masking_flags": pick("masking_flags", head),
        "source": meta.get("import") or {"run_folder": str(folder.resolve())},
    }
    if card["number_of_examples"] is None:
        notes.append("number_of_examples: no final evaluation recorded")
    if meta.get("import"):
        notes.append("imported checkpoint: no workbook evaluation yet; run 06_evaluate on the "
                     "ticket folder for clean/AutoAttack accuracy and the masking checks")
    card["notes"] = notes
    return card


# RobustBench's CIFAR boards evaluate on the whole test split: 10,000 images each, at one
# eps per threat model (its leaderboards: CIFAR-10 Linf 8/255 and L2 0.5, CIFAR-100 Linf 8/255).
ROBUSTBENCH_TEST_SPLITS = {"cifar10": 10_000, "cifar100": 10_000}
ROBUSTBENCH_EPS = {("cifar10", "linf"): 8 / 255, ("cifar10", "l2"): 0.5, ("cifar100", "linf"): 8 / 255}
ROBUSTBENCH_ENTRY = "robustbench_entry.json"
ARCHITECTURE_NAMES = {"resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50",
                      "preact_resnet18": "PreActResNet-18", "wide_resnet": "WideResNet",
                      "vgg16": "VGG-16", "mobilenet_v2": "MobileNetV2"}


def _robustbench_eps(eps: float, threat: str) -> str:
    """RobustBench writes an L-inf budget as a fraction of 255 ("8/255"), an L2 one plainly."""
    if threat == "linf" and abs(eps * 255 - round(eps * 255)) < 1e-6:
        return f"{round(eps * 255)}/255"
    return f"{eps:g}"


def robustbench_entry(ticket: Path, model: RandomNetwork) -> tuple[dict | None, str]:
    """A leaderboard entry in the shape of RobustBench's ``model_info/<dataset>/<threat>/*.json``
    (link, name, authors, additional_data, number_forward_passes, dataset, venue,
    architecture, eps, clean_acc, reported, autoattack_acc, footnote), or None and why not.

    Written only when the run's ``metrics.json`` holds a final evaluation with AutoAttack
    ``standard``, searched in fp32, at the board's eps, on the whole test split of a dataset
    RobustBench has a board for (its entries are that evaluation; anything less would read
    as one). Accuracies are percent
    strings with two decimals, as there; ``reported`` is the run's own AutoAttack number
    (nothing else was reported); ``link``, ``authors`` and ``venue`` are left for the
    submitter to fill in."""
    metrics = read_json(ticket.parent / "metrics.json")
    final = metrics.get("final") if isinstance(metrics.get("final"), dict) else {}
    run = metrics.get("config") if isinstance(metrics.get("config"), dict) else {}
    aa = final.get("autoattack") if isinstance(final.get("autoattack"), dict) else {}
    dataset = run.get("dataset")
    if not final:
        return None, "no final evaluation in the run's metrics.json"
    if aa.get("version") != "standard" or final.get("autoattack_acc") is None:
        return None, (f"AutoAttack was {aa.get('version') or 'not run'}, RobustBench's entries "
                      "are AutoAttack standard (set autoattack: standard)")
    if dataset not in ROBUSTBENCH_TEST_SPLITS:
        return None, f"RobustBench has no {dataset} board (only {', '.join(ROBUSTBENCH_TEST_SPLITS)} here)"
    # the search's arithmetic as the run recorded it (a resolved 'auto' in the final block),
    # else as configured (runs from before bf16 existed searched in fp32)
    searched = aa.get("search_precision") or run.get("autoattack_precision") or "fp32"
    if searched != "fp32":
        how = "was not recorded" if searched == "auto" else f"was {searched}"
        return None, (f"AutoAttack's search precision {how}; RobustBench's entries are fp32 "
                      "AutoAttack (set autoattack_precision: fp32)")
    threat = final.get("threat_model", "linf")
    board_eps = ROBUSTBENCH_EPS.get((dataset, threat))
    if board_eps is None or abs(float(final.get("eps") or 0) - board_eps) > 1e-6:
        boards = ", ".join(f"{t} {_robustbench_eps(e, t)}" for (d, t), e in ROBUSTBENCH_EPS.items() if d == dataset)
        return None, (f"evaluated at {threat} eps {_robustbench_eps(float(final.get('eps') or 0), threat)}, "
                      f"RobustBench's {dataset} boards are at {boards} (set eval_eps)")
    full = ROBUSTBENCH_TEST_SPLITS[dataset]
    if not final.get("examples") == aa.get("examples") == full:
        return None, (f"evaluated on {final.get('examples')} test images ({aa.get('examples')} "
                      f"with AutoAttack), RobustBench's {dataset} entries on all {full} (set "
                      "final_examples: null and autoattack_examples >= 10000)")
    summary = masking.mask_summary(model)
    cfg = model.config
    arch = ARCHITECTURE_NAMES.get(cfg.name, cfg.name) + (f" (width {cfg.width:g})" if cfg.width != 1 else "")
    autoattack = f"{100 * final['autoattack_acc']:.2f}"
    entry = {
        "link": "",
        "name": run.get("name") or ticket.parent.name,
        "authors": "",
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": dataset,
        "venue": "",
        "architecture": arch,
        "eps": _robustbench_eps(float(final["eps"]), threat),
        "clean_acc": f"{100 * final['clean_acc']:.2f}",
        "reported": autoattack,
        "autoattack_acc": autoattack,
        "footnote": (f"Subnetwork of a randomly initialized {arch} whose weights were never "
                     f"trained: {summary['kept']:,} of {summary['total']:,} masked weights kept "
                     f"(keep ratio {summary['keep_ratio']:.4g}, weight seed {cfg.seed}); "
                     f"{threat.upper() if threat == 'l2' else 'Linf'} AutoAttack standard on "
                     f"the {full:,} test images (rst-workbook)."),
    }
    return entry, f"{ROBUSTBENCH_ENTRY}: AutoAttack standard on the whole {dataset} test split"


def export_ticket(ticket: str | os.PathLike, out_dir: str | os.PathLike, images: int = 64,
                  onnx: bool = True) -> Path:
    """Export the ticket (file or folder) into ``out_dir`` (new or empty). Returns ``out_dir``."""
    path = resolve_ticket(ticket)
    payload = read_ticket(path)
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"output folder {str(out_dir.resolve())!r} exists and is not empty: "
                          "give a new folder")
    if images < 1:
        raise ExportError(f"images={images} is invalid: the check needs at least 1 image")
    model = load_ticket(path)
    plain = bake_masks(model)
    x, where = _check_images(payload, images)
    with torch.no_grad():
        reference = model(x)
    log: dict = {"ticket": str(path.resolve()), "torch": torch.__version__, "check_images": where,
                 "masks_equal_ticket": _masks_baked(plain, payload)}
    with staged_folder(out_dir, "rst-export-") as tmp:
        batch = torch.export.Dim("batch")
        try:
            program = torch.export.export(plain, (x,), dynamic_shapes=({0: batch},))
        except Exception as e:  # noqa: BLE001 - any tracing failure is one line for the user
            raise ExportError(f"torch.export cannot trace {model.config.name}: "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        torch.export.save(program, str(tmp / "model.pt2"))
        reloaded = torch.export.load(str(tmp / "model.pt2")).module()
        with torch.no_grad():
            log["torch_export"] = compare_logits(reference, reloaded(x))
        state = {k: v.detach().clone() for k, v in plain.state_dict().items()}
        torch.save(state, tmp / "state_dict.pt")
        reloaded.load_state_dict(torch.load(tmp / "state_dict.pt", weights_only=True))
        with torch.no_grad():
            log["state_dict"] = compare_logits(reference, reloaded(x))
        write_json(tmp / "architecture.json", {
            **architecture(plain), "input": {
                "shape": [None, model.config.in_channels, model.config.image_size,
                          model.config.image_size], "range": [0.0, 1.0],
                "normalization_inside": {"mean": model.config.mean, "std": model.config.std}}})
        log["onnx"] = (_export_onnx(plain, x, tmp / "model.onnx", reference) if onnx
                       else {"written": False, "note": "ONNX skipped (--no-onnx)"})
        checks = [log["torch_export"], log["state_dict"], log["onnx"].get("check", {"ok": True})]
        log["ok"] = bool(log["masks_equal_ticket"] and all(c["ok"] for c in checks))
        write_json(tmp / "export_log.json", log)
        write_text(tmp / "export_log.txt", _log_text(log))
        if not log["ok"]:
            raise ExportError(f"export of {str(path)!r} does not reproduce the ticket: "
                              + _log_text(log).replace("\n", "; "))
        write_json(tmp / "model_card.json", model_card(path, model, payload))
        entry, why = robustbench_entry(path, model)
        if entry is not None:
            write_json(tmp / ROBUSTBENCH_ENTRY, entry)
        log["robustbench"] = {"written": entry is not None, "note": why}
        write_json(tmp / "export_log.json", log)
        write_text(tmp / "export_log.txt", _log_text(log))
    return out_dir


def _masks_baked(plain: nn.Module, payload: dict) -> bool:
    """Every pruned weight of the ticket is 0 in the plain model (and kept ones are not
    forced to 0 by the export: they equal the ticket's)."""
    modules = dict(plain.named_modules())
    for name, mask in ticket_masks(payload).items():
        w = modules[name].weight
        if bool((w[~mask.expand(w.shape).reshape(w.shape)] != 0).any()):
            return False
    return True


def _log_text(log: dict) -> str:
    lines = [f"ticket: {log['ticket']}", f"check on {log['check_images']}",
             f"pruned weights are zero in the export: {log['masks_equal_ticket']}"]
    for key in ("torch_export", "state_dict"):
        c = log.get(key)
        if c:
            lines.append(f"{key}: max |logit diff| {c['max_abs_diff']:.3g} (tolerance "
                         f"{c['tolerance']:.3g}), same prediction on {c['same_predictions']}/"
                         f"{c['images']} -> {'ok' if c['ok'] else 'MISMATCH'}")
    onnx = log.get("onnx", {})
    if "check" in onnx:
        c = onnx["check"]
        lines.append(f"onnx ({c['runner']}): max |logit diff| {c['max_abs_diff']:.3g}, same "
                     f"prediction on {c['same_predictions']}/{c['images']} -> "
                     f"{'ok' if c['ok'] else 'MISMATCH'}")
    elif onnx:
        lines.append(onnx.get("note", "onnx: not written"))
    rb = log.get("robustbench")
    if rb:
        lines.append(f"RobustBench entry written: {rb['note']}" if rb["written"]
                     else f"no RobustBench entry: {rb['note']}")
    return "\n".join(lines)


__all__ = ["ExportError", "architecture", "bake_masks", "compare_logits", "export_ticket",
           "model_card", "robustbench_entry", "TicketError"]
