"""Map-style loading that resumes: a run resumed mid-epoch (ShapesDataModule's ResumableDataLoader over a
ResumableSampler) trains on the batches it had not yet seen, with the RNG state an uninterrupted run had
at each step, with or without worker processes; and loaders pin batches by default only where CUDA is."""

from __future__ import annotations

import hashlib
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny import tiny_module

from fluid_lightning.checkpointing import AtomicCheckpointIO
from fluid_lightning.data.shapes import ShapesDataModule


class BatchFingerprints(L.Callback):
    """What each step starts from: the batch, and the global RNG that draws its masks and noise."""

    def __init__(self):
        self.seen: dict[int, tuple[str, str]] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen[trainer.global_step] = (hashlib.sha1(batch["image"].numpy().tobytes()).hexdigest(),
                                          hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest())


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_resumed_mid_epoch_continues_with_the_unseen_batches(tmp_path, workers):
    def fit(root: Path, ckpt_path=None) -> dict[int, tuple[str, str]]:
        record = BatchFingerprints()
        trainer = L.Trainer(accelerator="cpu", max_steps=10, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, default_root_dir=root,
                            plugins=[AtomicCheckpointIO()], callbacks=[record, ModelCheckpoint(
                                dirpath=root / "ckpt", every_n_train_steps=4, save_top_k=-1)])
        data = ShapesDataModule(image_size=32, num_train=24, batch_size=4, num_workers=workers)
        trainer.fit(tiny_module(), data, ckpt_path=ckpt_path)
        return record.seen

    uninterrupted = fit(tmp_path / "a")  # 6 batches per epoch: step 4 is mid-epoch, steps 6-9 the next epoch
    resumed = fit(tmp_path / "b", ckpt_path=tmp_path / "a" / "ckpt" / "epoch=0-step=4.ckpt")
    assert sorted(resumed) == list(range(4, 10))
    assert resumed == {step: uninterrupted[step] for step in resumed}  # same batches, same RNG state


def test_loaders_pin_batches_by_default_only_where_cuda_is(monkeypatch):
    """A pinned batch copies to the GPU without blocking the Python thread that queues the kernels."""
    for cuda in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert ShapesDataModule(num_train=8, num_val=8).train_dataloader().pin_memory is cuda
        assert ShapesDataModule(num_train=8, num_val=8, pin_memory=False).val_dataloader().pin_memory is False
