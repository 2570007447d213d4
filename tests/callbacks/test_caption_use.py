"""CaptionUse: caption/shuffle_gap and caption/spread reach the logger at validation, and tell a model
that reads its caption from one that does not. The two measures themselves: tests/evaluation/test_caption_use.py."""

from __future__ import annotations

import lightning as L
import torch
from tiny import TINY_T5, tiny_generator

from fluid_lightning.callbacks.caption_use import CaptionUse
from fluid_lightning.lit.generator_module import GeneratorModule
from fluid_lightning.models import PixelPatchTokenizer, T5TextEncoder

CAPTIONS = ["a photo of a red circle", "a photo of a blue square"]


class TwoCaptions(L.LightningDataModule):
    """8x8 images that are all +0.8 for the first caption and all -0.8 for the second: the caption
    tells everything about the image, so a model that learns gets a large shuffle gap."""

    def _loader(self, n: int):
        images = torch.cat([torch.full((n // 2, 3, 8, 8), 0.8), torch.full((n // 2, 3, 8, 8), -0.8)])
        batch = [{"image": images[i], "caption": CAPTIONS[i >= n // 2]} for i in range(n)]

        def collate(items):
            return {"image": torch.stack([it["image"] for it in items]), "caption": [it["caption"] for it in items]}

        return torch.utils.data.DataLoader(batch, batch_size=8, shuffle=n > 8, collate_fn=collate)

    def train_dataloader(self):
        return self._loader(64)

    def val_dataloader(self):
        return self._loader(8)


def _module() -> GeneratorModule:
    torch.manual_seed(0)
    # Every token masked, so only the caption tells; v-prediction and the x0 read-out reward knowing it
    # (an ε loss barely does, see benchmarks/RESULTS.md "quickstart").
    generator = tiny_generator(grid_size=2, token_dim=48, caption_dropout=0.1, mask_ratio_min=1.0,
                               prediction_type="v", x0_loss_weight=1.0)
    return GeneratorModule(generator, PixelPatchTokenizer(image_size=8, patch_size=4),
                           T5TextEncoder(config=TINY_T5, max_length=32), lr=3e-3, ema_decay=None)


def _validate(module: GeneratorModule, max_steps: int, tmp_path) -> dict[str, float]:
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, callbacks=[CaptionUse()],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, val_check_interval=max_steps or None, check_val_every_n_epoch=None,
                        default_root_dir=str(tmp_path))
    if max_steps:
        trainer.fit(module, TwoCaptions())
    else:
        trainer.validate(module, TwoCaptions(), verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("caption/")}


def test_a_model_that_learns_its_caption_shows_a_gap_and_a_spread_an_untrained_one_does_not(tmp_path):
    before = _validate(_module(), 0, tmp_path)
    module = _module()
    after = _validate(module, 60, tmp_path)
    assert set(before) == set(after) == {"caption/shuffle_gap", "caption/spread"}
    assert abs(before["caption/shuffle_gap"]) < 0.05
    assert after["caption/shuffle_gap"] > 0.3
    assert after["caption/spread"] > 3 * before["caption/spread"]
