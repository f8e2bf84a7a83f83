"""keep_allocation: erk — RigL's Erdos-Renyi-Kernel layer densities. The reference here is
written from the formula, not from the library: density_l = min(1, eps * (sum of the weight
shape) / (product of it)), i.e. (n_in + n_out + k_h + k_w) / (n_in n_out k_h k_w) for a conv,
with eps found by bisection so that the kept weights add up to RigL's total
sum(n_l - floor((1 - k) n_l)). Counted on the meta device (describe_model), so fast."""
import math

import pytest

from rst_lib import RunConfig
from rst_lib.config import ConfigError
from rst_lib.engine.tasks import describe_model
from rst_lib.masks.masking import allocate_keep_ratios


def erk_reference(shapes: list[tuple[int, ...]], keep_ratio: float) -> list[float]:
    sizes = [math.prod(s) for s in shapes]
    raw = [sum(s) / math.prod(s) for s in shapes]
    target = sum(n - math.floor((1 - keep_ratio) * n) for n in sizes)
    kept = lambda eps: sum(min(1.0, eps * r) * n for r, n in zip(raw, sizes))  # noqa: E731
    lo, hi = 0.0, 1.0 / min(raw)  # kept(hi) is every weight
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kept(mid) < target else (lo, mid)
    return [min(1.0, hi * r) for r in raw]


@pytest.mark.parametrize("model,dataset,width", [("resnet18", "cifar10", 1.0),
                                                  ("resnet34", "cifar10", 1.0),
                                                  ("conv4", "mnist5k", 1.0),
                                                  ("conv4", "cifar10", 0.5)])
@pytest.mark.parametrize("keep_ratio", [0.05, 0.3])
def test_erk_layer_counts_follow_the_formula(model, dataset, width, keep_ratio):
    cfg = RunConfig(model=model, dataset=dataset, width=width, keep_ratio=keep_ratio,
                    keep_allocation="erk")
    layers = describe_model(cfg)["layers"]
    densities = erk_reference([tuple(d["shape"]) for d in layers], keep_ratio)
    expected = [max(1, round(d * layer["weights"])) for d, layer in zip(densities, layers)]
    assert [d["kept"] for d in layers] == expected
    total = sum(d["weights"] for d in layers)
    assert abs(sum(expected) - keep_ratio * total) <= len(layers)
    # ERK is not uniform: small layers denser, and the largest ones below the average
    assert max(d["keep_ratio"] for d in layers) > keep_ratio > min(d["keep_ratio"] for d in layers)


def test_erk_makes_dense_exactly_the_layers_whose_density_would_pass_one():
    # two tiny layers would need a density above 1: both dense; the big one takes the rest
    shapes = [(4, 3, 3, 3), (4, 4, 3, 3), (256, 256, 3, 3)]
    ratios = allocate_keep_ratios([math.prod(s) for s in shapes], 0.1, allocation="erk",
                                  shapes=shapes)
    assert ratios[:2] == [1.0, 1.0]
    assert ratios == pytest.approx(erk_reference(shapes, 0.1), rel=1e-12)
    # the reference itself sees a wrong rule: uniform densities are not ERK's
    assert erk_reference(shapes, 0.1) != pytest.approx([0.1, 0.1, 0.1])


def test_erk_goes_with_its_own_rule_only():
    with pytest.raises(ConfigError, match="adaptive_p"):
        RunConfig(keep_allocation="erk", adaptive_p=0.5).validate()
    with pytest.raises(ConfigError, match="staged"):
        RunConfig(keep_allocation="erk", keep_ratio_schedule="staged", keep_ratio_stages=2,
                  epochs=4).validate()
