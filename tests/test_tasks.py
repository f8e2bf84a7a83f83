"""engine.tasks: what each task trains (search, the three finetunes, dense and BNN baselines, searches inside trained weights), and its checks before compute."""
import math

import pytest
import torch
from torch import nn

from rst_lib import RunConfig, load_ticket, train
from rst_lib.masks import masking
from rst_lib.masks.masking import get_mask_param
from rst_lib.engine.tasks import build_task
from rst_lib.config import ConfigError
from rst_lib.engine.tasks import check_run
from rst_lib import create_model
from rst_lib.engine.tasks import load_dense_weights
from rst_lib.models.tickets import TicketError
from tiny import TINY, TINY_256, TINY_512


def _raw(model):
    return {n: masking.raw_weight(m).detach().clone() for n, m in masking.masked_layers(model)}


@pytest.fixture(scope="module")
def ticket(tmp_path_factory, data):
    run_dir = tmp_path_factory.mktemp("search")
    train(RunConfig(**TINY).validate(), run_dir, progress=False, data=data)
    return run_dir / "ticket.pt"


def test_finetune_inherited_changes_weights_only(ticket, data):
    before = load_ticket(ticket)
    cfg = RunConfig(**{**TINY, "task": "finetune", "ticket": str(ticket), "lr": 0.01}).validate()
    after = train(cfg, None, progress=False, data=data).model
    masks_before, masks_after = masking.get_masks(before), masking.get_masks(after)
    assert all(torch.equal(masks_before[k], masks_after[k]) for k in masks_before)  # mask fixed
    w0, w1 = _raw(before), _raw(after)
    for name, mask in masks_before.items():
        assert (w0[name] != w1[name])[mask].any()  # kept weights trained
    assert all(not get_mask_param(m).scores.requires_grad for _, m in masking.masked_layers(after))
    x = data.test.tensors[0][:8]
    with torch.no_grad():
        assert not torch.equal(before(x), after.eval()(x))


def test_finetune_reinit_redraws_weights(ticket, data):
    original = load_ticket(ticket)
    cfg = RunConfig(**{**TINY, "task": "finetune_reinit", "ticket": str(ticket)}).validate()
    _, reinit = build_task(cfg, data)
    assert all(torch.equal(a, b) for a, b in zip(masking.get_masks(original).values(),
                                                  masking.get_masks(reinit).values()))
    w0, w1 = _raw(original), _raw(reinit)
    assert all(not torch.equal(w0[k], w1[k]) for k in w0)  # weights re-drawn
    assert all(masking.raw_weight(m).requires_grad and
               not get_mask_param(m).scores.requires_grad for _, m in masking.masked_layers(reinit))


def test_finetune_full_starts_from_the_ticket(ticket, data):
    original = load_ticket(ticket)
    cfg = RunConfig(**{**TINY, "task": "finetune_full", "ticket": str(ticket)}).validate()
    _, full = build_task(cfg, data)
    assert not list(masking.masked_layers(full))
    x = data.test.tensors[0][:16]
    with torch.no_grad():
        assert torch.allclose(original(x), full.eval()(x), atol=1e-5)  # same function at start
    assert all(p.requires_grad for p in full.parameters())


def test_dense_and_bnn_baselines(data):
    # BNN latent weights must be able to cross zero: a signed-constant start with a small lr
    # never flips a sign (the loss stayed flat), kaiming-normal latents at lr 0.1 do.
    for task, lr, init in (("dense", 0.01, "signed_constant"), ("bnn", 0.1, "kaiming_normal")):
        cfg = RunConfig(**{**TINY, "task": task, "lr": lr, "epochs": 3, "weight_init": init,
                           "train_examples": 512}).validate()
        _, start = build_task(cfg, data)
        w0 = [p.detach().clone() for p in start.parameters()]
        result = train(cfg, None, progress=False, data=data)
        assert not list(masking.masked_layers(result.model))
        assert all(not torch.equal(a, b) for a, b in zip(w0, result.model.parameters()))
        first, last = result.history[0], result.history[-1]
        assert last["train_loss"] < first["train_loss"] - 0.2
    layer = result.model.body.features[0]
    assert set(layer.weight.unique().tolist()) == {-1.0, 1.0}  # binary weights in the forward
    assert not set(layer.parametrizations.weight.original.unique().tolist()) <= {-1.0, 1.0}


def test_robust_trained_ticket_searches_inside_trained_weights(tmp_path, data):
    dense_dir = tmp_path / "dense"
    train(RunConfig(**{**TINY, "task": "dense", "lr": 0.01}).validate(), dense_dir,
           progress=False, data=data)
    cfg = RunConfig(**{**TINY, "pretrained": str(dense_dir / "ticket.pt")}).validate()
    _, model = build_task(cfg, data)
    trained = load_ticket(dense_dir / "ticket.pt")
    first = next(m for _, m in masking.masked_layers(model))
    assert torch.equal(masking.raw_weight(first), trained.body.features[0].weight)
    found = train(cfg, None, progress=False, data=data).model
    for (_, a), (_, b) in zip(masking.masked_layers(model), masking.masked_layers(found)):
        assert torch.equal(masking.raw_weight(a), masking.raw_weight(b))  # trained weights frozen
        assert not torch.equal(get_mask_param(a).scores, get_mask_param(b).scores)


def test_finetune_reinit_draws_kaiming_normal_by_default(tmp_path, data):
    rst = {**TINY_256, "scale_fan": False}  # RST's configs leave --scale-fan off
    ticket = train(RunConfig(**rst, epochs=1).validate(), tmp_path / "t", progress=False,
                    data=data).ticket_path
    cfg = RunConfig(**{**rst, "task": "finetune_reinit", "ticket": str(ticket)}).validate()
    assert cfg.finetune_init == "kaiming_normal"
    _, reinit = build_task(cfg, data)
    _, same = build_task(cfg.replace(finetune_init="same"), data)
    for (name, a), (_, b) in zip(masking.masked_layers(reinit), masking.masked_layers(same)):
        w, w_same = masking.raw_weight(a), masking.raw_weight(b)
        fan = w[0].numel()
        assert w.unique().numel() >= 0.99 * w.numel()  # Gaussian draws, not +-constant
        if w.numel() >= 500:
            assert w.std().item() == pytest.approx(math.sqrt(2 / fan), rel=0.2)  # N(0, 2/fan_in)
        assert w_same.abs().unique().numel() == 1  # the ticket's signed constant scheme
    with pytest.raises(Exception, match="finetune_init"):
        cfg.replace(finetune_init="orthogonal")


def test_finetune_ticket_of_another_architecture_is_refused_before_compute(tmp_path, data):
    run = tmp_path / "run"
    train(RunConfig(**TINY_512, epochs=1).validate(), run, progress=False, data=data)
    with pytest.raises(ConfigError, match="does not match the model .*ticket has 'conv2', "
                                          "parameters say 'resnet18'"):
        check_run(RunConfig(**{**TINY_512, "model": "resnet18", "task": "finetune",
                               "ticket": str(run / "ticket.pt")}))  # train's first step


def test_load_dense_weights_from_a_plain_state_dict(tmp_path):
    dense = create_model("conv2", 10, 1, image_size=28, width=0.125, keep_ratio=None)
    with torch.no_grad():
        for p in dense.parameters():
            p.add_(1.0)
    torch.save({"state_dict": {f"module.{k}": v for k, v in dense.state_dict().items()}},
               tmp_path / "dense.pt")  # as DataParallel training scripts save them
    masked = create_model("conv2", 10, 1, image_size=28, width=0.125, keep_ratio=0.1)
    assert load_dense_weights(masked, tmp_path / "dense.pt") == 5  # 2 convs + 3 linears
    layers = [m for m in dense.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for (_, m), d in zip(masking.masked_layers(masked), layers):
        assert torch.equal(masking.raw_weight(m), d.weight)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(TicketError, match="neither a ticket nor a plain state_dict"):
        load_dense_weights(masked, tmp_path / "junk.pt")
    other = create_model("conv4", 10, 1, image_size=28, width=0.125, keep_ratio=None)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(TicketError, match="different architecture"):
        load_dense_weights(masked, tmp_path / "other.pt")
