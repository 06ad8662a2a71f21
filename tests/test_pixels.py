"""Pixels stored as uint8 codes: a quarter of float32, rebuilt bit for bit, with a float32 fallback per row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from tests.tokenize_fixtures import FAMILIES, normalised, tiny_model
from vlmdata.pixels import PixelCodec
from vlmdata.shards import encode_tensors, load_shards, model_inputs, probe_layout, read_layout
from vlmdata.tokenize import tokenize


def _pixels(processor, sizes: list[tuple[int, int]]) -> torch.Tensor:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    content = [{"type": "image", "image": image} for image in images] + [{"type": "text", "text": "Describe."}]
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")["pixel_values"]


@pytest.mark.parametrize("alias", [alias for alias in FAMILIES])
def test_every_family_stores_noisy_pixels_as_exact_codes(alias):
    processor = AutoProcessor.from_pretrained(tiny_model(alias))
    # Noise reaches all 256 values of every channel; two sizes make the padding processors pad.
    pixels = _pixels(processor, [(61, 47), (23, 80)]).float().numpy()
    codec = PixelCodec.find(processor.image_processor, [pixels])
    assert codec is not None, alias
    codes, zero_runs = codec.encode(pixels)
    assert codes.dtype == np.uint8 and codes.shape == pixels.shape
    assert np.array_equal(codec.decode(codes, zero_runs), pixels)
    assert np.array_equal(np.signbit(codec.decode(codes, zero_runs)), np.signbit(pixels))


def test_channel_tables_differ_and_the_channel_axis_is_found():
    processor = AutoProcessor.from_pretrained(tiny_model("qwen2_vl"))
    pixels = _pixels(processor, [(56, 56)]).numpy()
    codec = PixelCodec.find(processor.image_processor, [pixels])
    # CLIP's mean and std differ per channel, and Qwen2-VL flattens the channel into each patch.
    assert len(codec.table) == 3 and codec.split_last
    wrong = PixelCodec(codec.table, channel_axis=1, split_last=False)
    assert wrong.encode(pixels) is None


def test_a_value_no_code_gives_falls_back_to_float32(tmp_path):
    processor = AutoProcessor.from_pretrained(tiny_model("gemma3"))
    good = _pixels(processor, [(40, 30)])
    outputs = {"input_ids": torch.zeros(1, 5, dtype=torch.long), "pixel_values": good}
    layout = probe_layout([outputs], processor.image_processor)
    assert layout.tensors[0].pixels is not None and layout.tensors[0].stored_dtype == "uint8"

    odd = good.clone()
    odd[0, 0, 0, 0] = 0.123456  # no uint8 code maps to this
    row = {"input_ids": np.zeros(5, np.int32), "labels": np.zeros(5, np.int32)}
    for pixels in (good, odd):
        columns = encode_tensors({"input_ids": outputs["input_ids"], "pixel_values": pixels}, layout)
        rebuilt = model_inputs({**row, **columns}, layout)["pixel_values"]
        assert torch.equal(rebuilt, pixels)
        stored_as_float = len(columns["pixel_values_float"]) > 0
        assert stored_as_float == (pixels is odd)


def test_shards_hold_a_quarter_of_the_float32_pixel_bytes(tmp_path):
    data = normalised(tmp_path / "data")
    tokenize(data, tmp_path / "shards", model=str(tiny_model("llava")), progress=False)
    layout, shards = read_layout(tmp_path / "shards"), load_shards(tmp_path / "shards")
    float32_bytes = sum(model_inputs(row, layout).get("pixel_values", torch.zeros(0)).numel() * 4 for row in shards)
    stored = shards.data.column("pixel_values")
    assert str(stored.type.value_type) == "uint8"
    # A byte per value plus Arrow's 4-byte offset per image row (20 pixels wide here, so 0.3 at most; 0.25 at
    # real sizes), and no row needed the float32 fallback.
    assert float32_bytes > 0 and stored.nbytes <= 0.3 * float32_bytes + 64 * len(shards)
    assert shards.data.column("pixel_values_float").combine_chunks().flatten().to_numpy().size == 0
