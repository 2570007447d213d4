"""Scaling on CPU with gloo: `parallelize` (FSDP2 + activation checkpointing + compile), DDP and FSDP2
fits through the CLI in two processes, FSDP2 = single-process training on the same global batch,
and an FSDP2 checkpoint written by two processes resuming in one and consolidating to safetensors.

Run as a script under torchrun it is the FSDP2 equivalence worker (see `_equivalence_worker`)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
from tiny import TINY_T5, kl_tokenizer, tiny_generator, vq_tokenizer

from fluid_lightning.models import T5TextEncoder
from fluid_lightning.parallel import gathered, head_blocks, is_sharded, parallelize
from fluid_lightning.sampling import SamplingSettings

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
TINY_FIT = ["--config", str(CONF / "data/shapes.yaml"), "--config", str(CONF / "model/tiny_fluid.yaml"),
            "--trainer.limit_val_batches=0", "--data.init_args.batch_size=4", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false"]


def run(args: list[str], timeout: int = 240, env: dict[str, str] = ENV) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    return proc


def fit(trainer_config: str, root: Path, *extra: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "fluid_lightning", "fit", "--config", str(CONF / "trainer" / trainer_config),
                *TINY_FIT, "--trainer.default_root_dir", str(root), *extra], timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_process_group():
    """A world of one gloo process: enough to build DTensors and FSDP2 modules in the test process."""
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield dist.device_mesh.init_device_mesh("cpu", (1,))
    dist.destroy_process_group()


def tiny_batch(b: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    t5 = T5TextEncoder(config=TINY_T5, max_length=16)
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(b, 16, 6, generator=g)
    captions = [f"a photo of {i} red circles" for i in range(b)]
    text, mask = t5(captions)
    return tokens, text, mask


# ---- parallelize, in this process ----------------------------------------------------------------
def test_parallelize_shards_every_block_keeps_names_and_trains(one_process_group):
    torch.manual_seed(0)
    reference = parallelize(tiny_generator())
    generator = parallelize(copy.deepcopy(reference), one_process_group, activation_checkpointing=True)
    assert is_sharded(generator) and not is_sharded(reference)
    # Checkpointing and sharding leave parameter names alone, so checkpoints are interchangeable.
    assert [n for n, _ in generator.named_parameters()] == [n for n, _ in reference.named_parameters()]
    assert all(type(b).__name__.startswith("FSDP") for b in [*generator.blocks, *generator.text.blocks])
    tokens, text, mask = tiny_batch()
    losses = [m(tokens, text, mask, rng=torch.Generator().manual_seed(1)) for m in (generator, reference)]
    torch.testing.assert_close(losses[0], losses[1])
    losses[0].backward()
    losses[1].backward()
    for (name, p), q in zip(generator.named_parameters(), reference.parameters()):
        # Every parameter gets a gradient (the null condition a zero one when no caption was dropped).
        torch.testing.assert_close(p.grad.full_tensor(), q.grad, msg=name)
    with gathered(generator):  # sampling bypasses forward: the root must be gathered explicitly
        out = generator.sample(text[:2], mask[:2], steps=2, cfg=2.0, rng=torch.Generator().manual_seed(0))
    assert out.shape == (2, 16, 6) and torch.isfinite(out).all()


def test_sharded_ema_update_and_adamw8bit_refusal(one_process_group):
    from fluid_lightning.lit.generator_module import GeneratorModule
    from fluid_lightning.models import PixelPatchTokenizer

    torch.manual_seed(0)
    module = GeneratorModule(tiny_generator(grid_size=4, token_dim=48), PixelPatchTokenizer(image_size=16, patch_size=4),
                             T5TextEncoder(config=TINY_T5), ema_decay=0.9, optimizer="adamw8bit")
    module._device_mesh = dist.device_mesh.init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",))
    module.configure_model()
    module.configure_model()  # idempotent: Lightning may call it again
    assert is_sharded(module.generator) and is_sharded(module.ema) and not is_sharded(module.text_encoder)
    with torch.no_grad():
        for p in module.generator.parameters():
            p.add_(1.0)
    before = module.ema.embed.weight.full_tensor().clone()
    module.update_ema(step=0)  # decay 0.1: moves 90% of the way, shard by shard
    expected = before + 0.9 * (module.generator.embed.weight.full_tensor() - before)
    torch.testing.assert_close(module.ema.embed.weight.full_tensor(), expected)
    with pytest.raises(ValueError, match="adamw8bit cannot step FSDP2"):
        module.configure_optimizers()


def test_shard_text_encoder_switch(one_process_group):
    from fluid_lightning.lit.generator_module import GeneratorModule
    from fluid_lightning.models import PixelPatchTokenizer

    torch.manual_seed(0)
    module = GeneratorModule(tiny_generator(grid_size=4, token_dim=48), PixelPatchTokenizer(image_size=16, patch_size=4),
                             T5TextEncoder(config=TINY_T5), shard_text_encoder=True)
    expected = module.text_encoder(["a photo of a red circle"])[0]
    module._device_mesh = dist.device_mesh.init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",))
    module.configure_model()
    assert is_sharded(module.text_encoder)
    torch.testing.assert_close(module.text_encoder(["a photo of a red circle"])[0], expected)
    images = module.log_images({"caption": ["a photo of a red circle"]}, SamplingSettings(steps=2, cfg=2.0))["samples"]
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_shard_tokenizer_switch(one_process_group, kind):
    from fluid_lightning.lit.generator_module import GeneratorModule
    from fluid_lightning.models import PixelPatchTokenizer

    tokenizer = kl_tokenizer() if kind == "kl" else vq_tokenizer()
    discrete = kind == "vq"
    generator = tiny_generator("discrete" if discrete else "continuous", grid_size=tokenizer.grid_size,
                               token_dim=tokenizer.token_dim, vocab_size=getattr(tokenizer, "vocab_size", 11))
    module = GeneratorModule(generator, tokenizer, T5TextEncoder(config=TINY_T5), shard_tokenizer=True)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    expected = module.tokenizer.encode(images)
    module._device_mesh = dist.device_mesh.init_device_mesh("cpu", (1,), mesh_dim_names=("data_parallel",))
    module.configure_model()
    assert is_sharded(module.tokenizer.model)
    torch.testing.assert_close(module.tokenizer.encode(images), expected)
    samples = module.log_images({"caption": ["a photo of a red circle"]}, SamplingSettings(steps=2, cfg=2.0))["samples"]
    assert samples.shape == (1, 3, 32, 32) and torch.isfinite(samples).all()

    pixels = GeneratorModule(tiny_generator(grid_size=4, token_dim=48), PixelPatchTokenizer(image_size=16, patch_size=4),
                             T5TextEncoder(config=TINY_T5), shard_tokenizer=True)
    pixels._device_mesh = module._device_mesh
    with pytest.raises(ValueError, match="no weights to shard"):
        pixels.configure_model()


@pytest.mark.slow  # cold torch.compile takes 20-40 s on 2 CPU cores
def test_compiled_blocks_give_the_eager_loss():
    torch.manual_seed(0)
    reference = tiny_generator()
    compiled = parallelize(copy.deepcopy(reference), compile=True, activation_checkpointing=True)
    tokens, text, mask = tiny_batch()
    losses = [m(tokens, text, mask, rng=torch.Generator().manual_seed(1)) for m in (compiled, reference)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-4, atol=1e-5)
    losses[0].backward()
    assert all(p.grad is not None for p in compiled.blocks.parameters())
    assert all(p.grad is not None for p in compiled.head.net.blocks.parameters())
    assert all(b._compiled_call_impl is not None for b in [*compiled.blocks, *head_blocks(compiled)])


# ---- two processes --------------------------------------------------------------------------------
def _equivalence_worker(out: str) -> None:
    """Each of 2 ranks trains its half of a global batch with FSDP2 (+ activation checkpointing);
    every rank also trains an unsharded copy on the mean of both halves' losses — what one process
    training on the global batch computes (DDP/FSDP average gradients over ranks). Random draws
    (masks, timesteps, caption dropout) come from per-half generators so both see the same ones."""
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    reference = parallelize(tiny_generator())  # unsharded: what configure_model does in one process
    sharded = parallelize(copy.deepcopy(reference), dist.device_mesh.init_device_mesh("cpu", (world,)),
                          activation_checkpointing=True)
    opt = torch.optim.AdamW(sharded.parameters(), lr=1e-3)
    opt_ref = torch.optim.AdamW(reference.parameters(), lr=1e-3)
    log = {"fsdp": [], "single": []}
    for step in range(3):
        tokens, text, mask = tiny_batch(b=4 * world, seed=step)
        halves = [x.chunk(world) for x in (tokens, text, mask)]
        gens = [torch.Generator().manual_seed(100 * step + r) for r in range(world)]
        loss = sharded(halves[0][rank], halves[1][rank], halves[2][rank], rng=gens[rank])
        loss.backward()
        opt.step()
        opt.zero_grad()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        gens = [torch.Generator().manual_seed(100 * step + r) for r in range(world)]
        ref = sum(reference(halves[0][r], halves[1][r], halves[2][r], rng=gens[r]) for r in range(world)) / world
        ref.backward()
        opt_ref.step()
        opt_ref.zero_grad()
        log["fsdp"].append(mean_loss.item() / world)
        log["single"].append(ref.item())
    full = {n: p.full_tensor() for n, p in sharded.named_parameters()}
    log["max_weight_diff"] = max((full[n] - p).abs().max().item() for n, p in reference.named_parameters())
    if rank == 0:
        Path(out).write_text(json.dumps(log))
    dist.destroy_process_group()


def test_fsdp2_loss_matches_single_process_on_the_same_global_batch(tmp_path):
    out = tmp_path / "losses.json"
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
         str(Path(__file__)), str(out)])
    log = json.loads(out.read_text())
    assert log["fsdp"] == pytest.approx(log["single"], rel=1e-5, abs=1e-6)
    assert log["max_weight_diff"] < 1e-5


def test_ddp_fits_in_two_processes_bf16_true(tmp_path):
    fit("ddp.yaml", tmp_path, "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.max_steps=3",
        "--trainer.precision=bf16-true")
    from fluid_lightning.checkpointing import safe_load

    checkpoint = safe_load(next(tmp_path.rglob("last.ckpt")))
    assert checkpoint["global_step"] == 3
    assert all(torch.isfinite(v.float()).all() for k, v in checkpoint["state_dict"].items() if k.startswith("generator."))
    assert {v.dtype for k, v in checkpoint["state_dict"].items() if k.startswith("ema.")} == {torch.float32}


class RngFingerprints(L.Callback):
    """Writes $RNG_OUT/rank<r>-step<s>: the global RNG (masks, orders, noise) each step starts from; saves
    $RNG_OUT/step2.ckpt after step 2."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        out = Path(os.environ["RNG_OUT"]) / f"rank{trainer.global_rank}-step{trainer.global_step}"
        out.write_text(hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest())

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 2:
            trainer.save_checkpoint(Path(os.environ["RNG_OUT"]) / "step2.ckpt")


def test_ddp_ranks_draw_their_own_random_streams_and_resume_them(tmp_path):
    def ddp_fit(out: Path, *extra: str) -> dict[str, str]:
        out.mkdir()
        run([sys.executable, "-m", "fluid_lightning", "fit", "--config", str(CONF / "trainer/ddp.yaml"), *TINY_FIT,
             "--trainer.default_root_dir", str(out), "--trainer.devices=2", "--trainer.accelerator=cpu",
             "--trainer.max_steps=4", "--trainer.callbacks+=test_parallel.RngFingerprints", *extra],
            env={**ENV, "RNG_OUT": str(out)})
        return {p.name: p.read_text() for p in out.glob("rank*-step*")}

    uninterrupted = ddp_fit(tmp_path / "a")
    assert len(uninterrupted) == 8
    assert uninterrupted["rank0-step0"] != uninterrupted["rank1-step0"]  # not the same masks and noise on every rank
    resumed = ddp_fit(tmp_path / "b", "--ckpt_path", str(tmp_path / "a" / "step2.ckpt"))
    assert resumed == {name: uninterrupted[name] for name in resumed} and len(resumed) == 4  # steps 2, 3 per rank


def _weights_of_sharded_checkpoint(root: Path, tmp_path: Path, prefix: str = "generator.") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from fluid_lightning.checkpointing import consolidate

    out = consolidate(next(root.rglob("last.ckpt")), tmp_path / "weights.safetensors")
    return {k: v for k, v in load_file(out).items() if k.startswith(prefix)}


def test_fsdp2_fits_in_two_processes_bf16_true(tmp_path):
    fit("fsdp2.yaml", tmp_path, "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.max_steps=3",
        "--trainer.precision=bf16-true")
    weights = _weights_of_sharded_checkpoint(tmp_path, tmp_path, prefix="")
    assert {v.dtype for k, v in weights.items() if k.startswith("generator.")} == {torch.bfloat16}  # trained in bf16
    assert {v.dtype for k, v in weights.items() if k.startswith("ema.")} == {torch.float32}  # averaged in fp32
    assert all(torch.isfinite(v.float()).all() for v in weights.values())


def test_a_one_process_checkpoint_resumes_under_fsdp2_with_its_optimizer_state(tmp_path):
    from fluid_lightning.checkpointing import safe_load

    fp32 = ("--trainer.accelerator=cpu", "--trainer.precision=32-true")
    fit("cpu.yaml", tmp_path / "one", *fp32, "--trainer.max_steps=2")
    start = str(next((tmp_path / "one").rglob("last.ckpt")))
    fit("cpu.yaml", tmp_path / "plain", *fp32, "--trainer.max_steps=3", "--ckpt_path", start)
    fit("fsdp2.yaml", tmp_path / "fsdp2", *fp32, "--trainer.devices=1", "--trainer.max_steps=3", "--ckpt_path", start)
    plain = safe_load(next((tmp_path / "plain").rglob("last.ckpt")))["state_dict"]
    sharded = _weights_of_sharded_checkpoint(tmp_path / "fsdp2", tmp_path)
    assert sharded.keys() == {k for k in plain if k.startswith("generator.")}
    for name, value in sharded.items():  # a wrongly restored AdamW state would move step 3 elsewhere
        torch.testing.assert_close(value, plain[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow  # two cold torch.compile runs on 2 CPU cores: minutes
def test_fsdp2_fits_compiled_blocks_through_the_cli(tmp_path):
    proc = fit("fsdp2.yaml", tmp_path, "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.max_steps=2",
               "--model.init_args.compile=true", timeout=900)
    assert "max_steps=2` reached" in proc.stdout + proc.stderr
    weights = _weights_of_sharded_checkpoint(tmp_path, tmp_path)
    assert all(torch.isfinite(v.float()).all() for v in weights.values())


def test_fsdp2_checkpoint_from_two_processes_resumes_in_one_and_consolidates(tmp_path):
    from fluid_lightning.checkpointing import safe_load
    from fluid_lightning.cli import main
    from fluid_lightning.pipeline import FluidPipeline

    # Two processes, bf16 autocast, activation checkpointing, gradient accumulation, sharded EMA.
    fit("fsdp2.yaml", tmp_path / "two", "--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.max_steps=2",
        "--trainer.accumulate_grad_batches=2", "--model.init_args.activation_checkpointing=true")
    sharded = next((tmp_path / "two").rglob("last.ckpt"))
    assert sharded.is_dir() and len(list(sharded.glob("*.distcp"))) == 2
    proc = fit("fsdp2.yaml", tmp_path / "one", "--trainer.devices=1", "--trainer.accelerator=cpu",
               "--trainer.max_steps=4", "--trainer.precision=32-true", "--ckpt_path", str(sharded))
    assert "Restored all states" in proc.stdout + proc.stderr
    resumed = next((tmp_path / "one").rglob("last.ckpt"))
    assert safe_load(resumed / "meta.pt")["global_step"] == 4  # the step continued from 2

    main(["checkpoint", "consolidate", str(resumed), str(tmp_path / "model.safetensors")])
    single = tmp_path / "model.safetensors"
    pipe = FluidPipeline.from_checkpoint(single)
    images = pipe.generate(["a photo of a red circle"], steps=4, cfg=2.0, seed=0)
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
    with pytest.raises(IsADirectoryError, match="checkpoint consolidate"):
        FluidPipeline.from_checkpoint(resumed)


if __name__ == "__main__":
    _equivalence_worker(sys.argv[1])
