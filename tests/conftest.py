import os

import pytest
import torch

from rst_lib import create_model, load_dataset


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tiny test models are dominated by threading overhead; one thread is faster and keeps
    # timings stable when the machine is busy.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def _precision_cache(tmp_path_factory):
    # precision: auto keeps its measurements in a per-machine cache: the suite uses its own
    # (inherited by the kernels and subprocesses it starts), never the user's
    path = tmp_path_factory.mktemp("precision-cache") / "precision.json"
    before = os.environ.get("RST_PRECISION_CACHE")
    os.environ["RST_PRECISION_CACHE"] = str(path)
    yield path
    if before is None:
        os.environ.pop("RST_PRECISION_CACHE", None)
    else:
        os.environ["RST_PRECISION_CACHE"] = before


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_model():
    """A small masked conv net on 1x12x12 inputs (BN, last BN): fast on CPU."""
    def make(keep_ratio=0.2, seed=0, name="conv2", **kw):
        kw.setdefault("end_with_bn", True)
        return create_model(name, 10, 1, image_size=12, width=0.125, keep_ratio=keep_ratio,
                            seed=seed, **kw)
    return make


@pytest.fixture
def redrawn_model(tiny_model):
    """An IteRand model: a tiny conv2 (kaiming-normal weights) re-drawn at each of ``steps``,
    its scores moved after every event so that re-drawn weights are kept; in eval mode."""
    from rst_lib.masks import masking, rerandomize

    def make(steps):
        model = tiny_model(keep_ratio=0.2, weight_init="kaiming_normal")
        for step in steps:
            rerandomize.rerandomize(model, step, 1.0, 0.5, 0, "kaiming_normal", True)
            with torch.no_grad():
                for _, layer in masking.masked_layers(model):
                    p = masking.get_mask_param(layer)
                    p.scores.add_(torch.randn(p.scores.shape,
                                              generator=torch.Generator().manual_seed(step)))
        return model.eval()
    return make


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(16, 1, 12, 12, generator=g), torch.randint(0, 10, (16,), generator=g)


@pytest.fixture(scope="session")
def data():
    """The embedded mnist5k bundle, loaded once for the whole suite."""
    return load_dataset("mnist5k")


@pytest.fixture(autouse=True)
def _no_run_log():
    # a test that made a notebook's run folder (ensure_run_dir) leaves no log open for the next
    from rst_lib.utils import progress_log
    yield
    progress_log.log_to(None)
