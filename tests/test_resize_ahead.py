"""Images resized ahead of the processor and patchified by numpy: the processor's own outputs, bit for bit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.gemma3.image_processing_gemma3 import Gemma3ImageProcessor
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

from tests.tokenize_fixtures import tiny_model
from vlmdata.errors import RowError
from vlmdata.models.loading import load_processor
from vlmdata.models.registry import load_template
from vlmdata.patches import numpy_patches, patchifies_like_qwen2_vl
from vlmdata.processor_call import PLAIN_CALL, ProcessorCall
from vlmdata.resize_ahead import resize_ahead_settings, resized_channels_first

RESIZES_AHEAD = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "gemma3"]
CODES = {"do_rescale": False, "do_normalize": False, "return_tensors": "pt"}


def photo(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A gradient under noise: resizing it gives every level of every channel."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.linspace(0, 180, height), np.linspace(0, 60, width))
    pixels = ramp[..., None] + rng.normal(0, 25, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert(mode)


def conversation(*images: Image.Image) -> list[dict]:
    content = [{"type": "image", "image": image} for image in images] + [{"type": "text", "text": "What is it?"}]
    return [{"role": "user", "content": content}, {"role": "assistant", "content": [{"type": "text", "text": "Grain."}]}]


def with_image_processor(alias: str, image_processor):
    """The family's tiny processor holding `image_processor` instead of its own."""
    processor = copy.copy(load_processor(str(tiny_model(alias))).processor)
    processor.image_processor = image_processor
    return processor


REAL_SIZE = [("qwen2_vl", Qwen2VLImageProcessor()), ("gemma3", Gemma3ImageProcessor(size={"height": 896, "width": 896}))]


@pytest.mark.parametrize("alias, image_processor", REAL_SIZE,
                         ids=["qwen2_vl at its real size", "gemma3 at its real size"])
@pytest.mark.parametrize("size", [(768, 576), (1500, 1100), (57, 31), (2100, 2100)],
                         ids=["photo", "shrunk", "enlarged", "beyond Pillow's block"])
def test_resized_ahead_images_give_the_image_processor_s_own_pixels(alias, image_processor, size):
    settings = resize_ahead_settings(with_image_processor(alias, image_processor))
    assert settings is not None
    image = photo(*size, seed=size[0])
    resized = resized_channels_first(image_processor, settings, image)
    assert resized.dtype == torch.uint8 and resized.is_contiguous() and resized.shape[0] == 3
    own = image_processor(image, **CODES)["pixel_values"]
    ahead = image_processor(resized, input_data_format="channels_first", do_resize=False, **CODES)["pixel_values"]
    assert ahead.dtype == own.dtype == torch.uint8
    assert torch.equal(ahead, own)


@pytest.mark.parametrize("alias", RESIZES_AHEAD)
def test_rows_resized_ahead_give_the_plain_call_tensors(alias):
    loaded = load_processor(str(tiny_model(alias)))
    template = load_template(loaded.family.template_name)
    settings = resize_ahead_settings(loaded.processor)
    assert settings is not None, alias
    ahead = ProcessorCall("np", image_arrays=True, resize_ahead=settings)
    messages = conversation(photo(300, 200, 1), photo(97, 131, 2))
    handed = [part["image"] for part in ahead.prepare(messages, loaded.processor)[0]["content"] if part["type"] == "image"]
    # Resized here: the processor is told not to resize, so what it returns comes from these tensors.
    assert all(isinstance(image, torch.Tensor) for image in handed)
    assert tuple(handed[0].shape) != (3, 200, 300) and tuple(handed[1].shape) != (3, 131, 97)
    plain, quick = PLAIN_CALL.apply(loaded.processor, messages, template), ahead.apply(loaded.processor, messages, template)
    assert set(plain) == set(quick)
    for name in plain:
        assert quick[name].dtype == plain[name].dtype and torch.equal(quick[name], plain[name]), (alias, name)


def test_a_row_with_an_image_of_another_mode_is_left_to_the_processor_s_resize():
    loaded = load_processor(str(tiny_model("qwen2_vl")))
    template = load_template(loaded.family.template_name)
    call = ProcessorCall("np", image_arrays=True, resize_ahead=resize_ahead_settings(loaded.processor))
    messages = conversation(photo(120, 80, 3), photo(64, 64, 4, mode="RGBA"))
    handed = [part["image"] for part in call.prepare(messages, loaded.processor)[0]["content"] if part["type"] == "image"]
    assert isinstance(handed[0], np.ndarray) and handed[0].shape == (3, 80, 120)  # channels first, not resized
    assert isinstance(handed[1], Image.Image)
    plain, quick = PLAIN_CALL.apply(loaded.processor, messages, template), call.apply(loaded.processor, messages, template)
    for name in plain:
        assert torch.equal(quick[name], plain[name]), name


def test_an_image_the_resize_refuses_gets_the_processor_s_own_error():
    loaded = load_processor(str(tiny_model("qwen2_vl")))
    template = load_template(loaded.family.template_name)
    call = ProcessorCall("np", image_arrays=True, resize_ahead=resize_ahead_settings(loaded.processor))
    messages = conversation(photo(1, 300))  # Qwen2-VL refuses sides more than 200 times apart
    with pytest.raises(RowError) as plain:
        PLAIN_CALL.apply(loaded.processor, messages, template)
    with pytest.raises(RowError) as quick:
        call.apply(loaded.processor, messages, template)
    assert "aspect ratio" in str(plain.value) and str(quick.value) == str(plain.value)


def test_only_known_resizes_are_made_ahead():
    assert resize_ahead_settings(with_image_processor("qwen2_vl", Qwen2VLImageProcessor(do_resize=False))) is None

    class Resized(Qwen2VLImageProcessor):
        def resize(self, *args, **kwargs):
            return super().resize(*args, **kwargs)

    assert resize_ahead_settings(with_image_processor("qwen2_vl", Resized())) is None  # a resize changed by a subclass
    for alias in ("llava", "glm4v", "pixtral", "smolvlm"):
        assert resize_ahead_settings(load_processor(str(tiny_model(alias))).processor) is None, alias


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temporal_patch_size", [1, 2])
def test_numpy_patches_are_the_image_processor_s_own(dtype, temporal_patch_size):
    image_processor = Qwen2VLImageProcessor()
    assert patchifies_like_qwen2_vl(image_processor)
    images = torch.from_numpy(np.random.default_rng(7).integers(0, 256, (2, 3, 56, 84), dtype=np.uint8)).to(dtype)
    own = image_processor.patchify(images, 14, 2, temporal_patch_size)
    with numpy_patches(image_processor):
        ours = image_processor.patchify(images, 14, 2, temporal_patch_size)
    assert ours[1:] == own[1:] == (4, 6)
    assert ours[0].dtype == own[0].dtype and torch.equal(ours[0], own[0])
    # The stand-in lasts for the block only: the image processor's own method is back.
    assert "patchify" not in vars(image_processor)


def test_settings_are_the_processor_s_own_where_processor_and_image_processor_disagree():
    # Gemma 3's image processor asks for pan and scan, which would crop a wide photo before resizing it; its
    # processor's defaults say otherwise, and win: the settings must be what the processor call does.
    processor = with_image_processor("gemma3", Gemma3ImageProcessor(size={"height": 32, "width": 32}, do_pan_and_scan=True))
    template = load_template("gemma3")
    messages = conversation(photo(1200, 400, 5))
    call = ProcessorCall("np", ("pixel_values",), image_arrays=True, resize_ahead=resize_ahead_settings(processor))
    plain = ProcessorCall("np", ("pixel_values",)).apply(processor, messages, template)
    quick = call.apply(processor, messages, template)
    assert plain["pixel_values"].shape == quick["pixel_values"].shape == (1, 3, 32, 32)
    for name in plain:
        assert torch.equal(quick[name], plain[name]), name
