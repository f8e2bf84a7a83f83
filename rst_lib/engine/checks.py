"""The gradient-masking checks (Carlini et al., 2019): signs that an attack's number
overstates robustness, measured and flagged."""
from __future__ import annotations

import os

import torch
from torch import nn
from torch.utils.data import Dataset
from ..utils.progress import tqdm  # its notebook bars leave text, not a widget
from ..utils import progress_log

from ..attacks.gradient import FGSM, PGD
from ..attacks.noise import UniformNoise
from ..config import RunConfig
from ..data.datasets import DataBundle, evaluation_images
from ..errors import ConfigError
from ..masks.masking import frozen_masks
from ..utils.devices import resolve_device, seeded_rng
from ..utils.journal import fingerprint, open_journal, unit_seed
from .evaluation import autoattack_accuracy, count_correct, input_tensors

CHECK_BATCH = 250  # default inputs per batch of a check (one progress step, one journal unit)

# The 'more steps' check runs PGD at this fraction of the evaluation's step (Carlini et al.:
# more iterations with a smaller step), so it needs steps / MORE_STEPS_STEP_FACTOR steps at
# least to reach as far as the PGD it checks.
MORE_STEPS_STEP_FACTOR = 0.5


def check_masking_parameters(steps: int, alpha: float, more_steps: int, restarts: int,
                             eval_restarts: int = 1) -> None:
    """The masking checks must be stronger than the evaluation they check, or they flag
    themselves: ``more_steps`` at half the step must travel at least as far as PGD-``steps``
    (``more_steps >= 2 x steps``), and ``restarts`` must exceed the evaluation's restarts.
    One :class:`ConfigError` line naming the parameter, before any compute."""
    need = int(round(steps / MORE_STEPS_STEP_FACTOR))
    if not isinstance(more_steps, int) or isinstance(more_steps, bool) or more_steps < need:
        raise ConfigError(
            f"masking_more_steps={more_steps!r} is invalid: the 'more steps' check runs PGD at "
            f"half the evaluation step ({alpha * MORE_STEPS_STEP_FACTOR:.4g}), so it needs at least "
            f"2 x eval_steps = {need} steps to be stronger than the evaluation's PGD-{steps} "
            f"(step {alpha:.4g}); give {need} or more")
    if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts <= max(1, eval_restarts):
        raise ConfigError(
            f"masking_restarts={restarts!r} is invalid: the 'restarts' check must run more "
            f"restarts than the evaluation ({max(1, eval_restarts)}); give "
            f"{max(1, eval_restarts) + 1} or more")


def describe_checks(eps: float, alpha: float, steps: int, more_steps: int,
                    restarts: int) -> dict[str, str]:
    """What each check of :func:`gradient_masking_report` ran, by its key (the table's rows
    and the flags name the attack, e.g. ``PGD-100, step 0.01``)."""
    return {"clean": "clean (no attack)", "fgsm": f"FGSM, eps {eps:.4g}",
            "pgd": f"PGD-{steps}, step {alpha:.4g}",
            "pgd_more_steps": f"PGD-{more_steps}, step {alpha * MORE_STEPS_STEP_FACTOR:.4g} (more steps)",
            "pgd_restarts": f"PGD-{steps}, step {alpha:.4g}, {restarts} restarts",
            "noise": f"uniform noise, eps {eps:.4g}", "autoattack": "AutoAttack"}


def gradient_masking_report(model: nn.Module, dataset: Dataset, eps: float, alpha: float,
                            threat_model: str = "linf", n_examples: int | None = 500,
                            steps: int = 20, more_steps: int = 100, restarts: int = 5,
                            eps_factors=(0.25, 0.5, 1.0, 2.0, 4.0), large_eps: float | None = None,
                            autoattack: str = "none", device: str | torch.device = "cpu",
                            seed: int = 0, progress: bool = True, early_stop: bool = False,
                            run_dir: str | os.PathLike | None = None,
                            batch_size: int = CHECK_BATCH) -> dict:
    """Measure the signs of gradient masking (Carlini et al., 2019, "On Evaluating
    Adversarial Robustness", section 5) and flag each one that shows.

    Measured on the same ``n_examples`` test inputs: clean, uniform random noise at eps,
    FGSM, PGD-``steps``, PGD-``more_steps``, PGD-``steps`` with ``restarts`` restarts, PGD at
    eps * each factor in ``eps_factors`` below ``large_eps`` and at ``large_eps`` (default 1.0:
    the whole image can be replaced, accuracy must reach ~0), in increasing eps, optionally
    AutoAttack.

    ``early_stop``: every PGD stops on an input once it is misclassified (the run's
    ``eval_early_stop``; an input counts as broken if any iterate breaks it).

    Each check runs batch by batch (``batch_size`` inputs; batch ``b`` seeded with
    ``unit_seed(seed, b)``) with a
    progress bar; with ``run_dir`` every batch's counts are recorded in
    ``run_dir/eval-state/masking_checks.json``, so a killed report resumes where it stopped
    with the numbers of an uninterrupted one.

    Returns ``{"accuracy": {...}, "eps_curve": [(eps, acc), ...], "flags": [str, ...]}``;
    an empty ``flags`` list means no sign was seen (not a proof of robustness).
    """
    check_masking_parameters(steps, alpha, more_steps, restarts)
    device = torch.device(device)
    model = model.to(device).eval()
    images = evaluation_images(dataset, n_examples, seed)  # the run's seed orders the images
    x, y = input_tensors(images)
    n = len(x)
    large_eps = large_eps if large_eps is not None else (1.0 if threat_model == "linf" else 100.0)
    settings = dict(eps=eps, alpha=alpha, threat_model=threat_model, n=n, steps=steps,
                    more_steps=more_steps, restarts=restarts, eps_factors=list(eps_factors),
                    large_eps=large_eps, autoattack=autoattack, seed=seed, early_stop=early_stop,
                    batch_size=batch_size)
    journal = open_journal(run_dir, "masking_checks", fingerprint(model, settings))

    def acc(name: str, attacks: dict) -> dict:
        """Accuracy clean and under each attack, batch by batch (one journal unit each)."""
        correct = dict.fromkeys(["clean", *attacks], 0)
        passes = model_passes(attacks)
        starts = range(0, n, batch_size)
        bar = tqdm(total=len(starts), desc=f"masking check: {name}", unit="batch",
                   leave=False, disable=not progress, initial=journal.count(f"{name}/"))

        def run(b: int, i: int) -> dict:
            xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
            with seeded_rng(unit_seed(seed, b), device):
                out = {"clean": count_correct(model, xb, yb)}
                out.update({k: count_correct(model, a(xb, yb), yb) for k, a in attacks.items()})
            bar.update(1)
            return out

        with frozen_masks(model):
            for b, i in enumerate(starts):
                fresh = not journal.done(f"{name}/{b}")
                for k, v in journal.run(f"{name}/{b}", lambda: run(b, i)).items():
                    correct[k] += v
                stage.advance(passes * len(x[i:i + batch_size]), fresh)
        bar.close()
        return {f"{k}_acc": v / n if n else 0.0 for k, v in correct.items()}

    def pgd(e, a, k, r=1):
        return PGD(model, e, a, k, r, norm=threat_model, early_stop=early_stop)

    base_attacks = {"fgsm": FGSM(model, eps, norm=threat_model), "pgd": pgd(eps, alpha, steps),
                    "pgd_more_steps": pgd(eps, alpha * MORE_STEPS_STEP_FACTOR, more_steps),
                    "pgd_restarts": pgd(eps, alpha, steps, restarts),
                    "noise": UniformNoise(model, eps, threat_model)}
    # past the whole-image eps (an L-inf eps above 1 leaves the pixel range): not on the curve;
    # at eps itself (None) the base check's PGD: the same attack, seeds and batches, same number
    curve_checks = [(f"eps={eps * f:.6g}", eps * f,
                     {"pgd": pgd(eps * f, max(alpha * f, 1e-6), steps)} if f != 1.0 else None)
                    for f in eps_factors if eps * f < large_eps]
    curve_checks.append((f"large eps={large_eps:g}", large_eps,
                         {"pgd": pgd(large_eps, large_eps / 4, steps)}))
    # the run's log: one stage, its work counted in model passes (a PGD-100 input: 101)
    stage = progress_log.Stage("masking checks", n * sum(map(model_passes, [
        base_attacks, *(attacks for _, _, attacks in curve_checks if attacks)])), unit=None)
    base = acc("base", base_attacks)
    curve = [(e, acc(name, attacks)["pgd_acc"] if attacks else base["pgd_acc"])
             for name, e, attacks in curve_checks]
    stage.finish()
    accuracy = {k.removesuffix("_acc"): v for k, v in base.items() if k.endswith("_acc")}
    if autoattack != "none":
        accuracy["autoattack"] = autoattack_accuracy(model, images, eps, threat_model, autoattack,
                                                     n_examples, device, seed, batch_size,
                                                     progress, journal)
    ran = describe_checks(eps, alpha, steps, more_steps, restarts)
    tol = 2.0 / n  # two examples: differences below this are noise
    flags = []
    if accuracy["pgd"] > accuracy["fgsm"] + tol:
        flags.append(f"{ran['pgd']} accuracy {accuracy['pgd']:.1%} is above FGSM "
                     f"{accuracy['fgsm']:.1%}: an iterative attack should never be weaker than a single step")
    for key in ("pgd_more_steps", "pgd_restarts"):
        if accuracy[key] > accuracy["pgd"] + tol:
            flags.append(f"{ran[key]} raised accuracy over {ran['pgd']} ({accuracy['pgd']:.1%} -> "
                         f"{accuracy[key]:.1%}): the attack is not converging")
    accs = [a for _, a in curve]
    if any(b > a + tol for a, b in zip(accs, accs[1:])):
        flags.append("accuracy does not fall monotonically as eps grows: "
                     + ", ".join(f"{e:.3g}: {a:.1%}" for e, a in curve))
    if accs[-1] > 0.1:
        flags.append(f"accuracy is still {accs[-1]:.1%} at eps={large_eps:g}, where an attacker "
                     "can replace the image: gradients are probably uninformative")
    if accuracy["noise"] < accuracy["pgd"] - tol:
        flags.append(f"random noise ({accuracy['noise']:.1%}) hurts more than PGD "
                     f"({accuracy['pgd']:.1%})")
    if "autoattack" in accuracy and accuracy["autoattack"] < accuracy["pgd"] - 0.05:
        flags.append(f"AutoAttack ({accuracy['autoattack']:.1%}) is far below PGD "
                     f"({accuracy['pgd']:.1%}): PGD overestimates robustness here")
    return {"accuracy": accuracy, "ran": ran, "eps_curve": curve, "flags": flags, "n_examples": n,
            "subset": images.record(), "eps": eps, "threat_model": threat_model}


def model_passes(attacks: dict) -> int:
    """Forward(-backward) passes per input of a check: the clean one, and per attack its
    steps times restarts and the final forward (the rough cost, for an estimate of time)."""
    return 1 + sum(getattr(a, "steps", 1) * getattr(a, "restarts", 1) + 1 for a in attacks.values())


def final_checks(model: nn.Module, cfg: RunConfig, data: DataBundle, final: dict,
                 n_examples: int | None = 500, more_steps: int = 100, restarts: int = 5,
                 progress: bool = True, run_dir: str | os.PathLike | None = None) -> dict:
    """The gradient-masking checks of a final ticket (:func:`gradient_masking_report` on
    ``n_examples`` test inputs, with the run's evaluation attack), plus the AutoAttack
    check on the final numbers themselves: AutoAttack far below PGD on the same test
    examples (``final``, from :func:`final_evaluation`) means PGD overstates robustness.
    ``run_dir``: record each batch there, so a killed check resumes (see above). Batches of
    ``cfg.eval_batch_size``, as the final evaluation's (the batch this CPU runs fastest)."""
    check_masking_parameters(cfg.eval_steps, cfg.eval_alpha_value, more_steps, restarts,
                             cfg.eval_restarts)
    report = gradient_masking_report(
        model, data.test, cfg.eval_eps_value, cfg.eval_alpha_value, cfg.threat_model,
        n_examples, cfg.eval_steps, more_steps, restarts, device=resolve_device(cfg.device),
        seed=cfg.seed, progress=progress, early_stop=cfg.eval_early_stop, run_dir=run_dir,
        batch_size=cfg.eval_batch_size)
    aa, pgd = final.get("autoattack_acc"), final.get("pgd_acc_on_autoattack_examples")
    if aa is not None and aa < pgd - 0.05:
        report["flags"].append(
            f"AutoAttack ({aa:.1%}) is far below {final['pgd']} ({pgd:.1%}) on the same "
            f"{final['autoattack']['examples']} test inputs: PGD overestimates robustness here")
    return report
