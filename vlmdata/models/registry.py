"""The model families vlmdata knows: checkpoints, chat templates and what tokenization must know about each.

A family groups the checkpoints that share a chat format and a processor. `--model` accepts a family alias
(`gemma3`), a hub id or a local path; for the last two the family is found from the checkpoint's
`config.json` (`family_for_config`).

Example:
    >>> family = get_family("qwen2_vl")
    >>> family.default_checkpoint
    'Qwen/Qwen2-VL-7B-Instruct'
    >>> load_template(family.template_name).startswith("{#-")
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from vlmdata.errors import FatalError
from vlmdata.labels import MAX_TIMESTAMP_TOKENS



@dataclass(frozen=True)
class Family:
    """One model family.

    Attributes:
        alias: The short name users pass to `--model`.
        default_checkpoint: The hub id `--model ALIAS` loads.
        template_name: The packaged chat template (`vlmdata/models/templates/<name>.jinja`).
        modalities: The kinds of media the family takes besides text, as `vlmdata.modalities` names them
            ("image", "video", "audio"); tokenize refuses a row with parts of any other kind.
        model_types: The `model_type` values of `config.json` that mean this family.
        media_tokens: Every token the processor writes for a media item (placeholders, the runs they expand
            into, and their delimiters). Their labels are always -100: the model never predicts them.
        model_inputs: What the model's forward needs besides `input_ids` and `attention_mask`, as the
            processor names it.
        frame_start: The tokens that open each video frame, where the processor writes a timestamp as text
            before every frame (Qwen3-VL's "<1.5 seconds>"); empty for the others.
        frame_timestamp: A regular expression that timestamp text fully matches. It is media, never trained.
        frame_timestamp_tokens: The most tokens that timestamp text takes (SmolVLM2's first frame follows the
            video's intro sentence, which the pattern takes in too).
        video_span: The tokens that open and close a video, where the processor writes text between its frames
            that is not just before a frame start (GLM-4.1V's second after each frame): every token between
            them is media. None for the others.
        images_beside_videos: Whether the model's forward takes a row holding both images and videos. GLM-4.1V's
            does not (transformers 5.23 counts a video frame's <|image|> tokens as the image's), so tokenize
            refuses such rows instead of leaving them to fail in training.
        stacks_videos: The processor stacks a row's videos into one tensor, so they must have as many frames
            (InternVL, LLaVA-OneVision); a row whose videos differ in length is the processor's error, a reject.
    """

    alias: str
    default_checkpoint: str
    template_name: str
    modalities: tuple[str, ...]
    model_types: tuple[str, ...]
    media_tokens: tuple[str, ...]
    model_inputs: tuple[str, ...]
    frame_start: tuple[str, ...] = ()
    frame_timestamp: str | None = None
    frame_timestamp_tokens: int = MAX_TIMESTAMP_TOKENS
    video_span: tuple[str, str] | None = None
    images_beside_videos: bool = True
    stacks_videos: bool = False


GEMMA3_IMAGE_TOKENS = ("<start_of_image>", "<image_soft_token>", "<end_of_image>")
GEMMA3N_AUDIO_TOKENS = ("<start_of_audio>", "<audio_soft_token>", "<end_of_audio>")
# Gemma 4 opens and closes every image and every video frame with <|image> and <image|>.
GEMMA4_MEDIA_TOKENS = ("<|image>", "<|image|>", "<|video|>", "<image|>", "<|audio>", "<|audio|>", "<audio|>")
QWEN2_VL_MEDIA_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|video_pad|>", "<|vision_end|>")
# Qwen3-VL's processor writes "<1.5 seconds>" before each video frame (a pair of sampled frames).
QWEN3_FRAME_START = ("<|vision_start|>", "<|video_pad|>")
QWEN3_FRAME_TIMESTAMP = r"<\d+(\.\d+)? seconds>"
# Qwen3-VL and Qwen3.5 share the processor, so the same tensors reach their forward.
QWEN3_MODEL_INPUTS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "mm_token_type_ids")
MISTRAL_IMAGE_TOKENS = ("[IMG]", "[IMG_BREAK]", "[IMG_END]")
GLM4V_VIDEO_SPAN = ("<|begin_of_video|>", "<|end_of_video|>")
# GLM-4.1V writes a video's frames as images inside <|begin_of_video|>...<|end_of_video|>.
GLM4V_MEDIA_TOKENS = ("<|begin_of_image|>", "<|image|>", "<|end_of_image|>", "<|video|>") + GLM4V_VIDEO_SPAN
# InternVL writes every image tile and every video frame as <img><IMG_CONTEXT>...</img>; <video> is the
# template's placeholder for a video, which the processor replaces.
INTERNVL_MEDIA_TOKENS = ("<img>", "<IMG_CONTEXT>", "</img>", "<video>")
# Before each video frame InternVL's processor writes "Frame1: ", the later frames after a newline.
INTERNVL_FRAME_START = ("<img>", "<IMG_CONTEXT>")
INTERNVL_FRAME_TIMESTAMP = r"\n?Frame\d+: "
# LFM2-VL opens and closes every image with <|image_start|> and <|image_end|>; a tiled image names each tile
# (<|img_row_1_col_1|>, ...) and its thumbnail before their <image> runs. The vocabulary names every tile of a
# 10 x 10 grid; by default the processor cuts at most 10 tiles.
LFM2_VL_IMAGE_TOKENS = ("<|image_start|>", "<image>", "<|img_thumbnail|>", "<|image_end|>") + tuple(
    f"<|img_row_{row}_col_{col}|>" for row in range(1, 11) for col in range(1, 11)
)
# SmolVLM2 writes an image as its crops, "<fake_token_around_image><row_1_col_1><image>...", a line per row of
# crops, then the global view "<fake_token_around_image><global-img><image>...<fake_token_around_image>"; <video> is
# the template's placeholder for a video, which the processor replaces.
SMOLVLM_CROP_TOKENS = tuple(f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7))
SMOLVLM_MEDIA_TOKENS = ("<fake_token_around_image>", "<image>", "<global-img>", "<video>") + SMOLVLM_CROP_TOKENS
# Each video frame is "\nFrame from 00:01:" then the frame as a global view; the first frame's stamp follows
# "You are provided the following series of three frames from a 0:00:02 [H:MM:SS] video.\n".
SMOLVLM_FRAME_START = ("<fake_token_around_image>", "<global-img>")
SMOLVLM_FRAME_TIMESTAMP = (
    r"( ?You are provided the following series of [a-z ,-]+ frames from a [0-9a-z :,]+ \[H:MM:SS\] video\.\n)?"
    r"\nFrame from \d{2,}:\d{2}:"
)
LLAMA4_IMAGE_TOKENS = (
    "<|image_start|>",
    "<|image|>",
    "<|patch|>",
    "<|tile_x_separator|>",
    "<|tile_y_separator|>",
    "<|image_end|>",
)

_FAMILIES = (
    Family(
        alias="gemma3",
        default_checkpoint="google/gemma-3-4b-it",
        template_name="gemma3",
        modalities=("image",),
        model_types=("gemma3",),
        media_tokens=GEMMA3_IMAGE_TOKENS,
        model_inputs=("pixel_values", "token_type_ids"),
    ),
    Family(
        alias="gemma3n",
        default_checkpoint="google/gemma-3n-E2B-it",
        template_name="gemma3n",
        modalities=("image", "audio"),
        model_types=("gemma3n",),
        media_tokens=GEMMA3_IMAGE_TOKENS + GEMMA3N_AUDIO_TOKENS,
        model_inputs=("pixel_values", "input_features", "input_features_mask", "token_type_ids"),
    ),
    Family(
        alias="gemma4",
        default_checkpoint="google/gemma-4-E2B-it",
        template_name="gemma4",
        modalities=("image", "video", "audio"),
        # gemma4_unified checkpoints have processors and models of their own (Gemma4Unified*).
        model_types=("gemma4",),
        media_tokens=GEMMA4_MEDIA_TOKENS,
        model_inputs=(
            "pixel_values", "image_position_ids", "pixel_values_videos", "video_position_ids", "num_frames_per_video",
            "input_features", "input_features_mask", "mm_token_type_ids",
        ),
        # Each frame of a video is "mm:ss " then <|image><|video|>...; the first frame follows the text directly,
        # the others a space.
        frame_start=("<|image>", "<|video|>"),
        frame_timestamp=r" ?\d{2,}:\d{2} ",
    ),
    Family(
        alias="qwen2_vl",
        default_checkpoint="Qwen/Qwen2-VL-7B-Instruct",
        template_name="qwen2_vl",
        modalities=("image", "video"),
        model_types=("qwen2_vl",),
        media_tokens=QWEN2_VL_MEDIA_TOKENS,
        model_inputs=("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "mm_token_type_ids"),
    ),
    Family(
        alias="qwen2_5_vl",
        default_checkpoint="Qwen/Qwen2.5-VL-7B-Instruct",
        template_name="qwen2_vl",
        modalities=("image", "video"),
        model_types=("qwen2_5_vl",),
        media_tokens=QWEN2_VL_MEDIA_TOKENS,
        model_inputs=(
            "pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts",
            "mm_token_type_ids",
        ),
    ),
    Family(
        alias="qwen3_vl",
        default_checkpoint="Qwen/Qwen3-VL-8B-Instruct",
        template_name="qwen3_vl",
        modalities=("image", "video"),
        model_types=("qwen3_vl", "qwen3_vl_moe"),
        media_tokens=QWEN2_VL_MEDIA_TOKENS,
        model_inputs=QWEN3_MODEL_INPUTS,
        frame_start=QWEN3_FRAME_START,
        frame_timestamp=QWEN3_FRAME_TIMESTAMP,
    ),
    Family(
        alias="qwen3_5",
        default_checkpoint="Qwen/Qwen3.5-9B",
        template_name="qwen3_5",
        modalities=("image", "video"),
        model_types=("qwen3_5", "qwen3_5_moe"),
        media_tokens=QWEN2_VL_MEDIA_TOKENS,
        model_inputs=QWEN3_MODEL_INPUTS,
        frame_start=QWEN3_FRAME_START,
        frame_timestamp=QWEN3_FRAME_TIMESTAMP,
    ),
    Family(
        alias="llava",
        default_checkpoint="llava-hf/llava-1.5-7b-hf",
        template_name="llava",
        modalities=("image",),
        model_types=("llava",),
        media_tokens=("<image>",),
        model_inputs=("pixel_values",),
    ),
    Family(
        alias="mllama",
        default_checkpoint="meta-llama/Llama-3.2-11B-Vision-Instruct",
        template_name="llama3_2_vision",
        modalities=("image",),
        model_types=("mllama",),
        media_tokens=("<|image|>",),
        model_inputs=("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask"),
    ),
    Family(
        alias="pixtral",
        default_checkpoint="mistralai/Pixtral-12B-2409",
        template_name="pixtral",
        modalities=("image",),
        # In transformers format Pixtral is a LLaVA model with a Pixtral vision tower: see family_for_config.
        model_types=(),
        media_tokens=MISTRAL_IMAGE_TOKENS,
        model_inputs=("pixel_values", "image_sizes"),
    ),
    Family(
        alias="mistral3",
        default_checkpoint="mistralai/Mistral-Small-3.1-24B-Instruct-2503",
        template_name="mistral_v7_tekken",
        modalities=("image",),
        model_types=("mistral3",),
        media_tokens=MISTRAL_IMAGE_TOKENS,
        model_inputs=("pixel_values", "image_sizes"),
    ),
    Family(
        alias="llama4",
        default_checkpoint="meta-llama/Llama-4-Scout-17B-16E-Instruct",
        template_name="llama4",
        modalities=("image",),
        model_types=("llama4",),
        media_tokens=LLAMA4_IMAGE_TOKENS,
        model_inputs=("pixel_values",),
    ),
    Family(
        alias="glm4v",
        default_checkpoint="zai-org/GLM-4.1V-9B-Thinking",
        template_name="glm4v",
        modalities=("image", "video"),
        # GLM-4.5V (glm4v_moe) shares the processor but not the chat template (its own has tools, /nothink and
        # reasoning_content).
        model_types=("glm4v",),
        media_tokens=GLM4V_MEDIA_TOKENS,
        model_inputs=("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "mm_token_type_ids"),
        # Each frame is <|begin_of_image|><|image|>...<|end_of_image|> then its second as text ("3").
        video_span=GLM4V_VIDEO_SPAN,
        images_beside_videos=False,
    ),
    Family(
        alias="internvl",
        default_checkpoint="OpenGVLab/InternVL3-1B-hf",
        template_name="internvl",
        modalities=("image", "video"),
        model_types=("internvl",),
        media_tokens=INTERNVL_MEDIA_TOKENS,
        # The processor puts image tiles and video frames, in the order the text names them, in pixel_values.
        model_inputs=("pixel_values",),
        frame_start=INTERNVL_FRAME_START,
        frame_timestamp=INTERNVL_FRAME_TIMESTAMP,
        stacks_videos=True,
    ),
    Family(
        alias="llava_onevision",
        default_checkpoint="llava-hf/llava-onevision-qwen2-7b-ov-hf",
        template_name="llava_onevision",
        modalities=("image", "video"),
        model_types=("llava_onevision",),
        media_tokens=("<image>", "<video>"),
        # batch_num_images: a row with one image is cut into AnyRes tiles, a row with several is not.
        model_inputs=("pixel_values", "image_sizes", "batch_num_images", "pixel_values_videos"),
        stacks_videos=True,
    ),
    Family(
        alias="lfm2_vl",
        default_checkpoint="LiquidAI/LFM2-VL-1.6B",
        template_name="lfm2_vl",
        modalities=("image",),
        model_types=("lfm2_vl",),
        media_tokens=LFM2_VL_IMAGE_TOKENS,
        # Each tile, thumbnail or whole image is a row of pixel_values (padded patches), with its patch grid.
        model_inputs=("pixel_values", "spatial_shapes", "pixel_attention_mask"),
    ),
    Family(
        alias="smolvlm",
        default_checkpoint="HuggingFaceTB/SmolVLM2-2.2B-Instruct",
        template_name="smolvlm",
        modalities=("image", "video"),
        model_types=("smolvlm",),
        media_tokens=SMOLVLM_MEDIA_TOKENS,
        # pixel_values is [1, crops, 3, H, W]: every crop and global view of the row's images, or its video's
        # frames; pixel_attention_mask marks each one's real pixels.
        model_inputs=("pixel_values", "pixel_attention_mask"),
        frame_start=SMOLVLM_FRAME_START,
        frame_timestamp=SMOLVLM_FRAME_TIMESTAMP,
        # The intro sentence and the first stamp, in a byte-level vocabulary that spells them out in pieces.
        frame_timestamp_tokens=160,
        # Images and videos both come back as pixel_values: a row holding both keeps only the video's.
        images_beside_videos=False,
    ),
)

FAMILIES: dict[str, Family] = {family.alias: family for family in _FAMILIES}


def get_family(alias: str) -> Family:
    """Return the family called `alias`.

    Raises:
        FatalError: No family has that alias; the message lists the known ones.
    """
    try:
        return FAMILIES[alias]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise FatalError(f"Unknown model family {alias!r}; known families: {known}.") from None


def family_for_model_type(model_type: str) -> Family | None:
    """Return the family whose checkpoints declare `model_type` in `config.json`, or None.

    Example:
        >>> family_for_model_type("gemma3").alias
        'gemma3'
    """
    return next((family for family in FAMILIES.values() if model_type in family.model_types), None)


def family_for_config(config: Mapping) -> Family | None:
    """Return the family of a checkpoint from its `config.json` contents, or None.

    Unlike `family_for_model_type`, this tells Pixtral apart from LLaVA: both declare `model_type` "llava",
    and only the vision tower's type differs.
    """
    vision_config = config.get("vision_config") or {}
    if config.get("model_type") == "llava" and vision_config.get("model_type") == "pixtral":
        return FAMILIES["pixtral"]
    return family_for_model_type(config.get("model_type", ""))


# The date templates that write today's (Llama 3.2 Vision's "Today Date") are given, so that the same data
# makes the same shards on any day: the date Meta's template itself falls back to.
DEFAULT_TEMPLATE_DATE = "26 Jul 2024"


def _template_folder():
    return resources.files("vlmdata.models") / "templates"


def template_names() -> list[str]:
    """Return the names of the packaged chat templates."""
    files = (item.name for item in _template_folder().iterdir())
    return sorted(name.removesuffix(".jinja") for name in files if name.endswith(".jinja"))


def load_template(name_or_file: str) -> str:
    """Return the text of a chat template.

    Args:
        name_or_file: A packaged template name (`"gemma3"`) or the path to a Jinja file.

    Raises:
        FatalError: Neither a packaged template nor a readable file.
    """
    if name_or_file in template_names():
        return (_template_folder() / f"{name_or_file}.jinja").read_text(encoding="utf-8")
    path = Path(name_or_file)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    known = ", ".join(template_names())
    raise FatalError(f"Unknown chat template {name_or_file!r}: not a packaged template ({known}) nor a file.")
