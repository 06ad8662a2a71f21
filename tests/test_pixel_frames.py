"""Qwen2-VL's repeated frames: still images are stored with one frame per patch and rebuilt bit for bit."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
import torch

from tests.test_processor_call import photos_dir  # noqa: F401  (the photos fixture)
from tests.test_tokenize import processor_messages
from tests.tokenize_fixtures import tiny_model
from vlmdata.models.loading import load_processor
from vlmdata.models.registry import load_template
from vlmdata.pixels import PixelCodec, _processor_table, fold_frames, repeat_frames
from vlmdata.processor_call import PLAIN_CALL
from vlmdata.shards import TensorLayout, decode_codes, encode_tensors, load_shards, model_inputs, probe_layout, read_layout
from vlmdata.tokenize import tokenize

QWEN = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"]
# GLM-4.1V's image processor repeats each still image over a temporal pair too.
REPEATED_FRAMES = QWEN + ["glm4v"]


@pytest.mark.parametrize("alias", REPEATED_FRAMES)
def test_qwen_stores_one_frame_and_rebuilds_the_processor_output(alias, photos_dir, tmp_path):  # noqa: F811
    out = tmp_path / alias
    tokenize(photos_dir, out, model=str(tiny_model(alias)), progress=False)
    loaded = load_processor(str(tiny_model(alias)))
    image_processor = loaded.processor.image_processor
    frames = image_processor.temporal_patch_size
    full = 3 * frames * image_processor.patch_size**2
    layout = read_layout(out)
    spec = {spec.name: spec for spec in layout.tensors}["pixel_values"]
    assert (spec.pixels.repeated_frames, spec.pixels.frame_channels, spec.tail) == (frames, 3, (full,))
    saved = json.loads((out / "vlmdata.json").read_text())
    assert [spec["name"] for spec in saved["layout"]["tensors"] if "repeated_frames" in spec] == ["pixel_values"]

    template = load_template(loaded.family.template_name)
    shards = {row["id"]: row for row in load_shards(out)}
    for row in datasets.load_from_disk(str(photos_dir)):
        stored = shards[row["id"]]
        expected = PLAIN_CALL.apply(loaded.processor, processor_messages(row), template)
        patches = expected["pixel_values"].shape[0]
        assert stored["pixel_values"].dtype == np.uint8
        assert stored["pixel_values"].shape == (patches, full // frames)  # half the codes of before
        assert stored["pixel_values"].nbytes * frames == patches * full
        assert len(stored["pixel_values_float"]) == 0
        for decode in (True, False):
            rebuilt = model_inputs(stored, layout, decode_pixels=decode)
            pixels = rebuilt["pixel_values"]
            if not decode:  # the stored uint8 codes, one frame per patch, for the model's pre-hook
                assert pixels.dtype == torch.uint8 and pixels.shape == (patches, full // frames)
                pixels = decode_codes(pixels, spec)
            assert pixels.dtype == expected["pixel_values"].dtype
            assert torch.equal(pixels.view(torch.int32), expected["pixel_values"].view(torch.int32)), (alias, row["id"])
            for name, tensor in expected.items():
                if name not in ("assistant_masks", "pixel_values"):
                    assert torch.equal(rebuilt[name], tensor), (alias, name)


def _qwen_layout(probe_codes: np.ndarray) -> TensorLayout:
    """The layout `probe_layout` finds for Qwen2-VL pixels made of `probe_codes`."""
    image_processor = load_processor(str(tiny_model("qwen2_vl"))).processor.image_processor
    codec = PixelCodec(_processor_table(image_processor), channel_axis=1, split_last=True)  # what `find` picks
    probe = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "pixel_values": torch.from_numpy(codec.decode(probe_codes))}
    return probe_layout([probe], image_processor)


def test_the_probe_folds_only_repeated_frames():
    rng = np.random.default_rng(2)
    video = rng.integers(0, 256, (8, 1176), dtype=np.uint8)
    still = repeat_frames(video[:, :588], 3, 2)
    assert _qwen_layout(still).tensors[0].pixels.repeated_frames == 2
    unfolded = _qwen_layout(video).tensors[0]
    assert unfolded.pixels.repeated_frames == 1 and "repeated_frames" not in unfolded.to_dict()
    assert unfolded.stored_tail == (1176,)


@pytest.mark.parametrize("as_codes", [True, False])
def test_a_row_whose_frames_differ_is_stored_in_full(as_codes):
    rng = np.random.default_rng(1)
    video = rng.integers(0, 256, (8, 1176), dtype=np.uint8)  # two different frames in every patch
    assert fold_frames(video, 3, 2) is None
    still = repeat_frames(video[:, :588], 3, 2)
    layout = _qwen_layout(still)
    spec = layout.tensors[0]
    assert spec.pixels.repeated_frames == 2
    for codes, folded in ((video, False), (still, True)):
        floats = spec.pixels.codec.decode(codes)
        given = codes if as_codes else floats  # the quick call hands over codes, the plain call floats
        columns = encode_tensors({"input_ids": torch.zeros(1, 3, dtype=torch.long), "pixel_values": torch.from_numpy(given)}, layout)
        if folded:
            assert columns["pixel_values"].shape == (8, 588) and len(columns["pixel_values_float"]) == 0
        else:
            assert columns["pixel_values"].shape == (0, 588) and len(columns["pixel_values_float"]) == 8 * 1176
        row = {"input_ids": np.zeros(3, np.int32), "labels": np.zeros(3, np.int32), **columns}
        rebuilt = model_inputs(row, layout)["pixel_values"]
        assert rebuilt.dtype == torch.float32
        assert np.array_equal(rebuilt.numpy().view(np.uint32), floats.view(np.uint32))


def test_fold_and_repeat_frames_are_inverse():
    folded = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 15)
    full = repeat_frames(folded, 3, 2)
    assert full.shape == (2, 30)
    assert np.array_equal(full.reshape(2, 3, 2, 5)[:, :, 0], full.reshape(2, 3, 2, 5)[:, :, 1])
    assert np.array_equal(fold_frames(full, 3, 2), folded)
    assert fold_frames(np.zeros((0, 30), np.uint8), 3, 2).shape == (0, 15)
