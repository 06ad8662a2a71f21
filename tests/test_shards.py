"""Token shards: storage is compact and typed, rows rebuild into model inputs the tiny models train on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer

from tests.tokenize_fixtures import FAMILIES, normalised, tiny_model
from vlmdata.batching import Batching, Padding
from vlmdata.labels import IGNORE_INDEX, make_labels, media_mask, text_cut_allowed
from vlmdata.shards import TensorLayout, TensorSpec, load_shards, model_inputs, probe_layout, read_layout
from vlmdata.tensor_spec import Storage
from vlmdata.tokenize import tokenize


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return normalised(tmp_path_factory.mktemp("shards"), with_audio=True)


def test_fixed_shapes_become_arrays_and_varying_ones_flat():
    def output(length: int, patches: int, height: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": torch.zeros(1, length, dtype=torch.long),
            "attention_mask": torch.ones(1, length, dtype=torch.long),
            "token_type_ids": torch.zeros(1, length, dtype=torch.long),
            "pixel_values": torch.zeros(patches, 1176),
            "image_sizes": torch.zeros(1, 3, height, 8),
        }

    layout = probe_layout([output(10, 4, 8), output(20, 8, 16)])
    specs = {spec.name: spec for spec in layout.tensors}
    assert set(specs) == {"token_type_ids", "pixel_values", "image_sizes"}
    assert specs["token_type_ids"].per_token and specs["token_type_ids"].storage == "list"
    assert specs["pixel_values"].storage == "array" and specs["pixel_values"].tail == (1176,)
    assert specs["image_sizes"].storage == "flat"
    assert [specs[name].batching for name in ("token_type_ids", "pixel_values", "image_sizes")] == [
        Batching.PER_TOKEN, Batching.PER_ITEM, Batching.PER_ITEM]
    features = layout.features()
    assert isinstance(features["pixel_values"], datasets.Array2D) and features["pixel_values"].dtype == "float32"


def test_a_spec_is_built_with_keywords_only():
    with pytest.raises(TypeError):
        TensorSpec("token_type_ids", Batching.PER_TOKEN, Storage.LIST, "torch.int64", "int32")  # type: ignore[misc]
    spec = TensorSpec(name="token_type_ids", batching=Batching.PER_TOKEN, storage=Storage.LIST,
                      dtype="torch.int64", stored_dtype="int32")
    assert spec.per_token and spec.batch_rule.padding is Padding.REPEAT_LAST


def test_a_layout_saved_before_batching_was_declared_loads_with_its_rules_and_saves_the_same():
    # Entries as Mllama's and Qwen2-VL's shards have always saved them: the batching rule is derived from
    # `per_token` and `batched`, and Mllama's aspect ratio mask keeps its own padding.
    table = [[(code / 255 - mean) / 0.27 for code in range(256)] for mean in (0.48, 0.46, 0.41)]
    def ints(name: str, per_token: bool, storage: str, tail: list[int], batched: bool) -> dict:
        return {"name": name, "per_token": per_token, "storage": storage, "dtype": "torch.int64",
                "stored_dtype": "int32", "tail": tail, "codec": None, "batched": batched}

    saved = {"tensors": [
        ints("aspect_ratio_mask", False, "flat", [], True),
        ints("cross_attention_mask", True, "flat", [], True),
        ints("image_grid_thw", False, "array", [3], False),
        {"name": "pixel_values", "per_token": False, "storage": "array", "dtype": "torch.float32",
         "stored_dtype": "uint8", "tail": [1176], "codec": {"table": table, "channel_axis": 1, "split_last": True}, "batched": False,
         "repeated_frames": 2, "frame_channels": 3},
    ]}
    layout = TensorLayout.from_dict(json.loads(json.dumps(saved)))

    assert json.dumps(layout.to_dict()) == json.dumps(saved)
    rules = layout.batch_rules(pad_token_id=5)
    assert {name: (rule.batching, rule.padding, rule.pad) for name, rule in rules.items()} == {
        "input_ids": (Batching.PER_TOKEN, Padding.VALUE, 5),
        "attention_mask": (Batching.PER_TOKEN, Padding.VALUE, 0),
        "labels": (Batching.PER_TOKEN, Padding.VALUE, IGNORE_INDEX),
        "aspect_ratio_mask": (Batching.PER_ROW, Padding.FIRST_TILE, 0),
        "cross_attention_mask": (Batching.PER_TOKEN, Padding.REPEAT_LAST, 0),
        "image_grid_thw": (Batching.PER_ITEM, Padding.VALUE, 0),
        "pixel_values": (Batching.PER_ITEM, Padding.VALUE, 0),
    }
    pixels = layout.tensors[-1]
    assert pixels.storage is Storage.ARRAY and pixels.stored_tail == (588,)
    assert rules["pixel_values"].pixels is pixels.pixels and pixels.pixels.dtype == "torch.float32"
    folded = "uint8 codes + rescale/normalise table, one of 2 repeated frames per patch"
    assert layout.pixel_storage() == {"pixel_values": folded}


@pytest.mark.parametrize("alias", ["gemma3", "qwen2_vl", "pixtral", "mllama"])
def test_no_float64_and_no_nested_python_lists(alias, data_dir, tmp_path):
    tokenize(data_dir, tmp_path / "shards", model=str(tiny_model(alias)), progress=False)
    features = datasets.load_from_disk(str(tmp_path / "shards")).features
    saved = json.loads((tmp_path / "shards" / "vlmdata.json").read_text())["layout"]
    assert json.dumps(read_layout(tmp_path / "shards").to_dict()) == json.dumps(saved)
    for name, feature in features.items():
        dtype = getattr(feature, "dtype", None) or getattr(getattr(feature, "feature", None), "dtype", None)
        assert dtype != "float64", name
        assert not isinstance(getattr(feature, "feature", None), datasets.List), f"{name} is a nested list"


def test_labels_ignore_media_padding_and_untrained_turns():
    ids = np.array([1, 50, 50, 7, 8, 2, 9, 10, 0])
    assistant = np.array([0, 0, 0, 1, 1, 0, 1, 1, 0])
    attention = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0])
    media = ids == 50
    assert make_labels(ids, assistant, attention, media).tolist() == [-100, -100, -100, 7, 8, -100, 9, 10, -100]
    assert make_labels(ids, assistant, attention, media, "last").tolist() == [-100] * 6 + [9, 10, -100]
    assert make_labels(ids, assistant, attention, media, "all").tolist() == [1, -100, -100, 7, 8, 2, 9, 10, IGNORE_INDEX]
    assert text_cut_allowed(media, 3) and not text_cut_allowed(media, 2)


def test_the_timestamp_text_before_each_video_frame_is_media():
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("qwen2_vl"))
    # As Qwen3-VL's processor expands a video of two frames, after an image whose text ends like a timestamp.
    frame = "<|vision_start|><|video_pad|><|video_pad|><|vision_end|>"
    text = ("Look at <0.5 seconds><|vision_start|><|image_pad|><|vision_end|> and "
            f"<|vision_start|><0.5 seconds>{frame}<12.5 seconds>{frame}<|vision_end|> now")
    ids = np.array(tokenizer(text)["input_ids"])
    media_ids = set(tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]))
    mask = media_mask(ids, media_ids, tokenizer.convert_tokens_to_ids(["<|vision_start|>", "<|video_pad|>"]),
                      re.compile(r"<\d+(\.\d+)? seconds>"), tokenizer.decode)

    def text_of(selected):
        return tokenizer.decode(ids[selected].tolist())

    assert text_of(mask) == (f"<|vision_start|><|image_pad|><|vision_end|><|vision_start|><0.5 seconds>{frame}"
                             f"<12.5 seconds>{frame}<|vision_end|>")
    assert text_of(~mask) == "Look at <0.5 seconds> and  now"
    # Without a timestamp rule only the media tokens are media.
    assert text_of(media_mask(ids, media_ids)).count("seconds") == 0


@pytest.mark.slow
@pytest.mark.parametrize("alias", FAMILIES)
def test_tiny_model_trains_on_rows_rebuilt_from_shards(alias, data_dir, tmp_path):
    summary = tokenize(data_dir, tmp_path / "shards", model=str(tiny_model(alias)), progress=False)
    assert summary.rows_written >= 3
    model = AutoModelForImageTextToText.from_pretrained(tiny_model(alias))
    model.train()
    layout = read_layout(tmp_path / "shards")
    for row in load_shards(tmp_path / "shards"):
        inputs = model_inputs(row, layout)
        # As a trainer does: Llama 4's processor returns bfloat16 pixels, the tiny model is float32.
        inputs = {k: v.to(model.dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        loss = model(**inputs).loss
        assert torch.isfinite(loss), f"{alias} {row['id']}"
        loss.backward()
