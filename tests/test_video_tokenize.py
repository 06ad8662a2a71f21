"""Videos through tokenize and train: Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5, Gemma 4, GLM-4.1V, InternVL,
LLaVA-OneVision and SmolVLM2 shards hold each frame once as uint8 codes and rebuild the processor's own tensors bit for bit;
families without video refuse them or take their frames as images; a forward pass on collated video shards equals
the one on the processor's batch."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText
from transformers.video_utils import VideoMetadata

from tests.tokenize_fixtures import tiny_model
from vlmdata.cli import cli
from vlmdata.errors import RowError
from vlmdata.modalities.video import METADATA_KEY, VIDEO
from vlmdata.models.loading import load_processor
from vlmdata.models.registry import load_template
from vlmdata.schema import NORMALISED_FEATURES
from vlmdata.shards import load_shards, model_inputs, read_layout
from vlmdata.tokenize import tokenize
from vlmdata.train.collator import PixelDecoding, ShardCollator

QWEN = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"]
VIDEO_FAMILIES = QWEN + ["glm4v"]
# GLM-4.1V's forward cannot take an image beside a video, nor SmolVLM2's processor: tokenize refuses that row.
REFUSED = {"glm4v": {"image-and-video"}, "smolvlm": {"image-and-video"}}
FPS = 10.0


def moving_frames(count: int, width: int = 56, height: int = 42, colour=(200, 30, 30)) -> list[Image.Image]:
    """A square sliding right and a circle sliding down: every frame differs."""
    frames = []
    for index in range(count):
        image = Image.new("RGB", (width, height), (245, 245, 240))
        draw = ImageDraw.Draw(image)
        draw.rectangle([2 + 3 * index, 4, 14 + 3 * index, 16], fill=colour)
        draw.ellipse([width - 20, 2 + 2 * index, width - 6, 16 + 2 * index], fill=(20, 40, 200))
        frames.append(image)
    return frames


def png(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def stored_video(frames: list[Image.Image], fps: float | None = FPS) -> dict:
    step = 1.0 / (fps or 2.0)
    return {"frames": frames, "timestamps": [index * step for index in range(len(frames))], "fps": fps,
            "total_frames": 20}


def text(value: str) -> dict:
    return {"type": "text", "text": value}


VIDEO_PART = {"type": "video", "text": None}
IMAGE_PART = {"type": "image", "text": None}


def video_rows() -> list[dict]:
    """Normalised rows with videos: an even and an odd frame count, a frames list, and an image with a video."""
    def row(row_id, content, images=(), videos=()):
        messages = [{"role": "user", "content": content},
                    {"role": "assistant", "content": [text("A square moves right.")]}]
        return {"messages": messages, "images": list(images), "videos": list(videos), "audios": [], "id": row_id,
                "source": "made"}

    still = Image.new("RGB", (64, 48), (30, 160, 40))
    return [
        row("four-frames", [VIDEO_PART, text("What moves?")], videos=[stored_video(moving_frames(4))]),
        row("odd-frames", [VIDEO_PART, text("What moves?")], videos=[stored_video(moving_frames(5, 84, 56))]),
        row("frames-list", [VIDEO_PART, text("And here?")], videos=[stored_video(moving_frames(3), fps=None)]),
        row("image-and-video", [IMAGE_PART, VIDEO_PART, text("Compare them.")], images=[still],
            videos=[stored_video(moving_frames(3, 42, 70, (10, 120, 10)))]),
    ]


@pytest.fixture(scope="module")
def video_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("video") / "normalised"
    datasets.Dataset.from_list(video_rows(), features=NORMALISED_FEATURES).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def video_shards(video_data, tmp_path_factory):
    made = {}

    def make(alias: str) -> Path:
        if alias not in made:
            made[alias] = tmp_path_factory.mktemp(f"video-{alias}") / "shards"
            summary = tokenize(video_data, made[alias], model=str(tiny_model(alias)), progress=False)
            assert summary.rows_rejected == len(REFUSED.get(alias, ())), (made[alias] / "rejects.jsonl").read_text()
        return made[alias]

    return make


def oracle_messages(row: dict) -> list[dict]:
    """A row in the processor's format built independently of vlmdata: frames as a [T, H, W, 3] array."""
    images, videos = iter(row["images"]), iter(row["videos"])
    messages = []
    for message in row["messages"]:
        content = []
        for part in message["content"]:
            if part["type"] == "image":
                content.append({"type": "image", "image": next(images)})
            elif part["type"] == "video":
                content.append({"type": "video", "video": np.stack([np.asarray(f) for f in next(videos)["frames"]])})
            else:
                content.append({"type": "text", "text": part["text"]})
        messages.append({"role": message["role"], "content": content})
    return messages


def oracle_outputs(processor, row: dict, template: str) -> dict:
    """The processor's plain call on the row, with the frames' metadata written out here."""
    metadata = []
    for video in row["videos"]:
        fps = video["fps"] or 1.0 / (video["timestamps"][1] - video["timestamps"][0])
        width, height = video["frames"][0].size
        metadata.append(VideoMetadata(total_num_frames=video["total_frames"], fps=fps, width=width, height=height,
                                      frames_indices=[round(t * fps) for t in video["timestamps"]]))
    kwargs = {"videos_kwargs": {"do_sample_frames": False, "video_metadata": metadata}} if metadata else {}
    return processor.apply_chat_template(
        oracle_messages(row), chat_template=template, tokenize=True, return_dict=True,
        return_assistant_tokens_mask=True, return_tensors="pt", processor_kwargs=kwargs,
    )


@pytest.mark.parametrize("alias", VIDEO_FAMILIES)
def test_video_shards_store_codes_and_rebuild_the_processor_output_bit_for_bit(alias, video_data, video_shards):
    out = video_shards(alias)
    loaded = load_processor(str(tiny_model(alias)))
    processor = loaded.processor
    video_processor = processor.video_processor
    patch = 3 * video_processor.temporal_patch_size * video_processor.patch_size**2
    layout = read_layout(out)
    specs = {spec.name: spec for spec in layout.tensors}
    videos = specs["pixel_values_videos"]
    assert videos.stored_dtype == "uint8" and not videos.pixels.folded and videos.stored_tail == (patch,)
    assert specs["pixel_values"].pixels.folded  # still images still fold
    saved = json.loads((out / "vlmdata.json").read_text())
    assert saved["pixel_storage"]["pixel_values_videos"] == "uint8 codes + rescale/normalise table"

    template = load_template(loaded.family.template_name)
    shards = {row["id"]: row for row in load_shards(out)}
    for row in datasets.load_from_disk(str(video_data)):
        if row["id"] in REFUSED.get(alias, ()):
            continue
        stored = shards[row["id"]]
        expected = oracle_outputs(processor, row, template)
        patches = expected["pixel_values_videos"].shape[0]
        assert stored["pixel_values_videos"].dtype == np.uint8
        assert stored["pixel_values_videos"].shape == (patches, patch)  # every frame once, nothing in float32
        assert len(stored["pixel_values_videos_float"]) == 0
        if alias == "qwen2_5_vl":
            assert "second_per_grid_ts" in expected
        rebuilt = model_inputs(stored, layout)
        assert set(rebuilt) >= set(expected) - {"assistant_masks"}
        for name, tensor in expected.items():
            if name == "assistant_masks":
                continue
            assert rebuilt[name].dtype == tensor.dtype, (alias, row["id"], name)
            same = torch.equal(rebuilt[name].view(torch.int32), tensor.view(torch.int32)) if tensor.dtype == torch.float32 \
                else torch.equal(rebuilt[name], tensor)
            assert same, (alias, row["id"], name)
    # The odd frame count is padded to a temporal pair by the processor: 5 frames make 3 grid steps.
    odd = model_inputs(shards["odd-frames"], layout)
    assert odd["video_grid_thw"][0, 0].item() == 3


def test_video_pad_tokens_are_never_trained_and_truncation_stops_before_them(video_data, tmp_path):
    loaded = load_processor(str(tiny_model("qwen2_vl")))
    out = tmp_path / "shards"
    tokenize(video_data, out, model=str(tiny_model("qwen2_vl")), progress=False)
    video_pad = loaded.processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    for row in load_shards(out):
        is_pad = row["input_ids"] == video_pad
        assert is_pad.any() and np.all(row["labels"][is_pad] == -100)
    cut = tmp_path / "cut"
    summary = tokenize(video_data, cut, model=str(tiny_model("qwen2_vl")), max_length=20, truncate="text",
                       progress=False)
    assert summary.rows_written == 0
    reasons = [json.loads(line)["reason"] for line in (cut / "rejects.jsonl").read_text().splitlines()]
    assert all("the cut would go through media tokens" in reason for reason in reasons)


@pytest.mark.parametrize("alias", ["llava", "lfm2_vl"])
def test_a_family_without_video_names_it_and_takes_frames_as_images_when_asked(alias, video_data, tmp_path):
    refused = tokenize(video_data, tmp_path / "refused", model=str(tiny_model(alias)), progress=False)
    assert refused.rows_written == 0
    reasons = {json.loads(line)["reason"] for line in (tmp_path / "refused" / "rejects.jsonl").read_text().splitlines()}
    assert reasons == {"a video part, but this model family takes no video (--video-as-images hands its frames as images)"}

    out = tmp_path / "frames"
    result = CliRunner().invoke(cli, ["tokenize", str(video_data), "-o", str(out), "--model", str(tiny_model(alias)),
                                      "--video-as-images", "--quiet"])
    assert result.exit_code == 0, result.output
    loaded = load_processor(str(tiny_model(alias)))
    processor, template = loaded.processor, load_template(loaded.family.template_name)
    shards = {row["id"]: row for row in load_shards(out)}
    layout = read_layout(out)
    for row in datasets.load_from_disk(str(video_data)):
        # The oracle: the same conversation with each video written out as its frames, one image part each.
        frames_row = {**row, "images": [], "videos": []}
        images, videos = iter(row["images"]), iter(row["videos"])
        content = []
        for part in row["messages"][0]["content"]:
            if part["type"] == "video":
                frames = next(videos)["frames"]
                frames_row["images"] += frames
                content += [IMAGE_PART] * len(frames)
            else:
                if part["type"] == "image":
                    frames_row["images"].append(next(images))
                content.append(part)
        frames_row["messages"] = [{**row["messages"][0], "content": content}, *row["messages"][1:]]
        expected = oracle_outputs(processor, frames_row, template)
        rebuilt = model_inputs(shards[row["id"]], layout)
        # LLaVA makes one pixel row per image; LFM2-VL one per tile, thumbnail or whole image.
        assert expected["pixel_values"].shape[0] == (len(frames_row["images"]) if alias == "llava" else
                                                     len(expected["spatial_shapes"]))
        assert torch.equal(rebuilt["input_ids"], expected["input_ids"])
        assert torch.equal(rebuilt["pixel_values"].view(torch.int32), expected["pixel_values"].view(torch.int32))
    saved = json.loads((out / "vlmdata.json").read_text())
    assert saved["arguments"]["video_as_images"] is True


@pytest.mark.parametrize("alias", VIDEO_FAMILIES)
def test_forward_on_collated_video_shards_equals_the_processor_batch(alias, video_data, video_shards):
    out = video_shards(alias)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model(alias)).eval()
    loaded = load_processor(str(tiny_model(alias)))
    processor, template = loaded.processor, load_template(loaded.family.template_name)
    rows = {row["id"]: row for row in load_shards(out)}
    for row in datasets.load_from_disk(str(video_data)):
        if row["id"] in REFUSED.get(alias, ()):
            continue
        batch = ShardCollator(read_layout(out), pad_token_id=0)([rows[row["id"]]])
        expected = oracle_outputs(processor, row, template)
        expected.pop("assistant_masks")
        with torch.no_grad():
            got = model(**{name: value for name, value in batch.items() if name != "labels"}).logits
            want = model(**expected).logits
        assert torch.allclose(got, want, atol=1e-5), (alias, row["id"])
    # Several rows in one batch: the videos' patches and grids concatenate in row order.
    batch = ShardCollator(read_layout(out), pad_token_id=0)(list(rows.values()))
    assert batch["video_grid_thw"].shape[0] == len(rows)
    assert batch["pixel_values_videos"].shape[0] == int(batch["video_grid_thw"].prod(dim=1).sum())
    with torch.no_grad():
        decoded = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    # Training's path: the video codes reach the model as uint8 and its pre-hook decodes them, to the same logits.
    codes = ShardCollator(read_layout(out), pad_token_id=0, decode_pixels=False)(list(rows.values()))
    assert codes["pixel_values_videos"].dtype == torch.uint8
    hook = model.register_forward_pre_hook(PixelDecoding(read_layout(out)), with_kwargs=True)
    with torch.no_grad():
        hooked = model(**{k: v for k, v in codes.items() if k != "labels"}).logits
    hook.remove()
    assert torch.isfinite(decoded).all() and torch.equal(hooked, decoded)


def test_one_train_step_on_video_shards_runs(video_shards, tmp_path):
    out = tmp_path / "lora"
    result = CliRunner().invoke(cli, ["train", str(video_shards("qwen2_vl")), "-o", str(out), "--report-to", "none",
                                      "--max-steps", "1", "--batch-size", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    losses = [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]
    assert losses and all(np.isfinite(losses))


def test_the_video_part_carries_the_frames_and_their_metadata():
    frames = [png(frame) for frame in moving_frames(3)]
    part = VIDEO.processor_part({"frames": frames, "timestamps": [0.0, 0.5, 1.0], "fps": 30.0, "total_frames": 45}, 0, None)
    assert part["video"].shape == (3, 42, 56, 3) and part["video"].dtype == np.uint8
    assert np.array_equal(part["video"][1], np.asarray(moving_frames(3)[1]))
    metadata = part[METADATA_KEY]
    assert (metadata.fps, metadata.frames_indices, metadata.total_num_frames) == (30.0, [0, 15, 30], 45)
    assert (metadata.width, metadata.height) == (56, 42)
    # A video given as frames has the rate of its timestamps; a single frame, the default rate.
    listed = VIDEO.processor_part({"frames": frames, "timestamps": [0.0, 0.25, 0.5], "fps": None, "total_frames": 3}, 0, None)
    assert (listed[METADATA_KEY].fps, listed[METADATA_KEY].frames_indices) == (4.0, [0, 1, 2])
    single = VIDEO.processor_part({"frames": frames[:1], "timestamps": [0.0], "fps": None, "total_frames": 1}, 0, None)
    assert single[METADATA_KEY].fps == 2.0
    with pytest.raises(RowError, match="video 2 frame 0: cannot decode"):
        VIDEO.processor_part({"frames": [{"bytes": b"not a png", "path": None}], "timestamps": [0.0], "fps": 1.0,
                              "total_frames": 1}, 2, None)


def test_video_as_images_leaves_videos_to_a_family_that_takes_them(video_data, tmp_path):
    plain, as_images = tmp_path / "plain", tmp_path / "as-images"
    tokenize(video_data, plain, model=str(tiny_model("qwen2_vl")), progress=False)
    tokenize(video_data, as_images, model=str(tiny_model("qwen2_vl")), video_as_images=True, progress=False)
    for first, second in zip(load_shards(plain), load_shards(as_images)):
        assert np.array_equal(first["input_ids"], second["input_ids"])
        assert np.array_equal(first["pixel_values_videos"], second["pixel_values_videos"])


def test_an_mp4_converted_then_tokenized_keeps_the_clip_timing(tmp_path):
    """From a real H.264 file: convert samples it once; tokenize's Qwen2.5-VL tensors equal the processor's own
    call on the stored frames, and second_per_grid_ts is the source clip's (2 frames per grid step at 2 fps)."""
    from tests.video_fixtures import build

    build(tmp_path / "videos")  # clip.mp4: 2 s at 10 fps
    source = tmp_path / "rows.jsonl"
    source.write_text(json.dumps({"messages": [
        {"role": "user", "content": [{"type": "video", "path": "videos/clip.mp4"}, text("What moves?")]},
        {"role": "assistant", "content": "A square."}]}) + "\n")
    runner = CliRunner()
    converted = runner.invoke(cli, ["convert", str(source), "-o", str(tmp_path / "normalised")])
    assert converted.exit_code == 0, converted.output
    tokenized = runner.invoke(cli, ["tokenize", str(tmp_path / "normalised"), "-o", str(tmp_path / "shards"),
                                    "--model", str(tiny_model("qwen2_5_vl"))])
    assert tokenized.exit_code == 0, tokenized.output

    row = datasets.load_from_disk(str(tmp_path / "normalised"))[0]
    video = row["videos"][0]
    assert (video["fps"], video["total_frames"], len(video["frames"])) == (10.0, 20, 4)
    expected = oracle_outputs(load_processor(str(tiny_model("qwen2_5_vl"))).processor, row, load_template("qwen2_vl"))
    rebuilt = model_inputs(load_shards(tmp_path / "shards")[0], read_layout(tmp_path / "shards"))
    for name in ("input_ids", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
        assert torch.equal(rebuilt[name], expected[name]), name
    assert rebuilt["second_per_grid_ts"].tolist() == [1.0]


def test_gemma4_video_shards_rebuild_the_processor_output_bit_for_bit(video_data, video_shards):
    out = video_shards("gemma4")
    layout = read_layout(out)
    specs = {spec.name: spec for spec in layout.tensors}
    assert specs["pixel_values_videos"].stored_dtype == specs["pixel_values"].stored_dtype == "uint8"
    processor = load_processor(str(tiny_model("gemma4"))).processor
    shards = {row["id"]: row for row in load_shards(out)}
    for row in datasets.load_from_disk(str(video_data)):
        expected = oracle_outputs(processor, row, processor.chat_template)  # the checkpoint's own template
        rebuilt = model_inputs(shards[row["id"]], layout)
        assert set(rebuilt) == set(expected) - {"assistant_masks"} | {"labels"}, row["id"]
        for name, tensor in expected.items():
            if name != "assistant_masks":
                assert rebuilt[name].dtype == tensor.dtype and torch.equal(rebuilt[name], tensor), (row["id"], name)
    # The processor writes each frame's second as "mm:ss" before it: 4 frames at 10 fps are all at 00:00.
    text_of_row = processor.tokenizer.decode(shards["four-frames"]["input_ids"].tolist())
    assert text_of_row.count("00:00 <|image>") == 4
    model = AutoModelForImageTextToText.from_pretrained(tiny_model("gemma4"))
    with torch.no_grad():
        assert torch.isfinite(model(**model_inputs(shards["image-and-video"], layout)).loss)


def test_gemma4_frame_timestamps_are_never_trained(video_data, tmp_path):
    out = tmp_path / "all"
    tokenize(video_data, out, model=str(tiny_model("gemma4")), train_on="all", progress=False)
    layout = read_layout(out)
    tokenizer = load_processor(str(tiny_model("gemma4"))).processor.tokenizer
    for row in load_shards(out):
        frames = int(model_inputs(row, layout)["num_frames_per_video"].sum())
        trained = tokenizer.decode(row["input_ids"][row["labels"] != -100].tolist())
        masked = tokenizer.decode(row["input_ids"][row["labels"] == -100].tolist())
        # With --train-on all every text token is trained but the media and the "mm:ss " before each frame.
        assert re.search(r"\d\d:\d\d", trained) is None and "<|image>" not in trained, row["id"]
        assert len(re.findall(r"\d\d:\d\d <\|image>", masked)) == frames > 0, row["id"]
        assert "<|turn>user" in trained and "A square moves right." in trained, row["id"]


@pytest.mark.parametrize("alias", ["qwen3_vl", "qwen3_5"])
def test_frame_timestamps_are_never_trained_even_with_train_on_all(alias, video_data, tmp_path):
    out = tmp_path / "shards"
    tokenize(video_data, out, model=str(tiny_model(alias)), train_on="all", progress=False)
    tokenizer = load_processor(str(tiny_model(alias))).processor.tokenizer
    for row in load_shards(out):
        ids, labels = row["input_ids"], row["labels"]
        frame_pairs = int(model_inputs(row, read_layout(out))["video_grid_thw"][:, 0].sum())
        assert tokenizer.decode(ids).count(" seconds>") == frame_pairs > 0
        trained = tokenizer.decode(ids[labels != -100])
        assert "seconds" not in trained
        assert "<|im_start|>user" in trained and "A square moves right." in trained  # all but the media


def test_glm4v_refuses_an_image_beside_a_video_and_writes_each_frame_with_its_second(video_data, video_shards):
    out = video_shards("glm4v")
    (reject,) = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert reject["id"] == "image-and-video"
    assert reject["reason"] == "images and videos in one row, which this model family's forward cannot take together"
    tokenizer = load_processor(str(tiny_model("glm4v"))).processor.tokenizer
    shards = {row["id"]: row for row in load_shards(out)}
    # 4 frames at 10 fps make 2 pairs, both within the first second; 5 frames are padded to 3 pairs.
    frame = "<|begin_of_image|>" + "<|image|>" * 4 + "<|end_of_image|>"
    assert f"<|begin_of_video|>{frame}0{frame}0<|end_of_video|>" in tokenizer.decode(shards["four-frames"]["input_ids"])
    odd = tokenizer.decode(shards["odd-frames"]["input_ids"])
    frames = r"(<\|begin_of_image\|>(<\|image\|>)+<\|end_of_image\|>0){3}"
    assert re.search(r"<\|begin_of_video\|>" + frames + r"<\|end_of_video\|>", odd)


def test_glm4v_frame_seconds_are_never_trained_even_with_train_on_all(video_data, tmp_path):
    out = tmp_path / "shards"
    tokenize(video_data, out, model=str(tiny_model("glm4v")), train_on="all", progress=False)
    tokenizer = load_processor(str(tiny_model("glm4v"))).processor.tokenizer
    bov, eov = tokenizer.convert_tokens_to_ids(["<|begin_of_video|>", "<|end_of_video|>"])
    for row in load_shards(out):
        ids, labels = row["input_ids"], row["labels"]
        start, end = int(np.flatnonzero(ids == bov)[0]), int(np.flatnonzero(ids == eov)[0])
        frames = int(model_inputs(row, read_layout(out))["video_grid_thw"][:, 0].sum())
        # Between the video's tokens: each frame and the second written after it, all masked.
        seconds = [token for token in ids[start:end] if tokenizer.decode([token]).isdigit()]
        assert len(seconds) == frames > 0
        assert np.all(labels[start:end + 1] == -100)
        trained = tokenizer.decode(ids[labels != -100])
        assert "<|user|>" in trained and "A square moves right." in trained  # all but the media


# Where each family keeps its video pixels: InternVL puts the frames among the image tiles, in text order.
STACKED_VIDEO_PIXELS = {"internvl": "pixel_values", "llava_onevision": "pixel_values_videos"}


@pytest.mark.parametrize("alias", sorted(STACKED_VIDEO_PIXELS))
def test_stacked_video_shards_rebuild_the_processor_output_bit_for_bit(alias, video_data, video_shards):
    out = video_shards(alias)
    layout = read_layout(out)
    assert {spec.name: spec for spec in layout.tensors}[STACKED_VIDEO_PIXELS[alias]].stored_dtype == "uint8"
    loaded = load_processor(str(tiny_model(alias)))
    processor, template = loaded.processor, load_template(loaded.family.template_name)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model(alias)).eval()
    shards = {row["id"]: row for row in load_shards(out)}
    for row in datasets.load_from_disk(str(video_data)):
        expected = oracle_outputs(processor, row, template)
        rebuilt = model_inputs(shards[row["id"]], layout)
        assert set(rebuilt) == set(expected) - {"assistant_masks"} | {"labels"}, row["id"]
        for name, tensor in expected.items():
            if name != "assistant_masks":
                assert rebuilt[name].dtype == tensor.dtype and torch.equal(rebuilt[name], tensor), (row["id"], name)
        expected.pop("assistant_masks")
        batch = ShardCollator(layout, pad_token_id=0)([shards[row["id"]]])
        with torch.no_grad():
            got = model(**{name: value for name, value in batch.items() if name != "labels"}).logits
            assert torch.allclose(got, model(**expected).logits, atol=1e-5), (alias, row["id"])


def test_internvl_frame_numbers_are_never_trained(video_data, tmp_path):
    out = tmp_path / "all"
    tokenize(video_data, out, model=str(tiny_model("internvl")), train_on="all", progress=False)
    tokenizer = load_processor(str(tiny_model("internvl"))).processor.tokenizer
    frame_counts = {row["id"]: len(row["videos"][0]["frames"]) for row in datasets.load_from_disk(str(video_data))}
    for row in load_shards(out):
        frames = frame_counts[row["id"]]
        trained = tokenizer.decode(row["input_ids"][row["labels"] != -100].tolist())
        masked = tokenizer.decode(row["input_ids"][row["labels"] == -100].tolist())
        # With --train-on all every text token is trained but the media and the "FrameN: " before each frame.
        assert "Frame" not in trained and "<img>" not in trained, row["id"]
        assert len(re.findall(r"Frame\d+: <img>", masked)) == frames, row["id"]
        assert "<|im_start|>user" in trained and "A square moves right." in trained, row["id"]


@pytest.mark.parametrize("alias", sorted(STACKED_VIDEO_PIXELS))
def test_videos_of_different_lengths_in_one_row_are_a_reject_where_the_processor_stacks_them(alias, tmp_path):
    def row(row_id, *frame_counts):
        content = [VIDEO_PART] * len(frame_counts) + [text("Both?")]
        return {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": [text("Yes.")]}],
                "images": [], "videos": [stored_video(moving_frames(count)) for count in frame_counts], "audios": [],
                "id": row_id, "source": "made"}

    data = tmp_path / "normalised"
    datasets.Dataset.from_list([row("lengths-differ", 4, 3), row("same-length", 3, 3)],
                               features=NORMALISED_FEATURES).save_to_disk(str(data))
    summary = tokenize(data, tmp_path / "shards", model=str(tiny_model(alias)), progress=False)
    assert (summary.rows_written, summary.rows_rejected) == (1, 1)
    (reject,) = [json.loads(line) for line in (tmp_path / "shards" / "rejects.jsonl").read_text().splitlines()]
    assert reject["id"] == "lengths-differ" and reject["reason"].startswith("the processor failed"), reject
    (written,) = load_shards(tmp_path / "shards")
    pixels = model_inputs(written, read_layout(tmp_path / "shards"))[STACKED_VIDEO_PIXELS[alias]]
    assert pixels.shape[:2] == ((6, 3) if alias == "internvl" else (2, 3))


def test_smolvlm_video_shards_rebuild_the_processor_output_and_its_batch(video_data, video_shards):
    out = video_shards("smolvlm")
    (reject,) = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert reject["id"] == "image-and-video" and "cannot take together" in reject["reason"]
    layout = read_layout(out)
    specs = {spec.name: spec for spec in layout.tensors}
    assert specs["pixel_values"].stored_dtype == "uint8" and specs["pixel_attention_mask"].stored_dtype == "uint8"
    loaded = load_processor(str(tiny_model("smolvlm")))
    processor, template = loaded.processor, load_template(loaded.family.template_name)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model("smolvlm")).eval()
    shards = {row["id"]: row for row in load_shards(out)}
    alone = {}
    for row in datasets.load_from_disk(str(video_data)):
        if row["id"] in REFUSED["smolvlm"]:
            continue
        expected = oracle_outputs(processor, row, template)
        expected.pop("assistant_masks")
        rebuilt = model_inputs(shards[row["id"]], layout)
        # A video's frames are its 16 px views, one after the other: [1, frames, 3, 16, 16].
        assert tuple(rebuilt["pixel_values"].shape) == (1, len(row["videos"][0]["frames"]), 3, 16, 16)
        for name, tensor in expected.items():
            assert rebuilt[name].dtype == tensor.dtype and torch.equal(rebuilt[name], tensor), (row["id"], name)
        with torch.no_grad():
            alone[row["id"]] = model(**expected).logits[0]
    # A batch pads the rows' frames with empty ones, as the processor pads a batch; the model drops them.
    ids = list(alone)
    batch = ShardCollator(layout, pad_token_id=0)([shards[row_id] for row_id in ids])
    assert tuple(batch["pixel_values"].shape) == (3, 5, 3, 16, 16)
    codes = ShardCollator(layout, pad_token_id=0, decode_pixels=False)([shards[row_id] for row_id in ids])
    hook = model.register_forward_pre_hook(PixelDecoding(layout), with_kwargs=True)
    with torch.no_grad():
        hooked = model(**{k: v for k, v in codes.items() if k != "labels"}).logits
    hook.remove()
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert torch.equal(hooked, logits)
    for index, row_id in enumerate(ids):
        assert torch.allclose(logits[index, : len(alone[row_id])], alone[row_id], atol=1e-5), row_id


def test_smolvlm_takes_videos_of_different_lengths_in_one_row(tmp_path):
    # Its video processor pads the shorter video with empty frames, which the model drops.
    content = [VIDEO_PART, VIDEO_PART, text("Both?")]
    row = {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": [text("Yes.")]}],
           "images": [], "videos": [stored_video(moving_frames(4)), stored_video(moving_frames(3))], "audios": [],
           "id": "lengths-differ", "source": "made"}
    data = tmp_path / "normalised"
    datasets.Dataset.from_list([row], features=NORMALISED_FEATURES).save_to_disk(str(data))
    summary = tokenize(data, tmp_path / "shards", model=str(tiny_model("smolvlm")), progress=False)
    assert (summary.rows_written, summary.rows_rejected) == (1, 0)
    (written,) = load_shards(tmp_path / "shards")
    inputs = model_inputs(written, read_layout(tmp_path / "shards"))
    assert tuple(inputs["pixel_values"].shape) == (2, 4, 3, 16, 16)
    assert not inputs["pixel_values"][1, 3].any()  # the padding frame
    model = AutoModelForImageTextToText.from_pretrained(tiny_model("smolvlm"))
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).loss)


def test_smolvlm_video_intro_and_frame_times_are_never_trained_even_with_train_on_all(video_data, tmp_path):
    out = tmp_path / "all"
    tokenize(video_data, out, model=str(tiny_model("smolvlm")), train_on="all", progress=False)
    tokenizer = load_processor(str(tiny_model("smolvlm"))).processor.tokenizer
    frame_counts = {row["id"]: len(row["videos"][0]["frames"]) for row in datasets.load_from_disk(str(video_data))}
    for row in load_shards(out):
        trained = tokenizer.decode(row["input_ids"][row["labels"] != -100].tolist())
        masked = tokenizer.decode(row["input_ids"][row["labels"] == -100].tolist())
        # Every text token is trained but the media, the video's intro and the "\nFrame from mm:ss:" of each frame.
        assert "Frame" not in trained and "provided" not in trained and "<image>" not in trained, row["id"]
        assert masked.count("You are provided the following series of") == 1, row["id"]
        assert len(re.findall(r"\nFrame from \d\d:\d\d:<fake_token_around_image><global-img>", masked)) == \
            frame_counts[row["id"]], row["id"]
        assert trained.startswith("<|im_start|>User:") and "A square moves right." in trained, row["id"]
