import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny import SHARD_IMAGE_SIZE, TINY_T5  # noqa: E402

from fluid_lightning.data.shards import write_shapes_shards  # noqa: E402
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


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """Shapes-world WebDataset shards written once: 80 training scenes in 8 shards, 12 validation ones."""
    out = tmp_path_factory.mktemp("shapes_shards")
    stats = write_shapes_shards(out, n=80, val_n=12, size=SHARD_IMAGE_SIZE, shard_size=10, progress=False)
    assert stats["train"]["written"] == 80 and len(stats["train"]["shards"]) == 8
    return out, stats
