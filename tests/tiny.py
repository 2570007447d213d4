"""Tiny models and data built in code for tests (no downloads), shared by every test folder."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast

from fluid_lightning.cli import lightning_cli
from fluid_lightning.data.pixels import images_to_float
from fluid_lightning.data.shapes import ShapesDataset, evaluation_suite, geneval_metadata, render_scene
from fluid_lightning.data.webdata import WebDataModule
from fluid_lightning.evaluation.geneval import write_geneval_folder
from fluid_lightning.lit.generator_module import GeneratorModule
from fluid_lightning.models import (
    FluidGenerator,
    KLTokenizer,
    PixelPatchTokenizer,
    T5TextEncoder,
    VQTokenizer,
)

ROOT = Path(__file__).resolve().parents[1]  # the repository
CONF = ROOT / "conf"

TINY_T5 = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4}

# f2 autoencoders at 32x32: a 16x16 latent; KL groups it 2x2 into 8x8 tokens of 16 dims.
BLOCKS = {"block_out_channels": [32, 32], "down_block_types": ["DownEncoderBlock2D"] * 2,
          "up_block_types": ["UpDecoderBlock2D"] * 2, "layers_per_block": 1, "norm_num_groups": 32}
KL = {**BLOCKS, "latent_channels": 4}
VQ = {**BLOCKS, "latent_channels": 4, "vq_embed_dim": 4, "num_vq_embeddings": 32}


def tiny_generator(token_kind: str = "continuous", order: str = "random", grid_size: int = 4,
                   **overrides) -> FluidGenerator:
    kwargs = dict(
        token_kind=token_kind, order=order, grid_size=grid_size, token_dim=6, vocab_size=11, width=32, depth=2,
        num_heads=4, dropout=0.0, text_dim=TINY_T5["d_model"], aligner_depth=1, head_width=32, head_depth=2,
        diffusion_steps=10,
    )
    kwargs.update(overrides)
    return FluidGenerator(**kwargs)


def tiny_module(**kwargs) -> GeneratorModule:
    """A generator over 8x8-pixel patches of 32x32 images (16 tokens), seeded."""
    torch.manual_seed(0)
    return GeneratorModule(tiny_generator(grid_size=4, token_dim=192), PixelPatchTokenizer(image_size=32, patch_size=8),
                           T5TextEncoder(config=TINY_T5, max_length=16), **{"lr": 1e-3, **kwargs})


def kl_tokenizer(**kwargs) -> KLTokenizer:
    torch.manual_seed(0)
    return KLTokenizer(config=KL, image_size=32, group_size=2, **kwargs)


def vq_tokenizer() -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(config=VQ, image_size=32)


def shapes_images(n: int = 4, size: int = 32) -> torch.Tensor:
    data = ShapesDataset(n, image_size=size)
    return torch.stack([data[i]["image"] for i in range(n)])


def tiny_clip(folder: Path) -> Path:
    """A tiny random CLIP (transformers 5) with a BPE tokenizer trained here, saved to ``folder``."""
    words = ["a photo of a red circle", "two blue squares above a green triangle", "three yellow circles"]
    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(words * 10, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|startoftext|>", "<|endoftext|>"]))
    tokenizer = CLIPTokenizerFast(tokenizer_object=bpe, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=300, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    model = CLIPModel(config)
    # CLIP score clamps cosines at 0. A random CLIP maps all inputs near one direction; point the
    # image projection so that cosines come out positive and the score can move.
    probe = processor(text=words, images=[torch.full((3, 32, 32), 128, dtype=torch.uint8)] * 3, return_tensors="pt",
                      padding=True)
    with torch.no_grad():
        cos = torch.cosine_similarity(model.get_image_features(pixel_values=probe["pixel_values"]).pooler_output,
                                      model.get_text_features(input_ids=probe["input_ids"]).pooler_output)
        if cos.mean() < 0:
            model.visual_projection.weight.neg_()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_rendered_suite(root: Path, per_prompt: int = 2, wrong_every: int = 0) -> list[dict]:
    """The first 12 suite prompts in GenEval's layout, drawn by the renderer (every `wrong_every`-th prompt's
    first image left blank)."""
    suite = evaluation_suite()
    records = [geneval_metadata(s) for s in suite[:12]]
    for i, (spec, record) in enumerate(zip(suite[:12], records)):
        images = [render_scene(replace(spec, layout_seed=spec.layout_seed + n), 64)[0] for n in range(per_prompt)]
        if wrong_every and i % wrong_every == 0:
            images[0] = Image.new("RGB", (64, 64), (128, 128, 128))  # nothing drawn
        write_geneval_folder(root, i, record, images)
    return records


SHARD_IMAGE_SIZE = 32  # the shards the `shapes_dir` fixture (conftest.py) writes


def web_data(urls, **overrides) -> WebDataModule:
    """A WebDataModule on test shards: small batches, no workers, one pass."""
    args = dict(image_size=SHARD_IMAGE_SIZE, batch_size=4, num_workers=0, shuffle_buffer=8, pin_memory=False,
                persistent_workers=False, resampled=False)
    args.update(overrides)
    return WebDataModule(urls, **args)


class DataOnlyModule(L.LightningModule):
    """Just enough of a model to drive uint8 shard batches through a Trainer."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        size = SHARD_IMAGE_SIZE
        assert batch["image"].shape[1:] == (3, size, size) and len(batch["caption"]) == batch["image"].shape[0]
        assert batch["image"].dtype == torch.uint8
        return (self.weight - images_to_float(batch["image"]).mean()).pow(2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def tiny_fluid_and_shapes():
    """The tiny Fluid config's module and a 64-scene shapes data module, built as the CLI builds them."""
    cli = lightning_cli(["--config", str(CONF / "trainer/cpu.yaml"), "--config", str(CONF / "data/shapes.yaml"),
                         "--config", str(CONF / "model/tiny_fluid.yaml"), "--trainer.logger=false",
                         "--data.init_args.batch_size=4", "--data.init_args.num_train=64"], run=False)
    return cli.model, cli.datamodule


def fit_logged(tmp_path: Path, callbacks: list, max_steps: int = 3) -> Path:
    """A few steps of the tiny Fluid with ``callbacks`` and a TensorBoard logger; its log folder."""
    model, data = tiny_fluid_and_shapes()
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, limit_val_batches=0, logger=logger,
                        callbacks=callbacks, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1, default_root_dir=str(tmp_path))
    trainer.fit(model, data)
    return Path(logger.log_dir)


def tensorboard_events(log_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events
