"""engine.schedules: the LR policies, the eps warm-up, keep-ratio schedules (geometric, RBRN's stages) and RST's discard schedule."""
import math

import pytest

from rst_lib import RunConfig
from rst_lib.engine.schedules import eps_factor
from rst_lib.engine.schedules import lr_factor
from rst_lib import train
from rst_lib.config import ConfigError
from rst_lib.engine.schedules import scheduled_keep_ratios
from rst_lib.engine.schedules import (at_target_sparsity, discard_fraction, keep_ratios_at,
                                      staged_keep_ratios)
from tiny import TINY, TINY_256


def test_eps_warmup_ramps_linearly_from_zero():
    cfg = RunConfig(eps_warmup_epochs=4, epochs=10).validate()
    assert [eps_factor(cfg, e) for e in (0, 1, 2, 3.5, 4, 9)] == [0, 0.25, 0.5, 0.875, 1, 1]
    assert eps_factor(cfg.replace(eps_warmup_epochs=0), 0) == 1.0


def test_lr_schedules():
    cfg = RunConfig(epochs=10, lr_schedule="cosine").validate()
    assert lr_factor(cfg, 0) == 1.0 and abs(lr_factor(cfg, 10)) < 1e-12
    assert abs(lr_factor(cfg, 5) - 0.5) < 1e-12
    step = RunConfig(epochs=10, lr_schedule="step", lr_milestones=[3, 6], lr_gamma=0.1).validate()
    assert [round(lr_factor(step, e), 6) for e in (0, 3, 5.9, 6)] == [1, 0.1, 0.1, 0.01]


def test_lr_policies():
    base = dict(epochs=8)
    piece = RunConfig(**base, lr_schedule="cifar_piecewise").validate()
    assert [lr_factor(piece, e) for e in (0, 3.9, 4, 6)] == pytest.approx([1, 1, 0.1, 0.01])
    multi = RunConfig(**base, lr_schedule="multistep", lr_milestones=[2, 5], lr_gamma=0.5).validate()
    assert [lr_factor(multi, e) for e in (1, 2, 5)] == pytest.approx([1, 0.5, 0.25])
    warm = RunConfig(**base, lr_schedule="constant", warmup_epochs=2).validate()
    assert [lr_factor(warm, e) for e in (0, 1, 2, 7)] == pytest.approx([0, 0.5, 1, 1])


def test_geometric_keep_ratio_schedule(data):
    final = {"a": 0.01, "b": 0.1}
    assert scheduled_keep_ratios(final, 0, warmup=1, steps=2) == {"a": 1.0, "b": 1.0}
    assert scheduled_keep_ratios(final, 1, 1, 2) == pytest.approx({"a": 0.1, "b": 0.1 ** 0.5})
    assert scheduled_keep_ratios(final, 5, 1, 2) == pytest.approx(final)
    cfg = RunConfig(**{**TINY, "epochs": 3, "keep_ratio_schedule": "geometric",
                       "keep_ratio_steps": 2}).validate()
    result = train(cfg, None, progress=False, data=data)
    kept = [h["keep_ratio"] for h in result.history]
    assert kept[0] > kept[1] > 0 and abs(kept[2] - 0.2) < 0.01 and abs(kept[1] - 0.2) < 0.01
    assert kept[0] == pytest.approx(0.2 ** 0.5, abs=0.01)
    assert result.best["epoch"] >= 2  # only the final sparsity competes for "best"
    with pytest.raises(ConfigError, match="keep_ratio_steps"):
        RunConfig(keep_ratio_steps=2).validate()  # steps without the geometric schedule


def test_discard_schedule_and_progressive_keep_ratios():
    cfg = RunConfig(discard=True, discard_progressive=True, keep_ratio=0.05, epochs=160).validate()
    assert [discard_fraction(cfg, e) for e in (0, 9, 10, 19, 20, 95, 200)] == \
        pytest.approx([0, 0, 0.1, 0.1, 0.2, 0.9, 1.0])
    final = {"a": 0.05, "b": 0.2}
    assert keep_ratios_at(cfg, final, {}, 0) == pytest.approx({"a": 0.9, "b": 0.9})
    assert keep_ratios_at(cfg, final, {}, 10) == pytest.approx({"a": 0.8, "b": 0.8})
    assert keep_ratios_at(cfg, final, {}, 80) == pytest.approx({"a": 0.1, "b": 0.2})
    assert keep_ratios_at(cfg, final, {}, 150) == pytest.approx(final)  # never below the target
    assert not at_target_sparsity(cfg, 80) and at_target_sparsity(cfg, 90)
    assert keep_ratios_at(cfg.replace(discard_progressive=False), final, {}, 50) is None


def test_staged_schedule_stages_ratios_and_restarts_the_cosine(data):
    cfg = RunConfig(keep_ratio=0.01, adaptive_p=0.1, epochs=6, keep_ratio_schedule="staged",
                    keep_ratio_stages=3).validate()
    sizes = {"small": 1_000, "big": 100_000}
    totals = []
    for epoch in range(6):
        r = staged_keep_ratios(cfg, sizes, epoch)
        totals.append(sum(r[k] * sizes[k] for k in sizes) / sum(sizes.values()))
        assert r["small"] > r["big"]  # re-allocated with p at every stage
    assert totals == pytest.approx([0.01 ** (1 / 3)] * 2 + [0.01 ** (2 / 3)] * 2 + [0.01] * 2)
    assert [lr_factor(cfg, e) for e in (0, 2, 4)] == [1.0, 1.0, 1.0]  # a new cosine per stage
    assert lr_factor(cfg, 1) == pytest.approx(0.5) and lr_factor(cfg, 5) == pytest.approx(0.5)
    assert [at_target_sparsity(cfg, e) for e in range(6)] == [False] * 4 + [True] * 2
    one = cfg.replace(keep_ratio_stages=1)
    assert keep_ratios_at(one, {}, sizes, 0) is None  # one stage: the target from the start
    assert lr_factor(one, 3) == pytest.approx(0.5)

    tiny = RunConfig(**TINY_256, epochs=3, keep_ratio_schedule="staged", keep_ratio_stages=3).validate()
    result = train(tiny, None, progress=False, data=data)
    kept = [h["keep_ratio"] for h in result.history]
    assert kept == pytest.approx([0.2 ** (1 / 3), 0.2 ** (2 / 3), 0.2], abs=0.01)
    assert result.best["epoch"] == 3  # only the last stage competes for the best ticket


def test_lr_stepped_per_epoch_and_piecewise_milestones():
    # lr_step: epoch holds the LR of the epoch's start (the seeds' schedulers run once per
    # epoch); batch (the default) moves it every batch
    per_epoch = RunConfig(epochs=10, lr_schedule="cosine", lr_step="epoch").validate()
    per_batch = RunConfig(epochs=10, lr_schedule="cosine").validate()
    assert lr_factor(per_epoch, 2.7) == lr_factor(per_epoch, 2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))
    assert lr_factor(per_batch, 2.7) < lr_factor(per_batch, 2)
    # warm-up per epoch: epoch e trains at (e + 1) / W of the LR, as RST's and RBRN's schedulers
    warm = per_epoch.replace(lr_schedule="constant", warmup_epochs=4)
    assert [lr_factor(warm, e + 0.5) for e in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1, 1])
    # cifar_piecewise: x0.1 at lr_milestones (RST: 80 and 120, whatever the epochs), else 50 %/75 %
    fixed = RunConfig(epochs=200, lr_schedule="cifar_piecewise", lr_milestones=[80, 120]).validate()
    assert [lr_factor(fixed, e) for e in (79.9, 80, 119, 120, 199)] == pytest.approx([1, 0.1, 0.1, 0.01, 0.01])
    relative = fixed.replace(lr_milestones=[])
    assert [lr_factor(relative, e) for e in (99, 100, 150)] == pytest.approx([1, 0.1, 0.01])
    with pytest.raises(ConfigError, match="lr_step='iteration' is invalid"):
        RunConfig(lr_step="iteration").validate()
