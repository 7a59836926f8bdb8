"""diffusers warns at every pipeline call that a long prompt was truncated, printing the whole cut part
of every prompt of the batch; pipelines the harness loads show it once per cut text, in one short line."""

import logging

import pytest
import torch

from experiments.run.pipelines import TruncationOnce, load_pipeline, pipeline_loggers

CALLS = {  # builder, call arguments, the encoder's limit as the warning names it
    "sd3": ("cat.testing.tiny_sd3_pipeline", {"max_sequence_length": 8}, "CLIP can only handle sequences up to 77"),
    "pixart": ("cat.testing.tiny_pixart_pipeline", {"max_sequence_length": 16, "use_resolution_binning": False,
                                                    "clean_caption": False}, "T5 can only handle sequences up to 16"),
}


@pytest.fixture
def diffusers_records():
    """The records diffusers' own handler receives (its library logger does not propagate to the root)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    root = logging.getLogger("diffusers")
    root.addHandler(handler)
    yield records
    root.removeHandler(handler)


@pytest.mark.parametrize("family", list(CALLS))
def test_the_truncation_warning_is_shown_once_per_cut_text_and_short(family, diffusers_records):
    builder, kwargs, limit = CALLS[family]
    pipe = load_pipeline({"builder": builder, "family": family}, torch.device("cpu"), torch.float32)
    module_logger = logging.getLogger(type(pipe).__module__)  # where the pipeline's encode_prompt logs
    assert module_logger in pipeline_loggers(pipe)
    assert [f for f in module_logger.filters if isinstance(f, TruncationOnce)]
    # The cut part starts at word 76 (PixArt: 15); the pipelines drop its last token (CLIP's end token).
    long = ["a big red circle above a small blue square " * 8 + f"{word} " * 40 + "end" for word in ("cat", "dog")]

    def call(prompts):
        pipe(prompts, num_inference_steps=1, guidance_scale=5.0, height=32, width=32, output_type="latent",
             **kwargs)

    for _ in range(3):  # full model, method, MACs: the same prompts again
        call([long[0], "a cat"])
    call([long[0], long[1]])
    shown = [r.getMessage() for r in diffusers_records if "truncated" in r.getMessage()]
    assert len(shown) == 2, shown  # the first long prompt once, then only the second one's new cut
    cut = {"sd3": 113 - 76 - 1, "pixart": 113 - 15 - 1}[family]  # of 72 + 40 + 1 words, less the last
    for message in shown:
        assert message.startswith(f"prompt truncated ({limit} tokens): {cut} words cut, '"), message
        assert message.endswith("...'") and len(message) < 160, message
        assert "<|endoftext|>" not in message and "<pad>" not in message


def test_other_records_pass_untouched():
    record = logging.LogRecord("diffusers.pipelines.x", logging.WARNING, __file__, 1, "steps: %d", (3,), None)
    assert TruncationOnce().filter(record) and record.getMessage() == "steps: 3"
