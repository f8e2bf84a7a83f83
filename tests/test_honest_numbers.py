"""Honest headline numbers: eps warm-up, 95 % intervals, seeds grouped, AutoAttack first."""
import math

import pytest
import torch

from rst_lib import RunConfig, create_model
from rst_lib.engine.schedules import eps_factor
from rst_lib.utils.stats import accuracy_text, group_over_seeds, wilson_interval


def test_eps_warmup_ramps_linearly_from_zero():
    cfg = RunConfig(eps_warmup_epochs=4, epochs=10).validate()
    assert [eps_factor(cfg, e) for e in (0, 1, 2, 3.5, 4, 9)] == [0, 0.25, 0.5, 0.875, 1, 1]
    assert eps_factor(cfg.replace(eps_warmup_epochs=0), 0) == 1.0


def test_eps_warmup_reaches_the_training_attack(data):
    """The attack used in the first batches of a warm-up is smaller than eps."""
    from rst_lib.engine.tasks import build_task, make_optimizer, make_train_attack
    from rst_lib.engine.batch_steps import EpochContext
    from rst_lib.engine.training import train_epoch
    from rst_lib.data.loaders import make_loader
    cfg = RunConfig(model="conv2", width=0.125, train_attack="pgd", eps=0.3, alpha=0.1, steps=2,
                    eps_warmup_epochs=2, epochs=3, autoattack="none").validate()
    _, model = build_task(cfg, data)
    attack = make_train_attack(model, cfg, 256)
    seen = []
    original = attack.perturb

    def spy(x, y):
        seen.append((attack.eps, attack.alpha))
        out = original(x, y)
        assert (out - x).abs().max() <= attack.eps + 1e-6  # inside the warm-up ball
        return out
    attack.perturb = spy
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    loader = make_loader(torch.utils.data.TensorDataset(*[t[:256] for t in data.train.tensors]), 64)
    ctx = EpochContext.build(model, opt, cfg, torch.device("cpu"), 256, attack=attack,
                             progress=False)
    train_epoch(ctx, loader, 0)
    assert [round(e, 4) for e, _ in seen] == [0.0, 0.0375, 0.075, 0.1125]  # 0.3 * (i/4) / 2
    assert all(a == pytest.approx(e / 3) for e, a in seen)  # the step follows the radius
    seen.clear()
    train_epoch(ctx, loader, 2)
    assert all(e == pytest.approx(0.3) for e, _ in seen)  # after the warm-up: the full eps


def test_wilson_interval_known_values_and_edges():
    lo, hi = wilson_interval(0.5, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)  # textbook value
    lo, hi = wilson_interval(0.0, 1000)
    assert lo == 0.0 and 0.003 < hi < 0.0040  # never negative, not zero width at 0 %
    lo, hi = wilson_interval(1.0, 20)
    assert hi == 1.0 and lo < 0.85
    lo, hi = wilson_interval(0.456, 1000)
    assert lo < 0.456 < hi and hi - lo == pytest.approx(0.0616, abs=0.002)  # +-3.1 points
    assert accuracy_text(0.456, 1000) == "45.6% [42.5%, 48.7%] (n 1000)"


def test_runs_differing_only_by_seed_are_grouped_with_mean_and_std():
    rows = [{"model": "conv4", "keep_ratio": 0.1, "seed": s, "path": f"/r/{s}", "robust_acc": a}
            for s, a in ((0, 0.60), (1, 0.64), (2, 0.62))]
    rows.append({"model": "conv4", "keep_ratio": 0.3, "seed": 0, "path": "/r/x", "robust_acc": 0.5})
    groups = {g["keep_ratio"]: g for g in group_over_seeds(rows, ["robust_acc"])}
    assert groups[0.1]["seeds"] == [0, 1, 2] and groups[0.1]["n_seeds"] == 3
    assert groups[0.1]["robust_acc_mean"] == pytest.approx(0.62)
    assert groups[0.1]["robust_acc_std"] == pytest.approx(0.02)
    assert groups[0.3]["n_seeds"] == 1 and groups[0.3]["robust_acc_std"] == 0.0


def test_sweeps_take_a_list_of_seeds(tmp_path):
    from rst_lib.errors import ConfigError
    from rst_lib.workbook.sweeps import load_sweep
    from rst_lib.workbook.params import NOTEBOOKS_DIR
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"notebook: {NOTEBOOKS_DIR / '01_search.ipynb'}\ngrid:\n  keep_ratio: [0.1, 0.3]\n"
                     "seeds: [0, 1, 2]\n")
    cells = load_sweep(sweep, output_root=tmp_path / "out").cells
    assert [c.name for c in cells][:3] == ["keep_ratio=0.1-seed=0", "keep_ratio=0.1-seed=1",
                                           "keep_ratio=0.1-seed=2"]
    assert len(cells) == 6 and {c.params["seed"] for c in cells} == {0, 1, 2}
    sweep.write_text(f"notebook: {NOTEBOOKS_DIR / '01_search.ipynb'}\nseeds: 3\n")
    with pytest.raises(ConfigError, match="seeds"):
        load_sweep(sweep)


def test_final_evaluation_reports_autoattack_as_the_robust_accuracy(data):
    from rst_lib.engine.evaluation import final_evaluation
    cfg = RunConfig(model="conv2", width=0.125, final_examples=40, autoattack="fast",
                    autoattack_examples=30, eps=0.1, eval_alpha=0.025, eval_steps=3).validate()
    model = create_model("conv2", 10, 1, image_size=28, width=0.125, keep_ratio=0.1)
    final = final_evaluation(model, cfg, data, progress=False)
    assert final["split"] == "test" and final["examples"] == 40
    assert final["robust_acc"] == final["autoattack_acc"] and final["robust_examples"] == 30
    assert final["robust_attack"] == "AutoAttack (fast)" and math.isfinite(final["pgd_acc"])
    # AutoAttack runs on what PGD did not break: never above PGD on the same inputs
    assert final["autoattack_acc"] <= final["pgd_acc_on_autoattack_examples"]
    no_aa = final_evaluation(model, cfg.replace(autoattack="none"), data, progress=False)
    assert no_aa["robust_acc"] == no_aa["pgd_acc"] and no_aa["robust_attack"] == "PGD-3"
