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
