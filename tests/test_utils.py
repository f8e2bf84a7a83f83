"""utils: 95 % intervals, runs grouped over seeds, devices."""
import pytest
import torch

from rst_lib.utils.stats import accuracy_text, group_over_seeds, wilson_interval
from rst_lib.utils.devices import resolve_device


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


def test_device_auto_resolves_on_cpu_machine():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
