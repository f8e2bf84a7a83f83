"""Adversarial transferability between tickets found in one random network.

RST (Fu et al., 2021) observes that adversarial examples transfer poorly between tickets
of different keep ratios drawn from the *same* random network; that observation is what
the random switch of :mod:`rst_lib.analysis.r2s` builds on. :func:`transfer_matrix` measures it:
entry ``[i][j]`` is the accuracy of target ``j`` on adversarial examples crafted on source
``i``. The diagonal is each model's white-box robust accuracy.

Cost: one attack per source per batch (the adversarial batch of a source is generated once
and every target is evaluated on it), plus one forward pass per target per source per batch.
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Callable, Iterable, Mapping

import torch
from torch import nn
from ..utils.progress import tqdm  # its notebook bars leave text, not a widget

from ..utils.devices import seeded_rng
from ..data.outcomes import outcome_record
from ..masks.masking import frozen_masks, masked_layers, raw_weight

NamedModels = Mapping[str, nn.Module] | Iterable[tuple[str, nn.Module]] | Iterable[nn.Module]


def named_models(models: NamedModels) -> list[tuple[str, nn.Module]]:
    """``[(name, model), ...]`` from a dict, a list of (name, model) pairs or a list of models.

    Plain models are named by their position (``"0"``, ``"1"``, ...). Raises ValueError on an
    empty collection or a repeated name.
    """
    items = list(models.items()) if isinstance(models, Mapping) else list(models)
    pairs = [(str(i), m) if isinstance(m, nn.Module) else (str(m[0]), m[1])
             for i, m in enumerate(items)]
    if not pairs:
        raise ValueError("no models given: pass at least one model")
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique, got {names}")
    for name, m in pairs:
        if not isinstance(m, nn.Module):
            raise ValueError(f"{name!r} is a {type(m).__name__}, not an nn.Module")
    return pairs


def _frozen_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Raw (unmasked) weight of every masked layer and of every other conv/linear layer."""
    out = {name: raw_weight(layer) for name, layer in masked_layers(model)}
    for name, layer in model.named_modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and name not in out:
            out[name] = raw_weight(layer)
    return out


def _same_up_to_scale(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> bool:
    """``a == c * b`` for one scalar ``c > 0`` (``c == 1`` exactly when ``a`` equals ``b``)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    norm_b = b.abs().sum()
    if norm_b == 0:
        return bool(a.abs().sum() == 0)
    c = a.abs().sum() / norm_b
    return bool(c > 0 and torch.allclose(a, c * b, rtol=rtol, atol=rtol * float(a.abs().max())))


def check_same_network(models: NamedModels, up_to_scale: bool = True) -> None:
    """Raise ValueError unless all models hold the same frozen random weights.

    Compares the raw weight of every masked layer (and of any unmasked conv/linear layer,
    e.g. a ``dense_first`` stem): same layer names, same shapes, same values. Masks and
    BatchNorm statistics are what tickets of one random network may differ in.

    ``up_to_scale`` (default) accepts a positive per-layer factor between two models: with
    ``scale_fan=True`` the weight scale depends on the keep ratio, so tickets at different
    keep ratios drawn from one seed have the same random signs/values up to a per-layer
    constant, which the BatchNorm after each layer removes. ``up_to_scale=False`` demands
    bitwise-equal weights.
    """
    pairs = named_models(models)
    ref_name, ref = pairs[0][0], _frozen_weights(pairs[0][1])
    for name, model in pairs[1:]:
        weights = _frozen_weights(model)
        if list(weights) != list(ref):
            raise ValueError(f"{name!r} and {ref_name!r} are different architectures: layers "
                             f"{list(weights)} vs {list(ref)}")
        for layer, w in weights.items():
            r = ref[layer]
            if w.shape != r.shape:
                raise ValueError(f"{name!r} and {ref_name!r} differ in the shape of {layer!r}: "
                                 f"{tuple(w.shape)} vs {tuple(r.shape)}")
            same = (_same_up_to_scale(w, r) if up_to_scale
                    else torch.equal(w.detach().cpu(), r.detach().cpu()))
            if not same:
                raise ValueError(
                    f"{name!r} and {ref_name!r} are not tickets of the same random network: "
                    f"the random weights of {layer!r} differ (different seed or weight init?)")


def transfer_matrix(models: NamedModels, loader, attack_factory: Callable[[nn.Module], Callable],
                    device: str | torch.device = "cpu", progress: bool = True,
                    require_same_network: bool = True, seed: int | None = 0,
                    images=None) -> dict:
    """Accuracy of every target model on adversarial examples crafted on every source model.

    Args:
        models: dict name -> model, or list of (name, model) pairs (or of models).
        loader: iterable of ``(x, y)`` batches; it is iterated once per source, so it must
            yield the same batches every time (no shuffling).
        attack_factory: ``model -> attack`` with ``attack(x, y) -> x_adv``, e.g.
            ``lambda m: PGD(m, eps, alpha, 20)``.
        require_same_network: call :func:`check_same_network` first (the RST experiment is
            about tickets of ONE random network); ``False`` allows any models.
        seed: the global torch RNG (attack random starts) is re-seeded with ``seed`` before
            each source's pass and restored afterwards, so row ``i`` does not depend on the
            other models and equals, for its diagonal entry, exactly the robust accuracy that
            ``torch.manual_seed(seed); evaluate(model_i, loader, device, {"adv": attack})``
            reports. ``None``: use the global RNG as it is.
        images: the :class:`~rst_lib.data.datasets.EvaluationImages` ``loader`` yields (in
            order): the result then records them (``subset``) and every entry per image
            (``outcomes``, metrics ``clean/<j>`` and ``attack/<i>/<j>``,
            :mod:`rst_lib.data.outcomes`).

    Returns:
        ``{"names": [...], "matrix": M, "clean": [...], "n": int}`` where ``M[i][j]`` is the
        accuracy of target ``j`` on examples crafted on source ``i`` (a list of lists),
        ``clean[j]`` the clean accuracy of model ``j`` and ``n`` the number of examples.
        All models are left in eval mode.
    """
    pairs = named_models(models)
    if require_same_network:
        check_same_network(pairs)
    names = [n for n, _ in pairs]
    targets = [m.eval() for _, m in pairs]
    k = len(pairs)
    correct = [[[] for _ in range(k)] for _ in range(k)]  # per image flags, per batch
    clean = [[] for _ in range(k)]
    n = 0
    with ExitStack() as stack:
        for m in targets:
            stack.enter_context(frozen_masks(m))
        for i, (name, source) in enumerate(pairs):
            attack = attack_factory(source)
            seen = 0
            with seeded_rng(seed, device):
                for x, y in tqdm(loader, desc=f"transfer from {name}", leave=False,
                                 disable=not progress):
                    x, y = x.to(device), y.to(device)
                    if i == 0:
                        for j, target in enumerate(targets):
                            clean[j].append(correct_flags(target, x, y))
                    x_adv = attack(x, y)
                    for j, target in enumerate(targets):
                        correct[i][j].append(correct_flags(target, x_adv, y))
                    seen += len(y)
            if i == 0:
                n = seen
            elif seen != n:
                raise ValueError(f"the loader yielded {seen} examples for {name!r} but {n} for "
                                 f"{names[0]!r}: it must yield the same batches every pass")
    if n == 0:
        raise ValueError("the loader yielded no examples")
    clean = [torch.cat(c) for c in clean]
    correct = [[torch.cat(c) for c in row] for row in correct]
    out = {"names": names, "matrix": [[int(c.sum()) / n for c in row] for row in correct],
           "clean": [int(c.sum()) / n for c in clean], "n": n}
    if images is not None:
        if len(images) != n:
            raise ValueError(f"images holds {len(images)} examples, the loader yielded {n}")
        out["subset"] = images.record()
        out["outcomes"] = outcome_record(images.indices, images.split_examples, images.seed, {
            **{f"clean/{j}": c for j, c in enumerate(clean)},
            **{f"attack/{i}/{j}": c for i, row in enumerate(correct) for j, c in enumerate(row)}})
    return out


@torch.no_grad()
def correct_flags(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per input of ``x``: classified as ``y``? (bool, on the CPU)"""
    return (model(x).argmax(1) == y).cpu()


def transfer_ratio_record(result: dict) -> dict:
    """The transfer ratio of a :func:`transfer_matrix` result with what it is made of: means
    over the models (``clean``, ``whitebox``: the diagonal) and over the ordered pairs
    (``transferred``), ``whitebox_gap`` = clean − white-box, and ``ratio`` =
    (clean − transferred) / (clean − white-box): the share of the white-box attack's damage
    that the transferred attack does. With no white-box damage (gap <= 0) the ratio is
    undefined: ``ratio`` is None and ``undefined`` says why (a study lists such seeds as
    dropped, never silently)."""
    matrix, clean = result["matrix"], result["clean"]
    k = len(matrix)
    if k < 2:
        return {"ratio": None, "undefined": "fewer than two models: nothing is transferred"}
    whitebox = sum(matrix[i][i] for i in range(k)) / k
    transferred = sum(matrix[i][j] for i in range(k) for j in range(k) if i != j) / (k * (k - 1))
    mean_clean = sum(clean) / k
    gap = mean_clean - whitebox
    out = {"clean": mean_clean, "whitebox": whitebox, "transferred": transferred,
           "whitebox_gap": gap, "n": result.get("n")}
    if gap > 0:
        return {**out, "ratio": (mean_clean - transferred) / gap, "undefined": None}
    return {**out, "ratio": None,
            "undefined": f"clean − white-box = {gap:+.4f} <= 0: the white-box attack did no damage to divide by"}
