"""The one `load` every entry point uses: checkpoints written before today's names still load and sample
the same images; a file of the wrong kind, a sharded directory or a bare state dict is named in one line.

tests/data_files/pre_house_generator.{ckpt,safetensors} were written by commit bd3ee64 (before the
sampling settings, `token_kind`, `T5TextEncoder` and `mask_token` names) with
    python -m fluid_lightning fit --config tests/data_files/pre_house_generator.yaml
    python -m fluid_lightning checkpoint consolidate <its last.ckpt> pre_house_generator.safetensors
and pre_house_samples.png is what that commit's FluidPipeline drew from them with
    pipe.generate(["a photo of a red circle", "a photo of two squares"], num_steps=4, cfg=2.0, seed=0)
"""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import CONF, ROOT, tiny_module

from fluid_lightning.checkpointing import load, upgrade_hparams
from fluid_lightning.cli import main
from fluid_lightning.lit.generator_module import GeneratorModule
from fluid_lightning.lit.tokenizer_module import TokenizerModule
from fluid_lightning.pipeline import FluidPipeline, make_grid, to_pil
from fluid_lightning.sampling import SamplingSettings

OLD = ROOT / "tests/data_files"


@pytest.mark.parametrize("name", ["pre_house_generator.ckpt", "pre_house_generator.safetensors"])
def test_a_checkpoint_written_before_the_renames_loads_and_draws_the_same_images(name):
    pipe = FluidPipeline.from_checkpoint(OLD / name)
    assert pipe.sampling == SamplingSettings(steps=4, cfg=2.0)  # its sample_steps / sample_cfg
    assert pipe.generator.token_kind == "continuous" and not pipe.text_encoder.trainable
    # linspace: the timestep spacing of that version (today's default leaves out the singular last step)
    images = pipe.generate(["a photo of a red circle", "a photo of two squares"], seed=0, timestep_spacing="linspace")
    expected = np.asarray(Image.open(OLD / "pre_house_samples.png"))
    assert np.array_equal(np.asarray(make_grid(to_pil(images))), expected)


def test_a_checkpoint_written_before_the_renames_resumes_through_the_cli(tmp_path):
    config = (OLD / "pre_house_generator.yaml").read_text().replace("tokens:", "token_kind:")  # today's names
    config = config.replace("FrozenT5", "T5TextEncoder").replace("sample_steps: 4\n    sample_cfg: 2.0",
                                                                 "sampling: {steps: 4, cfg: 2.0}")
    config = config.replace("num_sampling_timesteps", "diffusion_steps")
    (tmp_path / "config.yaml").write_text(config)
    main(["fit", "--config", str(tmp_path / "config.yaml"), "--trainer.max_steps=3",
          "--checkpoint.dirpath", str(tmp_path), "--trainer.default_root_dir", str(tmp_path),
          "--ckpt_path", str(OLD / "pre_house_generator.ckpt")])
    resumed = load(GeneratorModule, tmp_path / "last.ckpt")
    assert resumed.sampling == SamplingSettings(steps=4, cfg=2.0)
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 3


def test_upgrade_renames_old_keys_and_leaves_current_configs_alone():
    old = {"sample_steps": 8, "sample_temperature": 0.5, "lr": 1.0,
           "generator": {"class_path": "x.FluidGenerator",
                         "init_args": {"tokens": "discrete", "width": 4, "num_sampling_timesteps": 7}},
           "text_encoder": {"class_path": "fluid_lightning.models.text.FrozenT5", "init_args": {"freeze": False}}}
    new = upgrade_hparams(old)
    assert new["sampling"] == {"steps": 8, "temperature": 0.5} and "sample_steps" not in new
    assert new["generator"]["init_args"] == {"token_kind": "discrete", "width": 4, "diffusion_steps": 7}
    assert new["text_encoder"] == {"class_path": "fluid_lightning.models.text.T5TextEncoder",
                                   "init_args": {"trainable": True}}
    assert old["generator"]["init_args"]["tokens"] == "discrete"  # a copy: the caller's dict is untouched
    assert upgrade_hparams(new) == new


def test_load_names_a_wrong_kind_a_directory_a_missing_file_and_a_bare_state_dict(tmp_path):
    with pytest.raises(ValueError, match="is a GeneratorModule checkpoint; this needs a TokenizerModule one"):
        load(TokenizerModule, OLD / "pre_house_generator.ckpt")
    (tmp_path / "sharded.ckpt").mkdir()
    with pytest.raises(IsADirectoryError, match="checkpoint consolidate"):
        load(GeneratorModule, tmp_path / "sharded.ckpt")
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load(GeneratorModule, tmp_path / "absent.ckpt")
    torch.save({"state_dict": tiny_module().state_dict()}, tmp_path / "bare.ckpt")
    with pytest.raises(ValueError, match="holds no model config"):
        load(GeneratorModule, tmp_path / "bare.ckpt")
    (tmp_path / "plain.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load(GeneratorModule, tmp_path / "plain.safetensors")


def test_a_module_built_from_a_config_round_trips_through_load(tmp_path):
    from fluid_lightning.config import load_config

    config = load_config(CONF / "data/shapes.yaml", CONF / "model/tiny_maskgit.yaml")["model"]["init_args"]
    module = GeneratorModule.from_config(config)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, tmp_path / "m.ckpt")
    loaded = load(GeneratorModule, tmp_path / "m.ckpt")
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
