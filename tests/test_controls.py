"""The pieces behind the headline claim ("the robust ticket beats both controls") and the
small helpers it rests on: controls, BN recalibration, shard order, dense weights."""
import pytest
import torch
from torch import nn

from rst_lib import RunConfig, create_model, train
from rst_lib.masks import masking
from rst_lib.analysis.controls import compare_models, natural_control, random_mask_control
from rst_lib.data.loaders import make_loader, shard_order
from rst_lib.engine.evaluation import recalibrate_bn
from rst_lib.engine.tasks import build_task, load_dense_weights
from rst_lib.models.tickets import TicketError

CFG = dict(model="conv2", width=0.125, keep_ratio=0.2, epochs=1, train_examples=256,
           eval_examples=64, final_examples=100, autoattack="none", eps=0.1, alpha=0.125,
           eval_alpha=0.025, eval_steps=3, batch_size=64)


def test_random_mask_control_is_the_untrained_network_with_recalibrated_bn(data):
    cfg = RunConfig(**CFG).validate()
    control = random_mask_control(cfg, data)
    _, fresh = build_task(cfg, data)
    # same random weights, the initial (random) top-k mask, no search
    for (_, a), (_, b) in zip(masking.masked_layers(control), masking.masked_layers(fresh)):
        assert torch.equal(masking.raw_weight(a), masking.raw_weight(b))
        assert torch.equal(masking.get_mask_param(a).mask(), masking.get_mask_param(b).mask())
    bn = next(m for m in control.modules() if isinstance(m, nn.BatchNorm2d))
    assert not torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))  # recalibrated
    assert not control.training


def test_controls_and_ticket_meet_the_same_attack_on_the_same_examples(data):
    cfg = RunConfig(**{**CFG, "epochs": 3, "train_examples": 1024}).validate()
    robust = train(cfg, None, progress=False, data=data)
    natural = natural_control(cfg, data)
    assert natural.config.train_attack == "none" and natural.config.seed == cfg.seed
    rows = compare_models({"robust": robust.model, "random": random_mask_control(cfg, data)},
                          cfg, data, progress=False)
    assert [r["model"] for r in rows] == ["robust", "random"]
    assert all(r["examples"] == 100 and r["split"] == "test" for r in rows)
    # compare_models gives the ticket exactly the numbers its own run reported
    assert rows[0]["clean_acc"] == robust.final["clean_acc"]
    assert rows[0]["pgd_acc"] == robust.final["pgd_acc"]
    # and a random mask is no robust ticket: the claim the quickstart makes
    assert rows[1]["clean_acc"] < rows[0]["clean_acc"]


def test_recalibrate_bn_estimates_statistics_from_the_loader(data):
    model = create_model("conv2", 10, 1, image_size=28, width=0.125, keep_ratio=0.5)
    x = data.train.tensors[0][:256]
    loader = make_loader(data.train, 128)
    recalibrate_bn(model, loader, torch.device("cpu"), max_batches=2)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():  # the BN input statistics over the same 256 examples
        feats = model.body.features[0](model.normalize(x))
    assert torch.allclose(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-4)
    assert not model.training and bn.momentum == 0.1


def test_shard_order_splits_one_permutation_like_distributed_sampler():
    from torch.utils.data.distributed import DistributedSampler
    full = shard_order(10, True, seed=3)
    assert sorted(full.tolist()) == list(range(10))
    ranks = [shard_order(10, True, 3, rank=r, world_size=3) for r in range(3)]
    assert [len(r) for r in ranks] == [4, 4, 4]  # padded to a multiple of the world size
    for r in range(3):
        sampler = DistributedSampler(range(10), num_replicas=3, rank=r, shuffle=True, seed=3)
        assert ranks[r].tolist() == list(sampler)
    assert shard_order(5, False, 0).tolist() == [0, 1, 2, 3, 4]


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
