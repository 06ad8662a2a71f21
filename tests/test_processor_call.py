"""The quick processor call tokenize picks: shards still equal the plain call's output, bit for bit, on photos."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BatchFeature

from tests.test_tokenize import processor_messages
from tests.tokenize_fixtures import FAMILIES, tiny_model
from vlmdata.convert import convert
from vlmdata.errors import RowError
from vlmdata.models.loading import load_processor
from vlmdata.models.registry import get_family, load_template
from vlmdata.pillow_pixels import channels_first
from vlmdata.processor_call import PLAIN_CALL, ProcessorCall, _to_torch
from vlmdata.shards import load_shards, model_inputs, read_layout
from vlmdata.tokenize import tokenize

# Families whose image processor pads images or tiles with zeros after normalising (Pixtral pads the images of
# a row to the largest, Mllama fills unused tiles, LFM2-VL pads each tile's patches to the most a tile can hold):
# no uint8 code gives 0.0, so their pixels are encoded from the normalised floats. SmolVLM2's image processor
# lays every crop into a float tensor of zeros, padded or not, and its video processor pads a row's shorter
# videos with frames of 0.0. Every other family hands its uint8 pixels over as they are.
PADS_AFTER_NORMALISING = {"pixtral", "mistral3", "mllama", "lfm2_vl", "smolvlm"}
# Asked for no tensors, Llama 4's image processor returns its tiles as one array per image, which stack to
# another shape: its tokenizer's lists cannot be taken, so it is asked for numpy.
STACKS_IMAGES_OTHERWISE = {"llama4"}
# SmolVLM2's processor counts a video's frames from the shape of its pixels, which lists have not: it is asked for numpy.
COUNTS_FRAMES_FROM_ARRAYS = {"smolvlm"}
# InternVL's processor slices and joins its pixels as torch tensors: it is asked for torch.
TAKES_ONLY_TORCH = {"internvl"}
# The Qwen image processors repeat each still image twice per patch unless asked for one frame. GLM-4.1V's
# repeats too, but its resize budgets pixels by the repeats: asked for one frame, it resizes differently.
FOLDS_WHEN_ASKED = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"}
# The Qwen image processors and Gemma 3's resize first, from the image alone (see vlmdata/resize_ahead.py).
RESIZES_AHEAD = FOLDS_WHEN_ASKED | {"gemma3"}


def photo(path: Path, width: int, height: int, seed: int) -> str:
    """A photo-like PNG: a gradient under noise, so that resizing produces every level of every channel."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.linspace(0, 180, height), np.linspace(0, 60, width))
    pixels = ramp[..., None] + rng.normal(0, 25, (height, width, 3)) + rng.integers(0, 40, 3)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path.name


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rows = [
        {"id": "one-photo", "messages": [
            {"role": "user", "content": [{"type": "image", "path": photo(folder / "a.png", 300, 200, 1)},
                                         {"type": "text", "text": "What is in the photo?"}]},
            {"role": "assistant", "content": "Grain over a gradient."},
        ]},
        {"id": "two-photos", "messages": [
            {"role": "user", "content": [{"type": "image", "path": photo(folder / "b.png", 97, 131, 2)},
                                         {"type": "image", "path": photo(folder / "c.png", 50, 400, 3)},
                                         {"type": "text", "text": "Which is taller?"}]},
            {"role": "assistant", "content": "The second one."},
        ]},
    ]
    (folder / "rows.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    convert([str(folder / "rows.jsonl")], folder / "normalised", progress=False)
    return folder / "normalised"


def test_every_family_gets_its_quick_call_and_the_same_tensors(photos_dir, tmp_path):
    # All families in one process: a call for one family must not change how the next one is called.
    for alias in FAMILIES:
        out = tmp_path / alias
        summary = tokenize(photos_dir, out, model=str(tiny_model(alias)), progress=False)
        assert summary.rows_written == 2, (alias, summary.rejects_by_reason)
        call = json.loads((out / "vlmdata.json").read_text())["processor_call"]
        as_numpy = STACKS_IMAGES_OTHERWISE | COUNTS_FRAMES_FROM_ARRAYS
        expected_tensors = "np" if alias in as_numpy else "pt" if alias in TAKES_ONLY_TORCH else None
        assert call["return_tensors"] == expected_tensors, (alias, call)
        assert call["vectorised_masks"] and call["image_arrays"], alias
        codes = [] if alias in PADS_AFTER_NORMALISING else ["pixel_values"]
        if "video" in get_family(alias).modalities and codes:  # video pixels are asked for as codes as well
            codes.append("pixel_values_videos")
        assert call["pixel_codes"] == codes, alias
        assert call["folded"] == (["pixel_values"] if alias in FOLDS_WHEN_ASKED else []), alias
        assert (call["resize_ahead"] is not None) == (alias in RESIZES_AHEAD), alias
        assert call["numpy_patches"] == (alias in FOLDS_WHEN_ASKED), alias  # Qwen2-VL's patchify

        loaded = load_processor(str(tiny_model(alias)))
        template = load_template(loaded.family.template_name)
        shards, layout = {row["id"]: row for row in load_shards(out)}, read_layout(out)
        for row in datasets.load_from_disk(str(photos_dir)):
            expected = PLAIN_CALL.apply(loaded.processor, processor_messages(row), template)
            rebuilt = model_inputs(shards[row["id"]], layout)
            for name, tensor in expected.items():
                if name == "assistant_masks":
                    continue
                assert rebuilt[name].dtype == tensor.dtype, (alias, name)
                assert torch.equal(rebuilt[name], tensor), (alias, row["id"], name)
            if alias not in PADS_AFTER_NORMALISING or alias == "lfm2_vl":  # codes, with no float fallback
                assert len(shards[row["id"]]["pixel_values_float"]) == 0
            if alias == "lfm2_vl":  # only the padding of the patch rows is kept apart, as runs of zeros
                assert len(shards[row["id"]]["pixel_values_zeros"]) > 0


@pytest.mark.parametrize("return_tensors", ["np", None])
def test_numpy_and_list_calls_give_the_plain_call_tensors(return_tensors):
    loaded = load_processor(str(tiny_model("qwen2_vl")))
    template = load_template(loaded.family.template_name)
    image = Image.new("RGB", (120, 80), (90, 140, 200))
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Colour?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Blue, mostly."}]}]
    plain, quick = PLAIN_CALL.apply(loaded.processor, messages, template), ProcessorCall(return_tensors).apply(loaded.processor, messages, template)
    assert set(plain) == set(quick)
    for name in plain:
        assert quick[name].dtype == plain[name].dtype and torch.equal(quick[name], plain[name]), name


@pytest.mark.parametrize("alias", FAMILIES)
def test_vectorised_masks_equal_transformers_masks_over_several_turns(alias, photos_dir):
    loaded = load_processor(str(tiny_model(alias)))
    template = load_template(loaded.family.template_name)
    image = Image.open(photos_dir.parent / "a.png")
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Grain on a ramp."}]},
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "And now?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The same, twice over."}]},
    ]
    if alias in ("llama4", "mllama"):
        messages = messages[1:]  # their templates take no system prompt with images
    codes = () if alias in PADS_AFTER_NORMALISING else ("pixel_values",)  # Llama 4's floats are bfloat16: no numpy
    plain = ProcessorCall("np", codes).apply(loaded.processor, messages, template)
    vectorised = ProcessorCall("np", codes, vectorised_masks=True).apply(loaded.processor, messages, template)
    assert plain["assistant_masks"].sum() > 0
    assert vectorised["assistant_masks"].dtype == plain["assistant_masks"].dtype
    assert torch.equal(vectorised["assistant_masks"], plain["assistant_masks"]), alias
    # The stand-in lasts for the call only: the processor's own method is back.
    assert "_adjust_assistant_masks_indices" not in vars(loaded.processor)


def test_codes_of_an_output_that_comes_as_something_else_are_refused():
    # The check that keeps unnormalised values from being stored as if they were codes of normalised ones.
    loaded = load_processor(str(tiny_model("gemma3")))
    template = load_template(loaded.family.template_name)
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (40, 40))},
                                             {"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]}]
    assert ProcessorCall("np", ("pixel_values",)).apply(loaded.processor, messages, template)["pixel_values"].dtype == torch.uint8
    with pytest.raises(RowError, match="attention_mask as torch.int64, not as unnormalised uint8 pixels"):
        ProcessorCall("np", ("pixel_values", "attention_mask")).apply(loaded.processor, messages, template)


@pytest.mark.parametrize("size, mode", [((40, 3), "RGB"), ((3, 40), "RGB"), ((60, 40), "RGBA"), ((60, 40), "L")])
def test_images_handed_over_as_arrays_give_the_plain_call_tensors(size, mode):
    # Images 3 pixels high or wide: arrays whose channel axis cannot be told from their shape alone.
    loaded = load_processor(str(tiny_model("gemma3")))
    template = load_template(loaded.family.template_name)
    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]}]
    call = ProcessorCall(image_arrays=True)
    handed = call.prepare(messages, loaded.processor)[0]["content"][0]["image"]
    # Only RGB images become arrays; any other mode keeps the processor's own conversion of its PIL image.
    assert isinstance(handed, np.ndarray) == (mode == "RGB")
    if mode == "RGB":
        assert handed.shape == (3, size[1], size[0]) and handed.flags.writeable and handed.flags.c_contiguous
    plain, quick = PLAIN_CALL.apply(loaded.processor, messages, template), call.apply(loaded.processor, messages, template)
    for name in plain:
        assert quick[name].dtype == plain[name].dtype and torch.equal(quick[name], plain[name]), (size, mode, name)


@pytest.mark.parametrize("size", [(1, 1), (3, 40), (768, 576), (2100, 2100)],
                         ids=["one pixel", "three wide", "photo", "beyond Pillow's block"])
def test_channels_first_arrays_hold_the_pixels_of_the_image(size):
    pixels = np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    # The quick path exports Pillow's memory; an image in several of Pillow's blocks exports nothing and is
    # copied the ordinary way.
    assert hasattr(image, "__arrow_c_array__")
    array = channels_first(image)
    assert array.flags.writeable and array.flags.c_contiguous
    np.testing.assert_array_equal(array, pixels.transpose(2, 0, 1))


def test_lists_become_the_tensors_transformers_makes_of_them():
    lists = {"input_ids": [[151644, 8948, 2, 0]], "attention_mask": [[1, 1, 1, 0]], "flags": [[True, False]],
             "scores": [[0.5, 1.25]], "image_grid_thw": torch.tensor([[1, 4, 6]])}
    ours, theirs = BatchFeature(dict(lists)), BatchFeature(dict(lists))
    _to_torch(ours)
    theirs.convert_to_tensors("pt")
    assert set(ours) == set(theirs)
    for name in theirs:
        assert ours[name].dtype == theirs[name].dtype and torch.equal(ours[name], theirs[name]), name
