import os
import pickle

import pytest
import torch
import torch.nn.functional as F

from rst_lib.masks import masking
from rst_lib.models.registry import ModelConfig
from rst_lib.masks.codec import decode_mask, encode_mask, pack_bits, unpack_bits
from rst_lib.models.tickets import TicketError, checkpoint_size_bytes, load_ticket, save_ticket
from rst_lib import create_model


def _searched(tiny_model, batch, steps=5):
    model = tiny_model(keep_ratio=0.1)
    x, y = batch
    opt = torch.optim.SGD(masking.score_parameters(model), lr=0.5)
    model.train()
    for _ in range(steps):  # moves scores and BN running statistics
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def test_pack_unpack_bits():
    m = torch.rand(3, 5, 7) < 0.3
    packed = pack_bits(m)
    assert packed.dtype == torch.uint8 and packed.numel() == (3 * 5 * 7 + 7) // 8
    assert torch.equal(unpack_bits(packed, m.shape), m)


@pytest.mark.parametrize("shape,p", [((64, 32, 3, 3), 0.05), ((64, 32, 3, 3), 0.5),
                                     ((64, 32, 3, 3), 0.97), ((1000,), 0.0), ((1000,), 1.0),
                                     ((7,), 0.3), ((10, 1, 1, 1), 0.2), ((4096, 512), 0.001)])
def test_mask_encodings_are_exact(shape, p):
    g = torch.Generator().manual_seed(0)
    m = torch.rand(shape, generator=g) < p
    code = encode_mask(m)
    assert torch.equal(decode_mask(code), m)
    mask_bytes = sum(v.numel() for v in code.values() if isinstance(v, torch.Tensor))
    assert mask_bytes <= (m.numel() + 7) // 8  # never worse than packed bits
    n = min(int(m.sum()), m.numel() - int(m.sum()))  # positions of the rarer value
    if n == 0 and m.numel() > 64:
        assert code["encoding"] == "elias_fano" and mask_bytes <= 2
    elif p <= 0.05 or p >= 0.97:
        # Elias-Fano: at most 2 + log2(1/p) bits per coded position (+ rounding)
        assert code["encoding"] == "elias_fano"
        assert mask_bytes * 8 <= n * (2 + torch.tensor(m.numel() / n).log2().item()) + 16


def test_version_1_tickets_still_load(tmp_path, tiny_model, batch):
    from rst_lib.models.tickets import ticket_payload
    model = _searched(tiny_model, batch)
    payload = ticket_payload(model)
    masks = masking.get_masks(model)
    payload.update(version=1, masks={k: pack_bits(m) for k, m in masks.items()},
                   mask_shapes={k: list(m.shape) for k, m in masks.items()})
    torch.save(payload, tmp_path / "v1.pt")
    loaded = load_ticket(tmp_path / "v1.pt")
    with torch.no_grad():
        assert torch.equal(model(batch[0]), loaded(batch[0]))


def test_round_trip_gives_identical_outputs(tmp_path, tiny_model, batch):
    model = _searched(tiny_model, batch)
    path = save_ticket(model, tmp_path / "t.pt", meta={"note": "test"})
    loaded = load_ticket(path)
    x, _ = batch
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    for (n1, l1), (n2, l2) in zip(masking.masked_layers(model), masking.masked_layers(loaded)):
        assert n1 == n2 and torch.equal(l1.weight, l2.weight)


def test_ticket_stores_bits_not_weights(tmp_path):
    from rst_lib import create_model
    model = create_model("conv4", 10, 3, image_size=32, width=0.5, keep_ratio=0.05)
    path = save_ticket(model, tmp_path / "t.pt")
    total = masking.mask_summary(model)["total"]
    payload = torch.load(path, weights_only=True)
    mask_bytes = sum(v.numel() for code in payload["masks"].values() for v in code.values()
                     if isinstance(v, torch.Tensor))
    assert mask_bytes <= total * 0.05 * 7 / 8  # Elias-Fano: < 7 bits per kept weight at 5%
    assert not any(k.endswith("original") or k.endswith("scores") for k in payload["state"])
    assert os.path.getsize(path) * 50 < checkpoint_size_bytes(model)


def test_pickled_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"format": "rst-ticket", "x": Evil()}, path)
    with pytest.raises(TicketError, match="refused"):
        load_ticket(path)
    assert not marker.exists()


def test_corrupted_and_foreign_files(tmp_path, tiny_model, batch):
    model = _searched(tiny_model, batch)
    path = save_ticket(model, tmp_path / "t.pt")
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(TicketError, match="truncated or corrupted"):
        load_ticket(cut)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(TicketError, match="not an rst-workbook ticket"):
        load_ticket(other)
    with pytest.raises(TicketError, match="no file at"):
        load_ticket(tmp_path / "missing.pt")


def test_unreadable_tickets_are_told_apart_and_never_advise_unsafe_loading(tmp_path):
    """Empty, truncated, random bytes, a renamed JSON file and a pickle that would run code
    each get their own message; none suggests weights_only=False."""
    import pickle
    import random
    rng = random.Random(0)  # garbage of every kind, the same in every run: the first byte is
    # never '{', '[' or 'P' (JSON / zip heads have their own messages)
    garbage = {f"random{i}.pt": (bytes([rng.randrange(0x80, 0x100)]) + rng.randbytes(3999),
                                 "not a ticket: it is not") for i in range(300)}
    cases = {"empty.pt": (b"", "is empty"), **garbage,
             "json.pt": (b'{"status": "finished"}', "is a JSON file")}
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
    torch.save({"evil": _Evil()}, tmp_path / "unsafe.pt")
    cases["unsafe.pt"] = (None, "could run code")
    for name, (_, message) in cases.items():
        with pytest.raises(TicketError, match=message) as info:
            load_ticket(tmp_path / name)
        assert "weights_only" not in str(info.value)
        assert str((tmp_path / name).resolve()) in str(info.value)  # the full path
    assert pickle  # (the unsafe file above is an ordinary pickle of a class)


def test_load_ticket_accepts_a_run_folder(tmp_path, tiny_model, batch):
    model = _searched(tiny_model, batch)
    save_ticket(model, tmp_path / "run" / "ticket.pt")
    x, _ = batch
    assert torch.equal(load_ticket(tmp_path / "run")(x), model.eval()(x))
    with pytest.raises(TicketError, match="folder without a ticket.pt"):
        load_ticket(tmp_path)


class _Evil:
    def __reduce__(self):
        return (print, ("this would run",))


def test_architecture_mismatch_is_refused(tmp_path, tiny_model, batch):
    path = save_ticket(_searched(tiny_model, batch), tmp_path / "t.pt")
    with pytest.raises(TicketError, match="name is 'conv2' in the ticket but 'resnet18'"):
        load_ticket(path, expect=ModelConfig(name="resnet18", in_channels=1, image_size=12,
                                             width=0.125))


def test_granularity_in_models_and_tickets(tmp_path):
    model = create_model("conv2", 10, 1, image_size=12, width=0.125, keep_ratio=0.3,
                         granularity="filter")
    loaded = load_ticket(save_ticket(model.eval(), tmp_path / "t.pt"))
    x = torch.rand(4, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


# --- the fingerprint: a ticket whose seed no longer rebuilds its network refuses to load ---

def _shifted_init(original, only_rows=None):
    """An init function as a changed torch or rst_lib might draw it: one extra draw from the
    generator before the weights (for layers with ``only_rows`` outputs, or all)."""
    def init(weight, kind, generator, *args, **kw):
        if only_rows is None or weight.shape[0] == only_rows:
            torch.rand(1, generator=generator)
        return original(weight, kind, generator, *args, **kw)
    return init


def test_a_ticket_the_seed_no_longer_rebuilds_is_refused_in_one_line(tmp_path, tiny_model, batch,
                                                                   monkeypatch):
    from rst_lib.masks import inits
    from rst_lib.models.tickets import TicketRebuildError
    model = _searched(tiny_model, batch)
    path = save_ticket(model, tmp_path / "t.pt")
    assert torch.equal(load_ticket(path)(batch[0]), model(batch[0]))  # unchanged: loads
    # only the classifier (10 outputs) draws differently: that entry, and no other, is named
    monkeypatch.setattr(inits, "init_weight_", _shifted_init(inits.init_weight_, only_rows=10))
    with pytest.raises(TicketRebuildError) as info:
        load_ticket(path)
    message = str(info.value)
    classifier = [n for n, _ in masking.masked_layers(model)][-1]
    assert "\n" not in message and str(path.resolve()) in message
    assert f"{classifier}.weight" in message
    assert not any(f"{n}.weight" in message for n, _ in list(masking.masked_layers(model))[:-1])
    assert message.count(torch.__version__) == 2  # saved with, loading with
    assert isinstance(info.value, TicketError)  # a bad parameter: told before any compute
    from rst_lib.workbook.notebooks import load_any  # 06's loader says the same, not "not a ticket"
    with pytest.raises(TicketRebuildError, match="does not rebuild"):
        load_any(path)


def test_a_ticket_written_before_fingerprints_loads_with_one_warning(tmp_path, tiny_model, batch,
                                                                    capsys):
    from rst_lib.models.tickets import ticket_payload
    model = _searched(tiny_model, batch)
    payload = ticket_payload(model)
    assert payload["fingerprint"]["entries"] and payload["fingerprint"]["torch"] == torch.__version__
    del payload["fingerprint"]
    torch.save(payload, tmp_path / "old.pt")
    capsys.readouterr()
    assert torch.equal(load_ticket(tmp_path / "old.pt")(batch[0]), model(batch[0]))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "fingerprint" in lines[0] and "old.pt" in lines[0]
    load_ticket(save_ticket(model, tmp_path / "new.pt"))
    assert capsys.readouterr().err == ""  # a ticket with its fingerprint: no word


def test_an_iterand_ticket_is_fingerprinted_after_its_redraws(tmp_path, redrawn_model, batch,
                                                             monkeypatch):
    from rst_lib.masks import rerandomize
    from rst_lib.models.tickets import TicketRebuildError, read_ticket
    model = redrawn_model((3, 6))  # events, then scores moved so that re-drawn weights are kept
    path = save_ticket(model, tmp_path / "t.pt")
    payload = read_ticket(path)
    assert payload["redraws"] and not any(k.endswith("weight.original") for k in payload["state"])
    # round trip: the pruned weights IteRand re-drew are not rebuilt, the kept ones are
    assert torch.equal(load_ticket(path)(batch[0]), model(batch[0]))
    # the re-draws (not the first draw) change: the rebuilt kept weights differ
    monkeypatch.setattr(rerandomize, "init_weight_", _shifted_init(rerandomize.init_weight_))
    with pytest.raises(TicketRebuildError, match=r"body\.\S+\.weight"):
        load_ticket(path)
