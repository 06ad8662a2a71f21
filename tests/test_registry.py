"""The family registry: aliases, config mapping and template loading."""

import inspect
import os
import re

import numpy as np
import pytest
from PIL import Image
from transformers import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING, AutoConfig, AutoProcessor
from transformers.video_utils import VideoMetadata

from tests.tokenize_fixtures import tiny_model
from vlmdata.errors import FatalError
from vlmdata.models import FAMILIES, family_for_config, family_for_model_type, get_family, load_template
from vlmdata.models.loading import load_processor

ALIASES = ["gemma3", "gemma3n", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "llava", "mllama", "pixtral", "mistral3",
           "llama4", "gemma4", "glm4v", "internvl", "llava_onevision", "lfm2_vl", "smolvlm"]


def test_every_documented_alias_is_known():
    assert sorted(FAMILIES) == sorted(ALIASES)


@pytest.mark.parametrize(
    ("alias", "checkpoint", "template"),
    [
        ("gemma3", "google/gemma-3-4b-it", "gemma3"),
        ("gemma3n", "google/gemma-3n-E2B-it", "gemma3n"),
        ("qwen2_vl", "Qwen/Qwen2-VL-7B-Instruct", "qwen2_vl"),
        ("qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_vl"),
        ("qwen3_vl", "Qwen/Qwen3-VL-8B-Instruct", "qwen3_vl"),
        ("qwen3_5", "Qwen/Qwen3.5-9B", "qwen3_5"),
        ("llava", "llava-hf/llava-1.5-7b-hf", "llava"),
        ("mllama", "meta-llama/Llama-3.2-11B-Vision-Instruct", "llama3_2_vision"),
        ("pixtral", "mistralai/Pixtral-12B-2409", "pixtral"),
        ("mistral3", "mistralai/Mistral-Small-3.1-24B-Instruct-2503", "mistral_v7_tekken"),
        ("llama4", "meta-llama/Llama-4-Scout-17B-16E-Instruct", "llama4"),
        ("gemma4", "google/gemma-4-E2B-it", "gemma4"),
        ("glm4v", "zai-org/GLM-4.1V-9B-Thinking", "glm4v"),
        ("internvl", "OpenGVLab/InternVL3-1B-hf", "internvl"),
        ("llava_onevision", "llava-hf/llava-onevision-qwen2-7b-ov-hf", "llava_onevision"),
        ("lfm2_vl", "LiquidAI/LFM2-VL-1.6B", "lfm2_vl"),
        ("smolvlm", "HuggingFaceTB/SmolVLM2-2.2B-Instruct", "smolvlm"),
    ],
)
def test_alias_names_its_checkpoint_and_template(alias, checkpoint, template):
    family = get_family(alias)
    assert (family.alias, family.default_checkpoint, family.template_name) == (alias, checkpoint, template)
    assert load_template(family.template_name)


def test_gemma3n_takes_audio():
    assert get_family("gemma3n").modalities == ("image", "audio")
    assert "<audio_soft_token>" in get_family("gemma3n").media_tokens


def test_gemma4_takes_images_video_and_audio_and_times_its_frames():
    family = get_family("gemma4")
    assert family.modalities == ("image", "video", "audio")
    assert {"<|image|>", "<|video|>", "<|audio|>"} <= set(family.media_tokens)
    # The processor's "mm:ss" before each frame; frames after the first follow a space.
    timestamp = re.compile(family.frame_timestamp)
    assert timestamp.fullmatch("00:03 ") and timestamp.fullmatch(" 12:40 ")
    assert not timestamp.fullmatch("at 00:03 ") and not timestamp.fullmatch("00:03")


def test_glm4v_takes_images_and_video_and_counts_all_of_a_video_as_media():
    family = get_family("glm4v")
    assert family.modalities == ("image", "video")
    assert family.video_span == ("<|begin_of_video|>", "<|end_of_video|>")
    assert set(family.video_span) | {"<|begin_of_image|>", "<|image|>", "<|end_of_image|>"} <= set(family.media_tokens)


def test_internvl_numbers_its_frames():
    family = get_family("internvl")
    assert family.modalities == ("image", "video")
    # The processor's "Frame1: " before the first frame, "\nFrame2: " before each later one.
    timestamp = re.compile(family.frame_timestamp)
    assert timestamp.fullmatch("Frame1: ") and timestamp.fullmatch("\nFrame12: ")
    assert not timestamp.fullmatch("See Frame1: ") and not timestamp.fullmatch("Frame1:")


def test_lfm2_vl_takes_images_only_and_counts_its_tile_names_as_media():
    family = get_family("lfm2_vl")
    assert family.modalities == ("image",)
    tokens = set(family.media_tokens)
    assert {"<|image_start|>", "<image>", "<|img_thumbnail|>", "<|image_end|>"} <= tokens
    assert {"<|img_row_1_col_1|>", "<|img_row_2_col_5|>", "<|img_row_10_col_1|>"} <= tokens


def test_smolvlm_times_its_frames_and_counts_the_video_intro_as_media():
    family = get_family("smolvlm")
    assert family.modalities == ("image", "video") and not family.images_beside_videos
    assert {"<fake_token_around_image>", "<image>", "<global-img>", "<row_1_col_1>", "<row_6_col_6>"} <= set(
        family.media_tokens)
    # The processor's "\nFrame from mm:ss:" before each frame, the intro sentence before the first one's.
    timestamp = re.compile(family.frame_timestamp)
    intro = "You are provided the following series of twenty-four frames from a 0:01:03 [H:MM:SS] video.\n"
    assert timestamp.fullmatch("\nFrame from 00:01:") and timestamp.fullmatch("\nFrame from 120:59:")
    first = "\nFrame from 00:00:"
    assert timestamp.fullmatch(intro + first) and timestamp.fullmatch(" " + intro + first)
    assert not timestamp.fullmatch("Frame from 00:01:") and not timestamp.fullmatch("See\nFrame from 00:01:")
    assert not timestamp.fullmatch(intro)


@pytest.mark.parametrize("alias", ALIASES)
def test_model_inputs_are_what_the_processor_returns_and_the_forward_takes(alias):
    # Checked against the real processor and model classes, through each family's tiny checkpoint.
    family = get_family(alias)
    checkpoint = tiny_model(alias)
    image = Image.fromarray(np.add.outer(np.arange(48), np.arange(64)).astype(np.uint8)).convert("RGB")
    content = [{"type": "image", "image": image}]
    if "audio" in family.modalities:
        content.append({"type": "audio", "audio": np.zeros(8000, dtype=np.float32)})
    kwargs = {}
    if "video" in family.modalities:
        frames = np.stack([np.asarray(image)] * 3)
        content.append({"type": "video", "video": frames})
        metadata = VideoMetadata(total_num_frames=3, fps=2.0, frames_indices=[0, 1, 2], width=64, height=48)
        kwargs = {"videos_kwargs": {"do_sample_frames": False, "video_metadata": [metadata]}}
    content.append({"type": "text", "text": "What is this?"})
    messages = [{"role": "user", "content": content}, {"role": "assistant", "content": [{"type": "text", "text": "A."}]}]
    outputs = AutoProcessor.from_pretrained(checkpoint).apply_chat_template(
        messages, chat_template=load_template(family.template_name), tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs=kwargs,
    )
    assert set(family.model_inputs) == set(outputs) - {"input_ids", "attention_mask"}
    model_class = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING[type(AutoConfig.from_pretrained(checkpoint))]
    forward = inspect.signature(model_class.forward).parameters
    assert [name for name in family.model_inputs if name not in forward] == [], model_class.__name__


def test_unknown_alias_is_fatal_and_lists_the_known_ones():
    with pytest.raises(FatalError) as error:
        get_family("gpt5")
    assert "'gpt5'" in str(error.value)
    assert all(alias in str(error.value) for alias in ALIASES)


@pytest.mark.parametrize(
    ("model_type", "alias"),
    [
        ("gemma3", "gemma3"),
        ("gemma3n", "gemma3n"),
        ("qwen2_vl", "qwen2_vl"),
        ("qwen2_5_vl", "qwen2_5_vl"),
        ("qwen3_vl", "qwen3_vl"),
        ("qwen3_vl_moe", "qwen3_vl"),
        ("qwen3_5", "qwen3_5"),
        ("qwen3_5_moe", "qwen3_5"),
        ("llava", "llava"),
        ("mllama", "mllama"),
        ("mistral3", "mistral3"),
        ("llama4", "llama4"),
        ("gemma4", "gemma4"),
        ("glm4v", "glm4v"),
        ("internvl", "internvl"),
        ("llava_onevision", "llava_onevision"),
        ("lfm2_vl", "lfm2_vl"),
        ("smolvlm", "smolvlm"),
    ],
)
def test_model_type_maps_to_its_family(model_type, alias):
    assert family_for_model_type(model_type).alias == alias


def test_unknown_model_type_maps_to_nothing():
    assert family_for_model_type("bert") is None
    # GLM-4.5V shares GLM-4.1V's processor but has a chat template of its own.
    assert family_for_model_type("glm4v_moe") is None


def test_config_tells_pixtral_from_llava():
    pixtral = {"model_type": "llava", "vision_config": {"model_type": "pixtral"}}
    llava = {"model_type": "llava", "vision_config": {"model_type": "clip_vision_model"}}
    assert family_for_config(pixtral).alias == "pixtral"
    assert family_for_config(llava).alias == "llava"
    assert family_for_config({"model_type": "gemma3"}).alias == "gemma3"
    assert family_for_config({}) is None


def test_load_template_by_name():
    assert "<start_of_turn>" in load_template("gemma3")


def test_load_template_from_a_file(tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text("{% for message in messages %}{{ message.content }}{% endfor %}", encoding="utf-8")
    assert load_template(str(path)) == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", ["chatml-v9", "no/such/file.jinja"])
def test_unknown_template_is_fatal(name):
    with pytest.raises(FatalError, match="Unknown chat template"):
        load_template(name)


@pytest.mark.parametrize("model", ["./nope", "{tmp}/nope", "~/nope", "models/nope", "models/a/b", "my model"])
def test_a_model_folder_that_does_not_exist_is_named_not_sent_to_the_hub(tmp_path, monkeypatch, model):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "models").mkdir()  # "models/nope" is a path: its first folder is here
    model = model.format(tmp=tmp_path)
    folder = os.path.abspath(os.path.expanduser(model))
    with pytest.raises(FatalError) as raised:
        load_processor(model)
    assert str(raised.value) == f"Cannot load the processor of {model}: the model folder {folder} does not exist."


def test_a_hub_id_still_goes_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FatalError, match=r"^Cannot load the processor of someone/some-model: ") as raised:
        load_processor("someone/some-model")
    assert "does not exist" not in str(raised.value)


def test_a_model_folder_under_the_home_folder_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    os.symlink(tiny_model("gemma3"), tmp_path / "gemma")
    assert load_processor("~/gemma").family.alias == "gemma3"
