import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny import TINY_T5  # noqa: E402

from fluid_lightning.models import T5TextEncoder  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Test tensors are tiny: one intra-op thread is as fast, and two collapse (~10x slower) when
    other processes share the CPU cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_t5() -> T5TextEncoder:
    torch.manual_seed(0)
    return T5TextEncoder(config=TINY_T5, max_length=32)


@pytest.fixture
def text(tiny_t5):
    return tiny_t5(["a photo of a red circle", "a photo of two squares", "a photo of a blue triangle"])
