import pytest
import torch

from rst_lib import ModelConfig, build_model, create_model, list_models
from rst_lib.masks import masking
from rst_lib.config import ConfigError


@pytest.mark.parametrize("name", ["conv2", "conv4", "conv6", "resnet18", "preact_resnet18"])
def test_registry_builds_masked_models(name):
    model = create_model(name, num_classes=7, in_channels=3, image_size=16, width=0.125,
                         keep_ratio=0.1)
    out = model(torch.rand(2, 3, 16, 16))
    assert out.shape == (2, 7)
    layers = dict(masking.masked_layers(model))
    assert len(layers) >= 3
    assert abs(masking.mask_summary(model)["keep_ratio"] - 0.1) < 0.01
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".scores") for n in trainable)


def test_registry_lists_required_models():
    assert {"conv2", "conv4", "conv6", "resnet18", "preact_resnet18"} <= set(list_models())


def test_dense_first_and_end_with_bn():
    model = create_model("resnet18", 10, 3, width=0.125, keep_ratio=0.1, dense_first=True,
                         end_with_bn=True)
    names = [n for n, _ in masking.masked_layers(model)]
    assert "body.conv1" not in names
    assert not model.body.conv1.weight.requires_grad  # random, frozen, unpruned
    assert isinstance(model.last_bn, torch.nn.BatchNorm1d) and not model.last_bn.affine


def test_same_seed_same_weights_across_keep_ratios():
    a = create_model("conv2", 10, 1, image_size=12, width=0.25, keep_ratio=0.05, seed=3,
                     scale_fan=False)
    b = create_model("conv2", 10, 1, image_size=12, width=0.25, keep_ratio=0.5, seed=3,
                     scale_fan=False)
    c = create_model("conv2", 10, 1, image_size=12, width=0.25, keep_ratio=0.05, seed=4,
                     scale_fan=False)
    wa = [masking.raw_weight(m) for _, m in masking.masked_layers(a)]
    wb = [masking.raw_weight(m) for _, m in masking.masked_layers(b)]
    wc = [masking.raw_weight(m) for _, m in masking.masked_layers(c)]
    assert all(torch.equal(x, y) for x, y in zip(wa, wb))
    assert not all(torch.equal(x, y) for x, y in zip(wa, wc))


def test_normalization_is_inside_the_model():
    cfg = ModelConfig(name="conv2", in_channels=3, image_size=8, width=0.125,
                      mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2])
    model = build_model(cfg)
    x = torch.rand(1, 3, 8, 8)
    assert torch.allclose(model.normalize(x), (x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.2)


def test_dense_network_when_keep_ratio_none():
    model = create_model("conv2", 10, 1, image_size=12, width=0.125, keep_ratio=None)
    assert not list(masking.masked_layers(model))
    assert all(p.requires_grad for p in model.parameters())


def test_bad_model_config_is_a_clear_error():
    with pytest.raises(ConfigError, match="valid choices are .*conv4"):
        create_model("resnet9000")
    with pytest.raises(ConfigError, match=r"keep_ratio=1.5 .*\(0, 1\]"):
        create_model("conv2", keep_ratio=1.5)
