"""IteRand: pruned weights re-drawn during a search (dchiji-ntt/iterand's bernoulli mode), and
tickets that still rebuild their exact weights from the seed, without a weight tensor:
rebuilt in a fresh Python process and compared logit for logit."""
import json
import os
import subprocess
import sys

import pytest
import torch

from rst_lib import RunConfig, train
from rst_lib.config import ConfigError
from rst_lib.masks import masking, rerandomize
from rst_lib.models.tickets import TicketRebuildError, load_ticket, read_ticket, save_ticket
from tiny import TINY as TINY_BASE

TINY = TINY_BASE | dict(batch_size=32, final_examples=64, epochs=2, rerand_freq=3, rerand_lambda=0.5,
                       weight_init="kaiming_normal")

FRESH_PROCESS = """
import json, sys, torch
from rst_lib.models.tickets import load_ticket
model = load_ticket(sys.argv[1])
x = torch.load(sys.argv[2])
torch.save(model(x), sys.argv[3])
"""


def fresh_process_logits(ticket, x, tmp_path):
    torch.save(x, tmp_path / "x.pt")
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(ticket), str(tmp_path / "x.pt"),
                    str(tmp_path / "logits.pt")], check=True, env=env, cwd=os.getcwd())
    return torch.load(tmp_path / "logits.pt")


def test_an_event_redraws_only_candidates_about_lambda_of_them(tiny_model):
    model = tiny_model(keep_ratio=0.2, weight_init="kaiming_normal")
    before = {n: masking.raw_weight(m).clone() for n, m in masking.masked_layers(model)}
    masks = masking.weight_masks(model)
    n = rerandomize.rerandomize(model, step=7, rate=1.0, lam=0.5, seed=0,
                                weight_init="kaiming_normal", scale_fan=True)
    changed = {name: masking.raw_weight(m) != before[name] for name, m in masking.masked_layers(model)}
    assert all(not (changed[k] & masks[k]).any() for k in masks)  # kept weights untouched
    dropped = sum(int((~m).sum()) for m in masks.values())
    assert sum(int(c.sum()) for c in changed.values()) == n
    assert 0.4 * dropped < n < 0.6 * dropped  # Bernoulli(0.5) over the dropped weights
    for name, layer in masking.masked_layers(model):
        redrawn_at = masking.get_mask_param(layer).redrawn_at
        assert torch.equal(redrawn_at == 7, changed[name])
    # rerand_rate: only the lowest-|score| part of the dropped weights
    model = tiny_model(keep_ratio=0.2, weight_init="kaiming_normal")
    n_low = rerandomize.rerandomize(model, 7, 0.25, 1.0, 0, "kaiming_normal", True)
    assert n_low == pytest.approx(0.25 * dropped, abs=len(masks))


def test_events_depend_on_seed_and_step_only(tiny_model):
    a, b = tiny_model(weight_init="kaiming_normal"), tiny_model(weight_init="kaiming_normal")
    for model in (a, b):
        rerandomize.rerandomize(model, 5, 1.0, 0.5, 0, "kaiming_normal", True)
    c = tiny_model(weight_init="kaiming_normal")
    rerandomize.rerandomize(c, 6, 1.0, 0.5, 0, "kaiming_normal", True)
    wa, wb, wc = ([masking.raw_weight(m) for _, m in masking.masked_layers(x)] for x in (a, b, c))
    assert all(torch.equal(p, q) for p, q in zip(wa, wb))
    assert not all(torch.equal(p, q) for p, q in zip(wa, wc))


def test_a_ticket_with_redrawn_kept_weights_rebuilds_them_in_a_fresh_process(redrawn_model, batch,
                                                                            tmp_path):
    model = redrawn_model((3, 6, 9))  # events, then scores moved so that re-drawn weights are kept
    x, _ = batch
    logits = model(x)
    redrawn_kept = sum(int(((masking.get_mask_param(m).redrawn_at > 0) & masks).sum())
                       for (_, m), masks in zip(masking.masked_layers(model),
                                                masking.weight_masks(model).values()))
    assert redrawn_kept > 0
    save_ticket(model, tmp_path / "ticket.pt")
    payload = read_ticket(tmp_path / "ticket.pt")
    assert payload["version"] == 3 and payload["redraws"]
    assert not any(k.endswith("weight.original") or k.endswith("redrawn_at") for k in payload["state"])
    assert sum(r["index"].numel() for r in payload["redraws"].values()) <= \
        sum(int(m.sum()) for m in masking.weight_masks(model).values())
    assert torch.equal(fresh_process_logits(tmp_path / "ticket.pt", x, tmp_path), logits)
    # the recipe carries the weights: without it the seed rebuilds another network, which
    # the fingerprint refuses; without the fingerprint as well, that network loads
    payload.pop("redraws")
    payload["version"] = 2
    torch.save(payload, tmp_path / "no-recipe.pt")
    with pytest.raises(TicketRebuildError, match="does not rebuild"):
        load_ticket(tmp_path / "no-recipe.pt")
    payload.pop("fingerprint")
    torch.save(payload, tmp_path / "no-recipe.pt")
    assert not torch.equal(load_ticket(tmp_path / "no-recipe.pt")(x), logits)


def test_weights_that_the_seed_cannot_rebuild_are_stored(tiny_model, batch, tmp_path):
    model = tiny_model(keep_ratio=0.2, weight_init="kaiming_normal")
    rerandomize.rerandomize(model, 3, 1.0, 0.5, 0, "kaiming_normal", True)
    with torch.no_grad():  # e.g. weights changed by something other than an event
        for _, layer in masking.masked_layers(model):
            masking.raw_weight(layer).mul_(1.5)
    model.eval()
    x, _ = batch
    save_ticket(model, tmp_path / "t.pt")
    payload = read_ticket(tmp_path / "t.pt")
    assert "redraws" not in payload
    assert any(k.endswith("weight.original") for k in payload["state"])
    assert torch.equal(load_ticket(tmp_path / "t.pt")(x), model(x))


def test_a_search_with_iterand_redraws_and_its_ticket_rebuilds(data, tmp_path):
    cfg = RunConfig(**TINY).validate()
    result = train(cfg, tmp_path / "run", progress=False, data=data)
    layers = list(masking.masked_layers(result.model))
    steps = {int(s) for _, m in layers for s in masking.get_mask_param(m).redrawn_at.unique()}
    assert steps - {0} and all(s % 3 == 0 for s in steps)
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    result.model.eval()
    assert torch.equal(fresh_process_logits(tmp_path / "run" / "ticket.pt", x, tmp_path),
                       result.model(x))
    assert "redraws" in read_ticket(tmp_path / "run")


def test_iterand_parameters_are_checked_up_front():
    with pytest.raises(ConfigError, match="rerand_lambda"):
        RunConfig(rerand_freq=10, rerand_lambda=1.5).validate()
    with pytest.raises(ConfigError, match="rerand_freq"):
        RunConfig(rerand_freq=-1).validate()
    with pytest.raises(ConfigError, match="IteRand"):
        RunConfig(rerand_freq=10, task="dense").validate()
