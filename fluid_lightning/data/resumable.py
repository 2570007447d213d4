"""Map-style loading whose position Lightning checkpoints, so a run resumed mid-epoch trains on
exactly the batches an uninterrupted run would have (tests/data/test_resumable.py).

- ``ResumableSampler``: torch's ``DistributedSampler`` (a seed + epoch permutation, this rank's
  slice; Lightning calls ``set_epoch`` every epoch, a resumed one included, and leaves samplers of
  this type in place under DDP) that can start part-way through an epoch.
- ``ResumableDataLoader``: counts the batches it serves; ``state_dict``/``load_state_dict`` are
  what Lightning saves in the checkpoint's loop state and hands back on resume. Its own seeded
  generator draws the worker seeds, so loading data never touches the global torch RNG, whose
  checkpointed state then drives masks and noise exactly as in an uninterrupted run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def pin_memory_or_default(pin_memory: bool | None) -> bool:
    """``None``: pin when CUDA is available. A pinned batch copies to the GPU without holding up the
    Python thread that queues the step's kernels (a pageable one blocks it for the whole copy)."""
    return torch.cuda.is_available() if pin_memory is None else pin_memory


def resolve_rank(trainer, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): given explicitly, else the trainer's, torch.distributed's or the environment's."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if trainer is not None:
        return trainer.global_rank, trainer.world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` whose next epoch can start ``start`` samples in (this rank's samples)."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int, shuffle: bool, seed: int):
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0  # samples of this epoch to skip, set by ResumableDataLoader.load_state_dict

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0  # only the resumed epoch starts late
        return iter(indices[start:])


class CountingDataLoader(DataLoader):
    """A DataLoader that counts the batches of the current epoch it has served: the position a
    checkpoint records and a resume skips (``ResumableDataLoader``, ``webdata.EpochDataLoader``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._served, self._exhausted = 0, False

    def _count(self, iterator, skipped: int):
        self._served, self._exhausted = skipped, False
        return self._counted(iterator)

    def _counted(self, iterator):
        for batch in iterator:
            self._served += 1
            yield batch
        self._exhausted = True


class ResumableDataLoader(CountingDataLoader):
    """A DataLoader (same arguments: Lightning re-creates loaders from them, e.g. for ``predict``) over
    a ``ResumableSampler``; give it ``generator=torch.Generator().manual_seed(seed)``."""

    def __iter__(self):
        # Read before iterating: worker processes start (and take the sampler's start) in super().__iter__().
        start = getattr(self.sampler, "start", 0)  # Lightning may have swapped in a sampler of its own
        return self._count(super().__iter__(), skipped=start // self.batch_size if start else 0)

    def state_dict(self) -> dict[str, int]:
        return {"batches": self._served}  # the epoch itself is Lightning's (it calls set_epoch)

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError(f"cannot resume {type(self.sampler).__name__}: ResumableDataLoader needs a ResumableSampler")
        # A finished epoch (saved at its last batch) resumes at the next epoch's start.
        self.sampler.start = 0 if state["batches"] >= len(self) else state["batches"] * self.batch_size
