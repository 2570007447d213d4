"""Does a random-order continuous checkpoint read a token's context, and its caption? Diagnostics for short runs.

    OMP_NUM_THREADS=2 python benchmarks/context_use.py runs/quickstart/checkpoints/last.ckpt [more.ckpt ...]

For each of `--scenes` training scenes it takes one token that is background in the true image (the
scene's middle background token) and samples it `--draws` times from the diffusion head, conditioned on
the transformer's output (EMA weights, the true caption, cfg 1) when every other true token is revealed,
and when none is. A sample counts as "object" when it lies farther from the background token than 10% of
the largest token-to-background distance in the batch. A model that reads its context draws ~0 objects
in the first case; one that does not draws about the object share of the image in both.

Caption use: with nothing revealed, the transformer's output for every token under each of the 30
colours-tag captions ("a photo of a red circle", "a photo of an orange square", ...); its standard
deviation across the prompts (per token and channel, averaged) divided by its overall standard deviation
(`evaluation.caption_use.condition_spread`, which every fit logs as caption/spread on its validation
captions). A model that ignores its caption gives 0; every token's condition then says "some object,
somewhere, of any colour".
"""

from __future__ import annotations

import argparse

import torch

from fluid_lightning.checkpointing import load
from fluid_lightning.data.pixels import images_to_float
from fluid_lightning.data.shapes import SHAPES, SceneSpec, ShapesDataset, caption_for
from fluid_lightning.data.vocabulary import COLORS
from fluid_lightning.evaluation.caption_use import condition_spread
from fluid_lightning.lit.generator_module import GeneratorModule


@torch.no_grad()
def object_rate(module: GeneratorModule, scenes: int, draws: int) -> dict[str, float]:
    generator = module.sampling_generator
    data = ShapesDataset(scenes, image_size=module.tokenizer.image_size)
    items = [data[i] for i in range(scenes)]
    tokens = module.tokenizer.encode(images_to_float(torch.stack([item["image"] for item in items])))
    text, text_mask = module.text_encoder([item["caption"] for item in items])
    ctx, ctx_mask = generator.encode_text(text, text_mask)
    background = tokens[0, 0]  # a corner token: the grey background in every scene that leaves it free
    distance = (tokens - background).norm(dim=-1)
    threshold = 0.1 * distance.max()
    rates = {}
    for label, reveal_others in (("all others revealed", True), ("nothing revealed", False)):
        objects = total = 0
        for b in range(scenes):
            candidates = (distance[b] < threshold).nonzero().flatten()
            if len(candidates) == 0:
                continue
            j = candidates[len(candidates) // 2].item()
            masked = torch.ones(1, generator.num_tokens, dtype=torch.bool)
            if reveal_others:
                masked[:] = False
                masked[0, j] = True
            z = generator.conditions(tokens[b : b + 1], masked, ctx[b : b + 1], ctx_mask[b : b + 1])
            drawn = generator.head.sample(z[0, j : j + 1].repeat(draws, 1), rng=torch.Generator().manual_seed(b))
            objects += int(((drawn - background).norm(dim=-1) > threshold).sum())
            total += draws
        rates[label] = objects / max(total, 1)
    return rates


@torch.no_grad()
def caption_spread(module: GeneratorModule) -> float:
    prompts = [caption_for(SceneSpec("colors", ((shape, color),), named_colors=True))
               for color in COLORS for shape in SHAPES]
    return condition_spread(module.sampling_generator, *module.text_encoder(prompts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument("--scenes", type=int, default=64)
    parser.add_argument("--draws", type=int, default=32)
    ns = parser.parse_args()
    print("| checkpoint | P(object at a background token), all others revealed | same, nothing revealed "
          "| caption spread of the condition |")
    print("|---|---|---|---|")
    for ckpt in ns.ckpts:
        module = load(GeneratorModule, ckpt).eval()
        generator = module.sampling_generator
        if generator.token_kind != "continuous" or generator.order != "random":
            raise SystemExit(f"{ckpt}: context use is measured for random-order continuous generators only")
        rates = object_rate(module, ns.scenes, ns.draws)
        print(f"| {ckpt} | {rates['all others revealed']:.3f} | {rates['nothing revealed']:.3f} "
              f"| {caption_spread(module):.3f} |", flush=True)


if __name__ == "__main__":
    main()
