"""CLIP score offline, with a tiny random CLIP saved to a folder (transformers 5)."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast

from fluid_lightning.callbacks.clip_score import CLIPScoreCallback
from fluid_lightning.evaluation.clip import clip_score_update, make_clip_score


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
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


def test_clip_score_runs_offline_on_a_local_folder_and_depends_on_the_images(tiny_clip_dir):
    metric = make_clip_score(str(tiny_clip_dir))
    captions = ["a photo of a red circle", "three yellow circles", "two blue squares above a green triangle"] * 4
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(12, 3, 32, 32, generator=g), torch.rand(12, 3, 32, 32, generator=g)
    clip_score_update(metric, a, captions)
    score_a = float(metric.compute())
    assert score_a > 0
    metric.reset()
    clip_score_update(metric, a, captions)
    assert float(metric.compute()) == pytest.approx(score_a)
    metric.reset()
    clip_score_update(metric, b, captions)
    assert float(metric.compute()) != pytest.approx(score_a)


def test_missing_clip_weights_warn_once_and_training_goes_on(tmp_path):
    callback = CLIPScoreCallback(model=str(tmp_path / "no-clip-here"))
    with pytest.warns(UserWarning, match="CLIPScoreCallback is off"):
        callback.setup(None, None, "fit")
    assert callback.run(None, None) is None


def test_strict_clip_callback_refuses_to_start_without_weights(tmp_path):
    with pytest.raises(OSError, match="could not load CLIP"):
        CLIPScoreCallback(model=str(tmp_path / "no-clip-here"), strict=True).setup(None, None, "fit")


def test_clip_callback_logs_a_score_during_fit(tiny_clip_dir, tmp_path):
    from fluid_lightning.cli import lightning_cli

    cli = lightning_cli(
        ["fit", "--config", "conf/trainer/cpu.yaml", "--config", "conf/data/shapes.yaml", "--config",
         "conf/model/tiny_maskgit.yaml", "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
         "--data.init_args.batch_size=2", "--trainer.default_root_dir", str(tmp_path),
         "--trainer.callbacks+=fluid_lightning.callbacks.clip_score.CLIPScoreCallback",
         f"--trainer.callbacks.model={tiny_clip_dir}", "--trainer.callbacks.num_images=3",
         "--trainer.callbacks.num_steps=2"]
    )
    assert torch.isfinite(cli.trainer.callback_metrics["val/clip_score"])
