"""The tiny pipelines the method tests run: SD3 and PixArt with CFG, a batch of two prompts, 10 steps."""

import torch

from cat import testing

STEPS = 10
PROMPTS = ["a red circle", "a blue square"]
CALL = {
    "sd3": (testing.tiny_sd3_pipeline, {"max_sequence_length": 8}),
    "pixart": (testing.tiny_pixart_pipeline, {"use_resolution_binning": False, "max_sequence_length": 16,
                                              "clean_caption": False}),
}


def tiny_family(name: str):
    """(pipeline, generate): `generate(overrides)` runs the pipeline on PROMPTS with one seeded generator per
    prompt and returns the latents."""
    make, kwargs = CALL[name]
    pipe = make()

    def generate(overrides=None):
        return pipe(PROMPTS, guidance_scale=5.0, height=32, width=32, output_type="latent",
                    generator=[torch.Generator().manual_seed(i) for i in range(2)],
                    **{"num_inference_steps": STEPS, **kwargs, **(overrides or {})}).images

    return pipe, generate
