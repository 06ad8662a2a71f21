"""The tiny processors and models from fixtures/build_tiny_models.py behave like the real checkpoints."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoProcessor

ROOT = Path(__file__).resolve().parents[1]


def _load_builder():
    path = ROOT / "fixtures" / "build_tiny_models.py"
    spec = importlib.util.spec_from_file_location("build_tiny_models", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


builder = _load_builder()
FAMILIES = list(builder.FAMILIES)

EXPECTED_CLASSES = {  # alias: (processor, model)
    "gemma3": ("Gemma3Processor", "Gemma3ForConditionalGeneration"),
    "gemma3n": ("Gemma3nProcessor", "Gemma3nForConditionalGeneration"),
    "qwen2_vl": ("Qwen2VLProcessor", "Qwen2VLForConditionalGeneration"),
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2_5_VLForConditionalGeneration"),
    "qwen3_vl": ("Qwen3VLProcessor", "Qwen3VLForConditionalGeneration"),
    "qwen3_5": ("Qwen3VLProcessor", "Qwen3_5ForConditionalGeneration"),
    "llava": ("LlavaProcessor", "LlavaForConditionalGeneration"),
    "mllama": ("MllamaProcessor", "MllamaForConditionalGeneration"),
    "pixtral": ("PixtralProcessor", "LlavaForConditionalGeneration"),
    "mistral3": ("PixtralProcessor", "Mistral3ForConditionalGeneration"),
    "llama4": ("Llama4Processor", "Llama4ForConditionalGeneration"),
    "gemma4": ("Gemma4Processor", "Gemma4ForConditionalGeneration"),
    "glm4v": ("Glm4vProcessor", "Glm4vForConditionalGeneration"),
    "internvl": ("InternVLProcessor", "InternVLForConditionalGeneration"),
    "llava_onevision": ("LlavaOnevisionProcessor", "LlavaOnevisionForConditionalGeneration"),
    "lfm2_vl": ("Lfm2VlProcessor", "Lfm2VlForConditionalGeneration"),
    "smolvlm": ("SmolVLMProcessor", "SmolVLMForConditionalGeneration"),
}

# The token whose ids the model replaces with image features, as in the real checkpoints' configs.
MODEL_IMAGE_TOKEN = {
    "gemma3": "<image_soft_token>",
    "gemma3n": "<image_soft_token>",
    "qwen2_vl": "<|image_pad|>",
    "qwen2_5_vl": "<|image_pad|>",
    "qwen3_vl": "<|image_pad|>",
    "qwen3_5": "<|image_pad|>",
    "llava": "<image>",
    "mllama": "<|image|>",
    "pixtral": "[IMG]",
    "mistral3": "[IMG]",
    "llama4": "<|patch|>",
    "gemma4": "<|image|>",
    "glm4v": "<|image|>",
    "internvl": "<IMG_CONTEXT>",
    "llava_onevision": "<image>",
    "lfm2_vl": "<image>",
    "smolvlm": "<image>",
}

ORDINARY_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Résumé of the café: 3 croissants, 2 crêpes — €12.50!",
    "Zebras\tgallop\nacross   the savanna (mostly).",
    "東京 is the capital of Japan 🙂",
]

# Control tokens as the official templates write them: <start_of_turn>, <|im_start|>, [INST], <image>, and
# Gemma 4's half-open <|turn> ... <turn|>.
CONTROL_TOKEN = re.compile(r"<\|[a-z_]+\|>|<\|?[a-z_]+\|?>|\[/?[A-Z_]+\]")
# Tags the templates write as ordinary text: Qwen's vocabulary has no "<tools>" token.
PLAIN_TEXT_TAGS = {"<tools>"}
# Placeholders a processor replaces in the text before it tokenizes it, which the vocabulary need not hold.
REPLACED_PLACEHOLDERS = {"smolvlm": {"<video>"}}


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """fixtures/data/models when it holds a current build of every family, else a fresh build."""
    if all(builder.is_built(builder.DEFAULT_OUT, alias) for alias in FAMILIES):
        return builder.DEFAULT_OUT
    out = tmp_path_factory.mktemp("tiny_models")
    builder.build(out)
    return out


def drawn_image(width: int, height: int, colour: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (width, height), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    draw.rectangle([width // 8, height // 8, width // 2, height // 2], fill=colour)
    draw.ellipse([width // 2, height // 3, width - 2, height - 2], outline=(10, 10, 10), width=2)
    return image


def conversation(*images: Image.Image, audio: np.ndarray | None = None) -> list[dict]:
    content = [{"type": "image", "image": image} for image in images]
    if audio is not None:
        content.append({"type": "audio", "audio": audio})
    content.append({"type": "text", "text": "What is in this picture?"})
    return [
        {"role": "user", "content": content},
        {"role": "assistant", "content": [{"type": "text", "text": "A square and a circle."}]},
    ]


ONE_IMAGE = [drawn_image(64, 48, (200, 30, 30))]
# A wide and a tall image, so tiling (Llama 4, Mllama) and non-square grids (Qwen, Pixtral) are exercised.
TWO_IMAGES = [drawn_image(140, 50, (30, 160, 40)), drawn_image(30, 90, (20, 40, 200))]


def render(processor, messages: list[dict]):
    return processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")


def image_token_id(config) -> int:
    return config.image_token_id if hasattr(config, "image_token_id") else config.image_token_index


def expected_image_tokens(alias: str, config, inputs) -> int:
    """How many image placeholder ids the model will fill with image features, from its config alone."""
    vision = config.vision_config
    if alias == "gemma3":
        return config.mm_tokens_per_image * len(inputs["pixel_values"])
    if alias == "gemma3n":
        return config.vision_soft_tokens_per_image * len(inputs["pixel_values"])
    if alias in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "glm4v"):
        return int(inputs["image_grid_thw"].prod(-1).sum()) // vision.spatial_merge_size**2
    if alias == "llava":
        return (vision.image_size // vision.patch_size) ** 2 * len(inputs["pixel_values"])
    if alias == "mllama":
        # Images reach the text through cross-attention: one <|image|> marks each image.
        return inputs["pixel_values"].shape[1]
    if alias in ("pixtral", "mistral3"):
        step = vision.patch_size * getattr(config, "spatial_merge_size", 1)
        return sum((int(h) // step) * (int(w) // step) for h, w in inputs["image_sizes"])
    if alias == "llama4":
        patches = (vision.image_size // vision.patch_size) ** 2
        return int(patches * vision.pixel_shuffle_ratio**2) * len(inputs["pixel_values"])
    if alias == "gemma4":
        # Each image is resized to fit the soft-token budget: its real patches (not padding) pooled k x k.
        patches = int((inputs["image_position_ids"] != -1).all(-1).sum())
        return patches // vision.pooling_kernel_size**2
    if alias == "internvl":
        # Each tile's patches, pixel-shuffled by the downsample ratio.
        patches = (vision.image_size[0] // vision.patch_size[0]) * (vision.image_size[1] // vision.patch_size[1])
        return int(patches * config.downsample_ratio**2) * len(inputs["pixel_values"])
    if alias == "llava_onevision":
        # AnyRes: the base crop's features, the unpadded grid of tiles and a newline per row, as the model packs them.
        with torch.no_grad():
            return sum(len(features) for features in model_image_features(config, inputs))
    if alias == "lfm2_vl":
        # Each tile, thumbnail or whole image's patch grid, unshuffled factor x factor into one token.
        factor = config.downsample_factor
        return sum(-(-int(h) // factor) * -(-int(w) // factor) for h, w in inputs["spatial_shapes"])
    if alias == "smolvlm":
        # Each crop and global view's patches, pixel-shuffled by the scale factor.
        patches = (vision.image_size // vision.patch_size) ** 2
        return patches // config.scale_factor**2 * inputs["pixel_values"].shape[1]
    raise AssertionError(f"no expectation for {alias}")


def model_image_features(config, inputs) -> list[torch.Tensor]:
    model = AutoModelForImageTextToText.from_config(config)
    return model.model.get_image_features(
        inputs["pixel_values"], inputs["image_sizes"], batch_num_images=inputs["batch_num_images"]).pooler_output


def forward_loss(model, inputs) -> torch.Tensor:
    # Placeholder ids are never targets (Mllama's <|image|> even lies past the language model head).
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == image_token_id(model.config), -100)
    # Llama 4's image processor hands out bfloat16 pixels, as the real one does: match the model's dtype.
    inputs = {key: value.to(model.dtype) if value.is_floating_point() else value for key, value in inputs.items()}
    with torch.no_grad():
        return model(**inputs, labels=labels).loss


@pytest.fixture(scope="session")
def load(models_dir):
    cache = {}

    def loaded(alias: str):
        if alias not in cache:
            folder = models_dir / alias
            cache[alias] = (AutoProcessor.from_pretrained(folder), AutoModelForImageTextToText.from_pretrained(folder))
        return cache[alias]

    return loaded


def test_every_family_is_built():
    assert set(FAMILIES) == set(builder.REAL_CHECKPOINTS) == set(EXPECTED_CLASSES) == set(MODEL_IMAGE_TOKEN)


@pytest.mark.parametrize("alias", FAMILIES)
def test_processor_reloads_offline_with_the_official_template(alias, models_dir):
    processor = AutoProcessor.from_pretrained(models_dir / alias)
    assert type(processor).__name__ == EXPECTED_CLASSES[alias][0]
    assert processor.chat_template == builder.read_chat_template(alias)


@pytest.mark.parametrize("alias", FAMILIES)
def test_ordinary_text_has_no_unknown_tokens(alias, load):
    tokenizer = load(alias)[0].tokenizer
    for text in ORDINARY_TEXT:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("alias", FAMILIES)
def test_template_control_tokens_are_single_special_ids(alias, load):
    tokenizer = load(alias)[0].tokenizer
    control = set(CONTROL_TOKEN.findall(builder.read_chat_template(alias))) - PLAIN_TEXT_TAGS
    control -= REPLACED_PLACEHOLDERS.get(alias, set())
    control |= {token for token in (tokenizer.bos_token, tokenizer.eos_token) if token}
    assert control
    for token in sorted(control):
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, token
        assert ids[0] in tokenizer.all_special_ids, token


@pytest.mark.parametrize("alias", FAMILIES)
def test_config_special_ids_match_the_tokenizer(alias, load):
    processor, model = load(alias)
    tokenizer, config = processor.tokenizer, model.config
    text_config = config.get_text_config()
    assert image_token_id(config) == tokenizer.convert_tokens_to_ids(MODEL_IMAGE_TOKEN[alias])
    assert text_config.pad_token_id == tokenizer.pad_token_id
    if tokenizer.bos_token is not None:
        assert text_config.bos_token_id == tokenizer.bos_token_id
    eos = text_config.eos_token_id
    assert tokenizer.eos_token_id in (eos if isinstance(eos, list) else [eos])
    for name in ("boi", "eoi", "boa", "eoa", "audio"):
        for key in (f"{name}_token_id", f"{name}_token_index"):
            if getattr(config, key, None) is not None and getattr(tokenizer, f"{name}_token", None):
                assert getattr(config, key) == tokenizer.convert_tokens_to_ids(getattr(tokenizer, f"{name}_token"))
    # The largest id the tokenizer can produce must have an embedding row.
    assert len(tokenizer) <= model.get_input_embeddings().num_embeddings


@pytest.mark.parametrize("images", [ONE_IMAGE, TWO_IMAGES], ids=["one_image", "two_images"])
@pytest.mark.parametrize("alias", FAMILIES)
def test_image_tokens_match_what_the_model_expects(alias, images, load):
    processor, model = load(alias)
    inputs = render(processor, conversation(*images))
    ids = inputs["input_ids"]
    assert int((ids == image_token_id(model.config)).sum()) == expected_image_tokens(alias, model.config, inputs)
    # Every expanded placeholder is one whole token: decoding and encoding again gives the same ids.
    text = processor.tokenizer.decode(ids[0])
    assert processor.tokenizer(text, add_special_tokens=False)["input_ids"] == ids[0].tolist()


@pytest.mark.parametrize("images", [ONE_IMAGE, TWO_IMAGES], ids=["one_image", "two_images"])
@pytest.mark.parametrize("alias", FAMILIES)
def test_model_forward_gives_a_finite_loss(alias, images, load):
    processor, model = load(alias)
    assert type(model).__name__ == EXPECTED_CLASSES[alias][1]
    loss = forward_loss(model, render(processor, conversation(*images)))
    assert torch.isfinite(loss)


@pytest.mark.slow
@pytest.mark.parametrize("alias", FAMILIES)
def test_padded_batch_trains(alias, models_dir):
    folder = models_dir / alias
    processor, model = AutoProcessor.from_pretrained(folder), AutoModelForImageTextToText.from_pretrained(folder)
    model.train()
    batch = processor.apply_chat_template(
        [conversation(*ONE_IMAGE), conversation(*TWO_IMAGES)],
        tokenize=True, return_dict=True, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["input_ids"] == image_token_id(model.config), -100)
    labels = labels.masked_fill(batch["attention_mask"] == 0, -100)
    inputs = {key: value.to(model.dtype) if value.is_floating_point() else value for key, value in batch.items()}
    model(**inputs, labels=labels).loss.backward()
    grads = [param.grad for param in model.parameters() if param.grad is not None]
    assert grads and all(torch.isfinite(grad).all() for grad in grads)
    assert model.get_input_embeddings().weight.grad is not None


def test_gemma3n_takes_audio_and_image_together(load):
    processor, model = load("gemma3n")
    seconds = np.linspace(0, 1.5, 24_000, dtype=np.float32)
    audio = 0.3 * np.sin(2 * np.pi * 440 * seconds)
    inputs = render(processor, conversation(*ONE_IMAGE, audio=audio))
    ids = inputs["input_ids"]
    assert int((ids == model.config.audio_token_id).sum()) == model.config.audio_soft_tokens_per_image
    assert int((ids == model.config.image_token_id).sum()) == model.config.vision_soft_tokens_per_image
    labels = ids.masked_fill((ids == model.config.audio_token_id) | (ids == model.config.image_token_id), -100)
    with torch.no_grad():
        assert torch.isfinite(model(**inputs, labels=labels).loss)


def test_gemma4_takes_image_audio_and_video_together(load):
    from transformers.video_utils import VideoMetadata

    processor, model = load("gemma4")
    config = model.config
    seconds = np.linspace(0, 1.5, 24_000, dtype=np.float32)
    frames = np.stack([np.asarray(drawn_image(64, 48, (40 * i, 90, 200 - 40 * i))) for i in range(3)])
    messages = conversation(*ONE_IMAGE, audio=0.3 * np.sin(2 * np.pi * 440 * seconds))
    messages[0]["content"].insert(0, {"type": "video", "video": frames})
    metadata = VideoMetadata(total_num_frames=3, fps=1.0, frames_indices=[0, 1, 2], width=64, height=48)
    inputs = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"videos_kwargs": {"do_sample_frames": False, "video_metadata": [metadata]}})
    ids = inputs["input_ids"]
    # 1.5 s of audio: 40 ms a soft token.
    assert int((ids == config.audio_token_id).sum()) == processor._compute_audio_num_tokens(seconds, 16_000) == 38
    frame_patches = int((inputs["video_position_ids"] != -1).all(-1).sum())
    assert int((ids == config.video_token_id).sum()) == frame_patches // config.vision_config.pooling_kernel_size**2
    decoded = processor.tokenizer.decode(ids[0])
    assert decoded.count("<|image>") == 1 + 3  # the image and each frame
    assert "00:00 <|image>" in decoded and " 00:02 <|image>" in decoded
    media = (ids == config.audio_token_id) | (ids == config.image_token_id) | (ids == config.video_token_id)
    with torch.no_grad():
        outputs = model(**inputs, labels=ids.masked_fill(media, -100))
        assert torch.isfinite(outputs.loss)
        # Every medium reaches the logits: changing one changes them.
        for key in ("pixel_values", "pixel_values_videos", "input_features"):
            changed = {**inputs, key: inputs[key].flip(0) if key == "pixel_values_videos" else inputs[key] * 0.5}
            assert not torch.allclose(model(**changed).logits, outputs.logits), key


def test_checkpoints_stay_small(models_dir):
    sizes = {alias: sum(f.stat().st_size for f in (models_dir / alias).rglob("*") if f.is_file()) for alias in FAMILIES}
    assert max(sizes.values()) < 2 * 2**20, sizes
    assert sum(sizes.values()) < 9 * 2**20, sizes


def test_build_is_deterministic(tmp_path, models_dir):
    builder.build(tmp_path, ["gemma3", "qwen2_vl"])
    for alias in ("gemma3", "qwen2_vl"):
        for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
            assert (tmp_path / alias / name).read_bytes() == (models_dir / alias / name).read_bytes(), (alias, name)
    assert builder.is_built(tmp_path, "gemma3")
    assert not builder.is_built(tmp_path, "llava")


def test_missing_official_template_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(builder, "TEMPLATES_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="chat_templates/official"):
        builder.build(tmp_path / "out", ["llava"])


def test_unknown_family_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown families"):
        builder.build(tmp_path, ["gpt2"])



def test_qwen3_5_mixes_linear_and_full_attention(load):
    _, model = load("qwen3_5")
    assert model.config.text_config.layer_types == ["linear_attention", "full_attention"]
    layers = model.model.language_model.layers
    assert [type(layer.linear_attn).__name__ for layer in layers[:1]] == ["Qwen3_5GatedDeltaNet"]
    assert not hasattr(layers[1], "linear_attn")


@pytest.mark.parametrize("alias", ["qwen3_vl", "qwen3_5", "glm4v", "lfm2_vl", "smolvlm"])
def test_no_parameter_is_left_at_zero(alias, load):
    # Zero-initialised gates and projections would make logit comparisons pass whatever the inputs.
    _, model = load(alias)
    assert [name for name, parameter in model.named_parameters() if not parameter.any()] == []


def glm4v_video_inputs(processor, *images):
    from transformers.video_utils import VideoMetadata

    frames = np.stack([np.asarray(drawn_image(64, 48, (40 * i, 90, 200 - 40 * i))) for i in range(5)])
    messages = conversation(*images)
    messages[0]["content"].insert(0, {"type": "video", "video": frames})
    metadata = VideoMetadata(total_num_frames=10, fps=2.0, frames_indices=[0, 1, 2, 3, 4], width=64, height=48)
    return processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"videos_kwargs": {"do_sample_frames": False, "video_metadata": [metadata]}})


VIDEO_FRAMES = np.stack([np.asarray(drawn_image(64, 48, (40 * i, 90, 200 - 40 * i))) for i in range(3)])


def render_video(processor, *images: Image.Image):
    from transformers.video_utils import VideoMetadata

    messages = conversation(*images)
    messages[0]["content"].insert(0, {"type": "video", "video": VIDEO_FRAMES})
    metadata = VideoMetadata(total_num_frames=3, fps=1.0, frames_indices=[0, 1, 2], width=64, height=48)
    return processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"videos_kwargs": {"do_sample_frames": False, "video_metadata": [metadata]}})


def test_glm4v_writes_each_frame_as_an_image_followed_by_its_second(load):
    processor, model = load("glm4v")
    inputs = glm4v_video_inputs(processor)
    # Five frames are padded to three pairs, timed at 0, 1 and 2 s; the video's tokens are typed 2 (video).
    assert inputs["video_grid_thw"].tolist() == [[3, 4, 4]]
    decoded = processor.tokenizer.decode(inputs["input_ids"][0])
    frame = "<|begin_of_image|>" + "<|image|>" * 4 + "<|end_of_image|>"
    assert f"<|begin_of_video|>{frame}0{frame}1{frame}2<|end_of_video|>" in decoded
    assert int((inputs["mm_token_type_ids"] == 2).sum()) == 12
    with torch.no_grad():
        outputs = model(**inputs)
        changed = model(**{**inputs, "pixel_values_videos": inputs["pixel_values_videos"].flip(0)})
    assert torch.isfinite(outputs.logits).all() and not torch.allclose(outputs.logits, changed.logits)


def test_glm4v_forward_cannot_take_an_image_beside_a_video(load):
    # transformers counts a video's <|image|> tokens as the image's too: tokenize refuses such rows.
    processor, model = load("glm4v")
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        model(**glm4v_video_inputs(processor, *ONE_IMAGE))


def test_internvl_writes_each_video_frame_as_a_numbered_tile(load):
    processor, model = load("internvl")
    inputs = render_video(processor, *ONE_IMAGE)
    ids = inputs["input_ids"]
    # The frames come first in pixel_values, as the video comes first in the text, then the image's tile.
    assert len(inputs["pixel_values"]) == 3 + 1
    assert int((ids == model.config.image_token_id).sum()) == 4 * model.config.image_seq_length
    decoded = processor.tokenizer.decode(ids[0])
    assert "Frame1: <img>" in decoded and "</img>\nFrame3: <img>" in decoded and "Frame4" not in decoded
    with torch.no_grad():
        outputs = model(**inputs)
        frames_swapped = torch.cat([inputs["pixel_values"][:3].flip(0), inputs["pixel_values"][3:]])
        assert not torch.allclose(model(**{**inputs, "pixel_values": frames_swapped}).logits, outputs.logits)


def test_llava_onevision_pools_each_video_frame(load):
    processor, model = load("llava_onevision")
    inputs = render_video(processor, *ONE_IMAGE)
    ids = inputs["input_ids"]
    # 4x4 patch features pooled to 2x2 per frame, and one newline feature for the whole video.
    assert int((ids == model.config.video_token_id).sum()) == 3 * 4 + 1
    assert tuple(inputs["pixel_values_videos"].shape) == (1, 3, 3, 16, 16)
    with torch.no_grad():
        outputs = model(**inputs)
        changed = {**inputs, "pixel_values_videos": inputs["pixel_values_videos"].flip(1)}
        assert not torch.allclose(model(**changed).logits, outputs.logits)
        changed = {**inputs, "pixel_values": inputs["pixel_values"] * 0.5}
        assert not torch.allclose(model(**changed).logits, outputs.logits)


def test_lfm2_vl_tiles_a_large_image_with_a_thumbnail_and_keeps_a_small_one_whole(load):
    processor, model = load("lfm2_vl")
    inputs = render(processor, conversation(*ONE_IMAGE, drawn_image(20, 20, (30, 160, 40))))
    decoded = processor.tokenizer.decode(inputs["input_ids"][0])
    # 64x48 px: a 2x2 grid of 16 px tiles (4 tokens each), then a 16x24 px thumbnail (6 tokens); 20x20 px: 16 px whole.
    tile = "<image>" * 4
    tiled = "".join(f"<|img_row_{row}_col_{col}|>{tile}" for row in (1, 2) for col in (1, 2))
    thumbnail = "<|img_thumbnail|>" + "<image>" * 6
    assert f"<|image_start|>{tiled}{thumbnail}<|image_end|><|image_start|>{tile}<|image_end|>" in decoded
    assert inputs["spatial_shapes"].tolist() == [[4, 4]] * 4 + [[4, 6], [4, 4]]
    # Every row is padded to the same number of patches; the mask tells the real ones.
    assert inputs["pixel_values"].shape == (6, 32, 3 * 4 * 4)
    assert inputs["pixel_attention_mask"].sum(-1).tolist() == [16] * 4 + [24, 16]
    with torch.no_grad():
        outputs = model(**inputs)
        thumbnail_changed = inputs["pixel_values"].clone()
        thumbnail_changed[4] *= 0.5
        assert not torch.allclose(model(**{**inputs, "pixel_values": thumbnail_changed}).logits, outputs.logits)


def test_lfm2_vl_mixes_a_short_convolution_and_attention(load):
    _, model = load("lfm2_vl")
    assert model.config.text_config.layer_types == ["conv", "full_attention"]
    layers = model.model.language_model.layers
    assert type(layers[0].conv).__name__ == "Lfm2ShortConv" and not hasattr(layers[0], "self_attn")
    assert type(layers[1].self_attn).__name__ == "Lfm2Attention" and not hasattr(layers[1], "conv")


def test_smolvlm_cuts_each_image_into_crops_and_a_global_view(load):
    processor, model = load("smolvlm")
    inputs = render(processor, conversation(*ONE_IMAGE))
    # 64x48 is resized to 32x24, then cut into 2x2 crops of 16 px; the global view comes last.
    assert tuple(inputs["pixel_values"].shape) == (1, 5, 3, 16, 16)
    assert tuple(inputs["pixel_attention_mask"].shape) == (1, 5, 16, 16)
    decoded = processor.tokenizer.decode(inputs["input_ids"][0])
    crop = "<image>" * 4
    assert decoded.startswith(f"<|im_start|>User:<fake_token_around_image><row_1_col_1>{crop}"
                              f"<fake_token_around_image><row_1_col_2>{crop}\n")
    assert f"<row_2_col_2>{crop}\n\n<fake_token_around_image><global-img>{crop}<fake_token_around_image>What" in decoded
    with torch.no_grad():
        outputs = model(**inputs)
        changed = {**inputs, "pixel_values": inputs["pixel_values"].flip(1)}
        assert not torch.allclose(model(**changed).logits, outputs.logits)


def test_smolvlm_writes_each_video_frame_after_its_time_and_keeps_only_the_frames_beside_an_image(load):
    processor, model = load("smolvlm")
    inputs = render_video(processor)
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 3, 16, 16)
    decoded = processor.tokenizer.decode(inputs["input_ids"][0])
    frame = "<fake_token_around_image><global-img>" + "<image>" * 4 + "<fake_token_around_image>"
    assert decoded.startswith(
        "<|im_start|>User: You are provided the following series of three frames from a 0:00:02 [H:MM:SS] video.\n"
        f"\nFrame from 00:00:{frame}\nFrame from 00:01:{frame}\nFrame from 00:02:{frame}\n\nWhat is in")
    with torch.no_grad():
        outputs = model(**inputs)
        changed = {**inputs, "pixel_values": inputs["pixel_values"].flip(1)}
        assert not torch.allclose(model(**changed).logits, outputs.logits)
    # Images and frames are both pixel_values: beside a video an image's tokens are written, its pixels lost.
    beside = render_video(processor, *ONE_IMAGE)
    assert tuple(beside["pixel_values"].shape) == (1, 3, 3, 16, 16)
    with pytest.raises(ValueError):
        model(**beside)
