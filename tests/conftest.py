import os

import pytest

# Triton kernels run on CPU tensors through the interpreter when no GPU is
# present; this must be set before triton is first imported.
try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except Exception:  # pragma: no cover
    _HAS_CUDA = False
if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The trainer's tests pin eager fp32 runs: --fast auto would compile and train in bf16 on a CPU
# that has it (the tests of auto say --fast auto, or set the variable themselves).
os.environ["PYFAST_GAN_FAST"] = "off"


def pytest_collection_modifyitems(config, items):
    if _HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny-model training tests: OpenMP synchronisation
    dominates there, and on a shared 2-core runner its spin-waiting made those runs up to
    40x slower (measured); one thread also keeps runs compared against each other
    deterministic. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """pyfast_gan's cache (the digits classifier, FID reference features) in a fresh folder,
    so tests never read or write the user's cache and the classifier is trained (once per
    session) from scratch. Subprocesses inherit it through the environment."""
    old = os.environ.get("PYFAST_GAN_CACHE")
    os.environ["PYFAST_GAN_CACHE"] = str(tmp_path_factory.mktemp("pyfast_gan_cache"))
    yield
    if old is None:
        os.environ.pop("PYFAST_GAN_CACHE", None)
    else:
        os.environ["PYFAST_GAN_CACHE"] = old


@pytest.fixture(scope="session")
def readme_example():
    """``find(marker)``: the README's one ```python block that contains ``marker``, for tests
    that run the examples it shows."""
    import re
    from pathlib import Path

    blocks = re.findall(r"```python\n(.*?)```", (Path(__file__).parents[1] / "README.md").read_text(), re.S)

    def find(marker: str) -> str:
        found = [b for b in blocks if marker in b]
        assert len(found) == 1, f"{len(found)} README python blocks contain {marker!r}"
        return found[0]

    return find
