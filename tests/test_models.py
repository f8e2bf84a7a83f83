"""rst_lib.models: the registry and every family (build, mask, published shapes), seeds."""
import pytest
import torch
from torch import nn

from rst_lib import ModelConfig, build_model, create_model, list_models
from rst_lib.masks import masking
from rst_lib.config import ConfigError
import rst_lib
from rst_lib.masks.masking import mask_summary, masked_layers
from rst_lib.models.layers import scaled as _w
from rst_lib.models.registry import MODELS
from rst_lib.models.resnets import BasicBlock, Bottleneck, WideResNet


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


ZOO = ["resnet34", "resnet50", "wide_resnet", "wrn28_10", "wrn32_10", "vgg16", "mobilenet_v2",
       "conv8", "mlp"]


WIDTH = 0.125


SIZE = 16


def _make(name, **kw):
    kw.setdefault("keep_ratio", 0.1)
    kw.setdefault("end_with_bn", False)
    return rst_lib.create_model(name, num_classes=7, in_channels=3,
                                image_size=SIZE, width=WIDTH, **kw)


def _x():
    return torch.rand(2, 3, SIZE, SIZE)


def _prunable(model):
    return [(n, m) for n, m in model.body.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _body(name, **kw):
    """The unmasked architecture, straight from the registry (cheap: no init, no masks)."""
    args = dict(num_classes=7, in_channels=3, image_size=SIZE, width=WIDTH, bn_affine=False,
                norm="bn")
    args.update(kw)
    return MODELS[name](**args)


def _weight_count(model):
    masked_ids = {id(m) for _, m in masked_layers(model)}
    masked = sum(m.parametrizations.weight.original.numel() for _, m in masked_layers(model))
    dense = sum(m.weight.numel() for _, m in _prunable(model) if id(m) not in masked_ids)
    return masked + dense


def test_zoo_names_registered():
    assert set(ZOO) <= set(rst_lib.list_models())


@pytest.mark.parametrize("name", ZOO)
def test_zoo_builds_masked_models(name):
    model = _make(name)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".scores") for n in trainable)
    layers = _prunable(model)
    assert len(list(masked_layers(model))) == len(layers)  # every conv/linear is masked
    assert abs(mask_summary(model)["keep_ratio"] - 0.1) < 0.01
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert m.bias is None
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert not m.affine  # bn_affine=False is the default
    # forward in train and eval mode; the first/last conv-linear registered must be the
    # first/last to run (dense_first / dense_last rely on the registration order)
    called = []
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: called.append(n)) for n, m in layers]
    assert model.train()(_x()).shape == (2, 7)
    with torch.no_grad():
        assert model.eval()(_x()).shape == (2, 7)
    for h in hooks:
        h.remove()
    assert called[0] == layers[0][0] and called[-1] == layers[-1][0]
    first, last = layers[0][1], layers[-1][1]
    if isinstance(first, nn.Conv2d):
        assert first.in_channels == 3
    else:
        assert first.in_features == 3 * SIZE ** 2
    assert isinstance(last, nn.Linear) and last.out_features == 7


@pytest.mark.parametrize("name", ZOO)
def test_dense_first_and_dense_last(name):
    model = _make(name, dense_first=True, dense_last=True)
    layers = _prunable(model)
    masked = {n for n, _ in masked_layers(model.body)}
    (first_name, first), (last_name, last) = layers[0], layers[-1]
    assert first_name not in masked and last_name not in masked
    assert not first.weight.requires_grad and not last.weight.requires_grad
    assert {n for n, _ in layers[1:-1]} == masked


def test_factories_accept_bn_affine_and_ignore_extra_keywords():
    for name in ZOO:
        body = _body(name, bn_affine=True, unused_option=123)
        bns = [m for m in body.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        assert bns and all(m.affine for m in bns)


def test_resnet34_and_resnet50_blocks():
    r34 = _body("resnet34")
    assert sum(isinstance(m, BasicBlock) for m in r34.modules()) == 16
    r50 = _body("resnet50")
    blocks = [m for m in r50.modules() if isinstance(m, Bottleneck)]
    assert len(blocks) == 16 and Bottleneck.expansion == 4
    for b in blocks:
        assert b.conv3.out_channels == 4 * b.conv1.out_channels
    assert r50.fc.in_features == 4 * _w(512, WIDTH) == _w(2048, WIDTH)
    assert _body("resnet50", width=1.0).fc.in_features == 2048


def test_wide_resnet_depth_and_widen_factor():
    with pytest.raises(ValueError, match="depth"):
        _body("wide_resnet", depth=30)
    with pytest.raises(ValueError, match="depth"):
        WideResNet(27, 10, num_classes=7, in_channels=3, width=WIDTH, bn_affine=False)
    assert len(_body("wide_resnet").layers) == 3 * 4  # default WRN-28-10
    body = _body("wide_resnet", width=1.0, depth=16, widen_factor=4)
    assert len(body.layers) == 3 * 2 and body.fc.in_features == 64 * 4
    with torch.no_grad():
        assert body.eval()(torch.rand(2, 3, 8, 8)).shape == (2, 7)  # image_size 8 works
    assert len(_body("wrn32_10").layers) == 3 * 5  # Madry's WRN-32-10: 5 blocks per stage


def test_wrn28_10_has_the_published_size():
    model = rst_lib.create_model("wrn28_10", num_classes=10, in_channels=3, image_size=32,
                                 width=1.0, keep_ratio=0.5)
    n = _weight_count(model)
    assert abs(n - 36.5e6) / 36.5e6 < 0.02, n  # Zagoruyko & Komodakis: 36.5M
    assert len(model.body.layers) == 3 * 4 and model.body.fc.in_features == 640


def test_mobilenet_v2_uses_depthwise_convs():
    body = _body("mobilenet_v2")
    dw = [m for m in body.modules() if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]
    assert len(dw) == 17  # one per inverted residual block
    assert any(isinstance(m, nn.ReLU6) for m in body.modules())
    strides = [m.stride[0] for m in body.modules() if isinstance(m, nn.Conv2d)]
    assert strides.count(2) == 3  # CIFAR adaptation: 32x32 -> 4x4


def test_vgg16_has_13_convs_and_pools_only_down_to_1x1():
    def pools(size):
        return sum(isinstance(m, nn.MaxPool2d) for m in _body("vgg16", image_size=size).modules())

    assert sum(isinstance(m, nn.Conv2d) for m in _body("vgg16").modules()) == 13
    assert (pools(32), pools(16), pools(8)) == (5, 4, 3)  # never below 1x1
    body = _body("vgg16", image_size=8)
    with torch.no_grad():
        assert body.eval()(torch.rand(2, 3, 8, 8)).shape == (2, 7)


def test_conv8_and_mlp_without_batchnorm():
    for name in ("conv8", "mlp"):
        model = _make(name, norm="none")
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        assert model(_x()).shape == (2, 7)
    conv8 = _body("conv8")
    assert sum(isinstance(m, nn.Conv2d) for m in conv8.modules()) == 8
    assert [m.out_features for m in conv8.modules() if isinstance(m, nn.Linear)] == [32, 32, 7]
    with pytest.raises(ValueError, match="image_size"):
        _body("conv8", image_size=8)


def test_mlp_depth_and_hidden():
    body = _body("mlp", in_channels=1, image_size=8, width=1.0, depth=3, hidden=32)
    linears = [m for m in body.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 32), (32, 32),
                                                                  (32, 7)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in body.modules()) == 3
    assert [m.out_features for m in _body("mlp").modules() if isinstance(m, nn.Linear)] == [
        _w(256, WIDTH), _w(256, WIDTH), 7]
    with pytest.raises(ValueError, match="depth"):
        _body("mlp", depth=0)


def test_building_a_model_leaves_the_global_rng_alone():
    from rst_lib import create_model
    state = torch.get_rng_state()
    create_model("resnet18", 10, 3, width=0.125, keep_ratio=0.1)
    assert torch.equal(state, torch.get_rng_state())
