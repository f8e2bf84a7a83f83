"""What each ``task`` trains: the model it starts from, its trainable tensors, their
optimizer and the training attack."""
from __future__ import annotations

import dataclasses
import os

import torch
from torch import nn

from ..masks import masking
from ..attacks.gradient import make_attack
from ..config import ConfigError, RunConfig
from ..data.datasets import DataBundle, DataShape, dataset_shape, load_dataset, normalization_stats
from ..utils.devices import resolve_device
from .auto_precision import needs_measurement, resolve_run_precisions
from ..utils.files import TORCH_LOAD_ERRORS
from ..models.registry import ModelConfig, build_model, check_run_model, conv_linear_layers
from ..models.tickets import TicketError, check_run_ticket, load_ticket, read_ticket


def check_run(cfg: RunConfig) -> RunConfig:
    """Every check of a run's parameters before any compute: the schema's own
    (:meth:`RunConfig.validate`), then the ones that need the layers above it: the model
    can be built with these settings, a finetune's ticket is readable and of this
    architecture (the ticket file is read here, once). The entry points call it:
    :func:`~rst_lib.engine.training.train`, the notebook-parameter validation of batch
    runs and sweeps."""
    cfg.validate()
    check_run_model(cfg)
    if cfg.keep_scope == "global" and cfg.keep_min_fraction and cfg.task not in ("dense", "bnn"):
        # the floors against the budget of this data's network, by the rule the mask applies
        # (GlobalRanking.check_floors): built on the meta device, no value drawn
        build_model(run_model_config(cfg, dataset_shape(cfg.dataset, cfg.data_dir)),
                    structure_only=True)
    check_run_ticket(cfg)
    return cfg


def load_dense_weights(model: nn.Module, path: str | os.PathLike) -> int:
    """Copy trained conv/linear weights (a ticket of a dense run, or a plain state_dict
    saved with torch.save) into ``model``'s frozen weights: robust *trained* tickets are then
    searched inside a trained network (RST's RTT). Returns the number of layers loaded."""
    try:
        state = read_ticket(path)["state"]
    except TicketError:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except TORCH_LOAD_ERRORS as e:
            raise TicketError(f"pretrained={str(path)!r} is neither a ticket nor a plain "
                              f"state_dict of tensors ({type(e).__name__})") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise TicketError(f"pretrained={str(path)!r} holds no state_dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    loaded = 0
    for name, layer in conv_linear_layers(model):
        tensor = state.get(f"{name}.weight", state.get(f"{name}.parametrizations.weight.original"))
        if tensor is None:
            continue
        target = masking.raw_weight(layer)
        if tensor.shape != target.shape:
            raise TicketError(f"pretrained weight {name} has shape {tuple(tensor.shape)}, the "
                              f"model needs {tuple(target.shape)}: different architecture?")
        with torch.no_grad():
            target.copy_(tensor)
        loaded += 1
    if loaded == 0:
        raise TicketError(f"pretrained={str(path)!r}: no conv/linear weight matches the model")
    return loaded


def load_run_data(cfg: RunConfig) -> DataBundle:
    """The dataset ``cfg`` names, loaded as its data parameters say (cache included)."""
    return load_dataset(cfg.dataset, cfg.data_dir, cfg.download, cfg.augment,
                        cache=cfg.data_cache, cache_dir=cfg.data_cache_dir)


def run_model_config(cfg: RunConfig, data: DataBundle | DataShape) -> ModelConfig:
    """The network a run builds for data of this shape (a loaded :class:`DataBundle`, or the
    :class:`DataShape` known without the data), normalized as ``cfg.normalization`` says."""
    mean, std = normalization_stats(cfg.normalization, cfg.dataset, data)
    return ModelConfig.from_run(cfg, data.num_classes, data.in_channels, data.image_size, mean, std)


def describe_model(cfg: RunConfig) -> dict:
    """The network a search with ``cfg`` builds, without its data: ``{"config": the resolved
    parameters, "network": its ModelConfig, "layers": [{"name", "shape", "weights", "kept",
    "keep_ratio"}] per masked layer in module order, "total_weights", "total_kept"}``.

    The same :func:`run_model_config` and :func:`build_model` as a run, with
    ``structure_only`` (no value drawn): a 21 M-weight ResNet34 in a fraction of a second.
    With ``keep_scope: global`` the per-layer counts depend on the scores: the network is
    then built with its values and the counts are those of the initial scores (a search moves
    them; only the total is fixed), said in ``"note"``; each layer's allocated share of the
    budget is its ``"budget"``. ``"precision"``: how a run on this machine resolves
    ``precision`` and ``autoattack_precision`` (:func:`resolve_run_precisions`: from the cache,
    or measured on the network built for real).
    """
    mcfg = run_model_config(cfg, dataset_shape(cfg.dataset, cfg.data_dir))
    if cfg.task in ("dense", "bnn"):
        mcfg = dataclasses.replace(mcfg, keep_ratio=None, bnn=cfg.task == "bnn")
    ranked = mcfg.keep_scope == "global" and mcfg.keep_ratio is not None
    model = build_model(mcfg, structure_only=not ranked)
    summary = masking.mask_summary(model)
    layers = []
    for name, layer in masking.masked_layers(model):
        row, p = summary["layers"][name], masking.get_mask_param(layer)
        layers.append({"name": name, "shape": list(masking.raw_weight(layer).shape),
                       "weights": row["total"], "kept": row["kept"],
                       "keep_ratio": row["keep_ratio"] if ranked else p.keep_ratio})
        if ranked:
            layers[-1]["budget"] = p.budget * (row["total"] // p.scores.numel())
    device = resolve_device(cfg.device)  # how this machine resolves precision: auto (a run's choice)
    timed = build_model(mcfg).to(device) if needs_measurement(cfg, device) else model
    _, precision = resolve_run_precisions(cfg, timed, (mcfg.in_channels, mcfg.image_size,
                                                       mcfg.image_size), device)
    described = {"config": cfg.to_dict(), "network": mcfg.to_dict(), "layers": layers,
                 "total_weights": summary["total"], "total_kept": summary["kept"],
                 "precision": precision}
    if ranked:
        floor = (f"; each layer keeps at least {mcfg.keep_min_fraction:g} of its scores"
                 if mcfg.keep_min_fraction else "; no floor: a layer may be emptied")
        if cfg.keep_ratio_schedule == "biprop":
            floor += (f"; biprop's ramp: epoch 1 keeps 0.5 of the weights, epoch "
                      f"{cfg.keep_ratio_steps + 1} on keeps this total")
        described["note"] = (f"keep_scope global: the per-layer counts are those of the initial "
                             f"scores (seed {mcfg.seed}); a search moves them, only the total "
                             f"{summary['kept']:,} is fixed{floor}")
    return described


def build_task(cfg: RunConfig, data: DataBundle | None = None, device=None):
    """Data and the model ``cfg.task`` trains (shared by the trainers and the controls).

    * ``search``: masked random network (weights from ``pretrained`` if given); scores train.
    * ``finetune``: the ticket's mask fixed, its inherited weights train.
    * ``finetune_reinit``: the ticket's mask fixed, weights re-drawn with ``finetune_init``
      (RST's ``--ft_init``, default ``kaiming_normal``; ``same``: the ticket's own scheme)
      from the ticket's seed + 1 (a different random network), then trained.
    * ``finetune_full``: the ticket's masked weights as a dense network, all weights train.
    * ``dense``: the dense network, all weights train (adversarial training baseline).
    * ``bnn``: dense binary weights (sign of trained latent weights; RBRN's BNN baseline).
    """
    data = data or load_run_data(cfg)
    device = device or resolve_device(cfg.device)
    mcfg = run_model_config(cfg, data)
    if cfg.task in ("dense", "bnn"):
        mcfg = dataclasses.replace(mcfg, keep_ratio=None, bnn=cfg.task == "bnn")
        return data, build_model(mcfg).to(device)
    if cfg.task == "search":
        model = build_model(mcfg)
        if cfg.pretrained:
            load_dense_weights(model, cfg.pretrained)
        return data, model.to(device)
    ticket = load_ticket(cfg.ticket)
    t = ticket.config
    if (t.num_classes, t.in_channels) != (data.num_classes, data.in_channels):
        raise ConfigError(f"ticket {cfg.ticket!r} was found for {t.num_classes} classes and "
                          f"{t.in_channels} channels; {cfg.dataset} has {data.num_classes} and "
                          f"{data.in_channels}")
    if cfg.task == "finetune_full":
        model = build_model(dataclasses.replace(t, keep_ratio=None))
        with torch.no_grad():
            for (_, src), (_, dst) in zip(conv_linear_layers(ticket), conv_linear_layers(model)):
                masking.raw_weight(dst).copy_(src.weight)  # masked weights, now all trainable
        model.load_state_dict({k: v for k, v in ticket.state_dict().items()
                               if "running_" in k or "num_batches" in k}, strict=False)
        return data, model.to(device)
    if cfg.task == "finetune_reinit":
        masks = masking.get_masks(ticket)
        init = t.weight_init if cfg.finetune_init == "same" else cfg.finetune_init
        ticket = build_model(dataclasses.replace(t, seed=t.seed + 1, weight_init=init))
        masking.set_masks(ticket, masks)
    for _, layer in masking.masked_layers(ticket):
        masking.get_mask_param(layer).scores.requires_grad_(False)  # the mask stays fixed
        masking.raw_weight(layer).requires_grad_(True)
    return data, ticket.train().to(device)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(params, cfg: RunConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_train_attack(model: nn.Module, cfg: RunConfig, n_examples: int):
    """The inner attack of ``cfg.train_attack`` (None for ``free`` and ``none``).

    BatchNorm mode (``attack_train_mode`` None): train mode for PGD / FGSM as both seeds do,
    eval mode for TRADES (RBRN's ``TradesKL`` and the TRADES code call ``model.eval()``)."""
    if cfg.train_attack in ("free", "none"):
        return None
    train_mode = (cfg.train_attack != "trades" if cfg.attack_train_mode is None
                  else cfg.attack_train_mode)
    return make_attack(cfg.train_attack, model, cfg.eps, cfg.alpha, cfg.steps,
                       eval_mode=not train_mode, norm=cfg.threat_model, n_examples=n_examples)
