"""Tickets: a found subnetwork in a few bytes per kept weight.

A ticket stores what cannot be regenerated: the model config (which includes the seed of
the random weights), the masks, and every state entry that differs from the freshly
initialized network (BatchNorm running statistics after a search; the weights too after a
finetune). Scores are not stored: the mask is the result.

Each mask is stored in the smaller of two exact encodings: bits packed 8 per byte (1 bit per
weight), or the Elias-Fano code of the positions of the kept (or, above one half, of the
pruned) weights: about ``2 + log2(1 / keep_ratio)`` bits per kept weight, i.e. 0.32 bits per
weight at a keep ratio of 0.05, close to the n*H(p) bits of information in such a mask.

A search with IteRand (``rerand_freq``) re-draws weights as it goes; its ticket (version 3)
stores, instead of those weights, for each kept weight the event that last re-drew it
(:func:`~rst_lib.masks.rerandomize.redraw_recipe`, checked at save time by rebuilding), and
loading re-draws them from the seed. Pruned weights are not rebuilt: the mask zeroes them.

Loading rebuilds the network from its config, regenerates the random weights from the
seed, applies the masks and the stored state, and therefore reproduces the saved model's
outputs exactly; it checks that it does: a ticket stores a fingerprint of the weights it
leaves to the seed (:mod:`~rst_lib.models.fingerprint`), and one that this torch and rst_lib
no longer rebuild is refused (:class:`TicketRebuildError`). Files are read with ``torch.load(weights_only=True)``: only tensors and
plain containers are accepted, never arbitrary pickled objects.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from ..masks import masking, rerandomize
from ..config import RunConfig
from ..errors import ConfigError, warn_once
from ..utils.files import TORCH_LOAD_ERRORS, model_file, torch_save
from ..masks.codec import decode_mask, encode_mask, unpack_bits
from .fingerprint import differing_entries, entry_label, fingerprint
from .registry import ModelConfig, RandomNetwork, build_model

FORMAT = "rst-ticket"
VERSION = 2          # 2: masks as {"encoding": ...} dicts (bits or Elias-Fano)
REDRAWN_VERSION = 3  # 3: version 2 + "redraws", the recipe of IteRand's re-drawn kept weights
READABLE = (1, 2, 3)  # 1: masks as packed bits only


class TicketError(ConfigError):
    """A ticket file is not a valid ticket (missing, empty, truncated, not a ticket, or
    unsafe). A bad ticket is a bad parameter: it is reported before any compute."""


class TicketRebuildError(TicketError):
    """A ticket whose seed no longer rebuilds the network it was saved from (another torch
    random generator or weight init): loading it would give another network."""


def _is_regenerated_key(key: str) -> bool:
    # scores: the mask is the result; redrawn_at: the ticket's "redraws" recipe says it
    return key.endswith(".scores") or key.endswith(".redrawn_at")


def _redraw_recipes(model: RandomNetwork, reference: RandomNetwork) -> dict[str, dict]:
    """The layers whose kept weights the seed rebuilds after IteRand's re-draws: name ->
    recipe (``{}`` when no kept weight was re-drawn). A layer qualifies only if rebuilding
    ``reference`` (a fresh build, changed in place here) from the recipe gives exactly its
    kept weights: weights trained or loaded from elsewhere are stored as they are."""
    cfg = model.config
    recipes = {}
    weight_masks = masking.weight_masks(model)
    fresh_layers = dict(masking.masked_layers(reference))
    for index, (name, layer) in enumerate(masking.masked_layers(model)):
        weight = masking.raw_weight(layer)
        if masking.get_mask_param(layer).redrawn_at is None or weight.requires_grad:
            continue
        kept = weight_masks[name].flatten().cpu()
        recipe = rerandomize.redraw_recipe(layer, kept)
        if recipe is not None:
            rerandomize.apply_redraw_recipe(fresh_layers[name], index, recipe, kept, cfg.seed,
                                            cfg.weight_init, cfg.scale_fan)
        rebuilt = masking.raw_weight(fresh_layers[name]).flatten()[kept]
        if torch.equal(rebuilt, weight.detach().cpu().flatten()[kept]):
            recipes[name] = recipe or {}
    return recipes


def ticket_payload(model: RandomNetwork, meta: dict | None = None) -> dict:
    cfg: ModelConfig = model.config
    fresh = build_model(cfg)
    reference = fresh.state_dict()
    state = {}
    for key, value in model.state_dict().items():
        if _is_regenerated_key(key):
            continue
        value = value.detach().cpu()
        ref = reference.get(key)
        if ref is not None and ref.shape == value.shape and torch.equal(ref, value):
            continue  # regenerated from the seed on load
        state[key] = value.clone()
    recipes = _redraw_recipes(model, fresh)  # after the loop: it re-draws `fresh` in place
    for name in recipes:
        state.pop(f"{name}.parametrizations.weight.original", None)
    masks = masking.get_masks(model)
    seeded = [k for k in model.state_dict() if k not in state and not _is_regenerated_key(k)]
    payload = {
        "format": FORMAT,
        "version": REDRAWN_VERSION if recipes else VERSION,
        "model_config": json.dumps(cfg.to_dict()),
        "masks": {name: encode_mask(m) for name, m in masks.items()},
        "state": state,
        "meta": json.dumps(meta or {}),
        "fingerprint": fingerprint(model, seeded),  # of what loading regenerates
    }
    if recipes:
        payload["redraws"] = {name: r for name, r in recipes.items() if r}
    return payload


def save_ticket(model: RandomNetwork, path: str | os.PathLike, meta: dict | None = None) -> Path:
    """Save ``model`` as a ticket at ``path`` (atomically). ``meta``: JSON-able extras."""
    return torch_save(ticket_payload(model, meta), path)


def resolve_ticket(path: str | os.PathLike) -> Path:
    """The ticket file of ``path``: the file itself, or ``ticket.pt`` in a run folder."""
    try:
        return model_file(path, ("ticket.pt",))
    except FileNotFoundError as e:
        raise TicketError(f"{e} (give a ticket file or the run folder of a "
                          "search)") from None


def _unreadable(path: Path, error: BaseException) -> TicketError:
    """Why a file is not a loadable ticket, said for what it is."""
    head = path.read_bytes()[:4] if path.stat().st_size else b""
    where = repr(str(path.resolve()))
    if not head:
        return TicketError(f"{where} is empty (0 bytes): the run that wrote it was probably "
                           "killed while saving; use its run folder's other ticket or search again")
    if isinstance(error, pickle.UnpicklingError) and head.startswith(b"PK"):
        return TicketError(f"{where} was refused: it holds Python objects that could run code "
                           "when loaded, and a ticket holds only tensors. Load only tickets that "
                           "rst-workbook wrote")
    if head[:1] in (b"{", b"["):
        return TicketError(f"{where} is a JSON file, not a ticket (tickets are ticket.pt files)")
    if head.startswith(b"PK"):
        return TicketError(f"{where} is truncated or corrupted (an incomplete archive); "
                           "copy it again or use another ticket")
    return TicketError(f"{where} is not a ticket: it is not a PyTorch archive written by "
                       "rst-workbook")


def read_ticket(path: str | os.PathLike) -> dict:
    """Load and check a ticket file's payload (a ticket file or a run folder) without
    building the model."""
    path = resolve_ticket(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except TORCH_LOAD_ERRORS as e:
        raise _unreadable(path, e) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise TicketError(f"{str(path.resolve())!r} is a PyTorch file but not an rst-workbook "
                          "ticket (no ticket format field): a checkpoint or state dict?")
    if payload.get("version") not in READABLE:
        raise TicketError(f"{str(path.resolve())!r} has ticket version {payload.get('version')!r}; "
                          f"this rst_lib reads versions {', '.join(map(str, READABLE))}")
    return payload


def load_ticket(path: str | os.PathLike, device: str | torch.device = "cpu",
                expect: ModelConfig | None = None) -> RandomNetwork:
    """Rebuild the ticket's network (in eval mode) from a ticket file or a run folder.
    ``expect``: refuse other architectures."""
    payload = read_ticket(path)
    cfg = ModelConfig.from_dict(json.loads(payload["model_config"]))
    if expect is not None:
        keys = ("name", "num_classes", "in_channels", "image_size", "width")
        diff = {k: (getattr(cfg, k), getattr(expect, k)) for k in keys
                if getattr(cfg, k) != getattr(expect, k)}
        if diff:
            raise TicketError(f"ticket {str(path)!r} does not match the model: "
                              + ", ".join(f"{k} is {a!r} in the ticket but {b!r} expected"
                                          for k, (a, b) in diff.items()))
    model = build_model(cfg)
    try:
        masks = ticket_masks(payload)
        redraws = payload.get("redraws", {})
        for index, (name, layer) in enumerate(masking.masked_layers(model)):
            if name in redraws:
                kept = masks[name].expand(masking.raw_weight(layer).shape).flatten()
                rerandomize.apply_redraw_recipe(layer, index, redraws[name], kept, cfg.seed,
                                                cfg.weight_init, cfg.scale_fan)
        masking.set_masks(model, masks)
    except (ValueError, RuntimeError, IndexError, KeyError, TypeError) as e:
        raise TicketError(f"ticket {str(path)!r}: {e}") from None
    result = model.load_state_dict(payload["state"], strict=False)
    unexpected = list(result.unexpected_keys)
    if unexpected:
        raise TicketError(f"ticket {str(path)!r} has state for unknown entries {unexpected[:5]}")
    check_rebuilt(model, payload, path)
    return model.to(device).eval()


def check_rebuilt(model: RandomNetwork, payload: dict, path: str | os.PathLike) -> None:
    """Refuse (one line) a ticket whose fingerprint the rebuilt ``model`` does not match;
    a ticket written before fingerprints loads with one warning line."""
    where = str(resolve_ticket(path).resolve())
    saved = payload.get("fingerprint")
    if saved is None:
        warn_once(f"ticket {where!r} has no fingerprint (written before rst_lib stored one): "
                  "nothing checks that this torch and rst_lib rebuild its weights as saved")
        return
    seeded = [k for k in model.state_dict() if k not in payload["state"]
              and not _is_regenerated_key(k)]
    differ = differing_entries(saved, model, seeded)
    if differ is None:
        warn_once(f"ticket {where!r} has a fingerprint of another scheme "
                  f"({saved.get('scheme')!r}) that this rst_lib cannot check")
    elif differ:
        names = ", ".join(map(entry_label, differ[:3])) + (
            f" and {len(differ) - 3} more" if len(differ) > 3 else "")
        raise TicketRebuildError(
            f"ticket {where!r} does not rebuild the network it was saved from: the seed now "
            f"draws other weights for {names} (of {len(seeded)} entries it regenerates; saved "
            f"with torch {saved.get('torch')}, loading with torch {torch.__version__}); load it "
            "with the torch and rst_lib that wrote it, or search it again")


def ticket_masks(payload: dict) -> dict[str, torch.Tensor]:
    """The boolean masks stored in a ticket payload (any readable version)."""
    if payload.get("version") == 1:
        return {name: unpack_bits(bits, payload["mask_shapes"][name])
                for name, bits in payload["masks"].items()}
    return {name: decode_mask(code) for name, code in payload["masks"].items()}


def ticket_meta(path: str | os.PathLike) -> dict:
    payload = read_ticket(path)
    return {"model_config": json.loads(payload["model_config"]), **json.loads(payload["meta"])}


def checkpoint_size_bytes(model: nn.Module) -> int:
    """Bytes of a plain fp32 checkpoint of the whole state (weights + scores + buffers)."""
    return sum(v.numel() * v.element_size() for v in model.state_dict().values())


def check_run_ticket(cfg: RunConfig) -> None:
    """A finetune ticket is readable and of the configured architecture (before compute;
    it reads the ticket file, so the entry points call it once: :func:`check_run`)."""
    if not (cfg.ticket and cfg.task.startswith("finetune")):
        return
    t = ticket_meta(cfg.ticket)["model_config"]
    diff = [f"{k}: ticket has {t[k]!r}, parameters say {getattr(cfg, f)!r}"
            for k, f in (("name", "model"), ("width", "width")) if t.get(k) != getattr(cfg, f)]
    if diff:
        raise ConfigError(f"ticket={cfg.ticket!r} does not match the model (" + "; ".join(diff) + ")")
