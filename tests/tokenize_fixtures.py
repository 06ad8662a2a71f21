"""Shared set-up of the tokenize and shard tests: tiny checkpoints and small normalised datasets."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import soundfile  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from vlmdata.convert import convert  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Families tokenized end to end: the oracle, labels and a forward pass are checked for each.
FAMILIES = [
    "gemma3", "qwen2_vl", "llava", "qwen2_5_vl", "mllama", "pixtral", "mistral3", "llama4", "gemma3n", "qwen3_vl",
    "qwen3_5", "gemma4", "glm4v", "internvl", "llava_onevision", "lfm2_vl", "smolvlm",
]
# What ends an assistant turn in each family's official format (trained together with the reply).
END_OF_TURN = {
    "gemma3": "<end_of_turn>",
    "gemma3n": "<end_of_turn>",
    "qwen2_vl": "<|im_end|>",
    "qwen2_5_vl": "<|im_end|>",
    "qwen3_vl": "<|im_end|>",
    "qwen3_5": "<|im_end|>",
    "llava": "",
    "mllama": "<|eot_id|>",
    "pixtral": "</s>",
    "mistral3": "</s>",
    "llama4": "<|eot|>",
    "gemma4": "<turn|>",
    "glm4v": "",  # no end-of-turn token: the next role token follows the reply
    "internvl": "<|im_end|>",
    "llava_onevision": "<|im_end|>",
    "lfm2_vl": "<|im_end|>",
    "smolvlm": "<end_of_utterance>",
}
# What opens the replies after the last user turn: Qwen3.5 writes an empty think block, trained with the reply.
LAST_REPLY_OPENING = {"qwen3_5": "<think>\n\n</think>\n\n"}
REPLIES = ["A red square on a pale background.", "It is drawn with straight edges."]


def _load_builder():
    spec = importlib.util.spec_from_file_location("build_tiny_models", ROOT / "fixtures" / "build_tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


_builder = None
_built_dir: Path | None = None


def tiny_model(alias: str) -> Path:
    """The folder of a family's tiny checkpoint: the committed build when current, else one built once."""
    global _builder, _built_dir
    if _builder is None:
        _builder = _load_builder()
    if _builder.is_built(_builder.DEFAULT_OUT, alias):
        return _builder.DEFAULT_OUT / alias
    if _built_dir is None:
        _built_dir = Path(tempfile.mkdtemp(prefix="vlmdata-tiny-models-"))
    if not _builder.is_built(_built_dir, alias):
        _builder.build(_built_dir, [alias])
    return _built_dir / alias


def drawn_image(path: Path, width: int, height: int, colour: tuple[int, int, int]) -> str:
    image = Image.new("RGB", (width, height), (250, 250, 245))
    draw = ImageDraw.Draw(image)
    draw.rectangle([width // 8, height // 8, width // 2, height // 2], fill=colour)
    draw.ellipse([width // 2, height // 3, width - 2, height - 2], outline=(10, 10, 10), width=2)
    image.save(path)
    return path.name


def conversations(folder: Path, with_audio: bool = False) -> list[dict]:
    """Rows for a JSONL source: two turns with one image, two images, text only, and optionally audio."""
    red = drawn_image(folder / "red.png", 64, 48, (200, 30, 30))
    wide = drawn_image(folder / "wide.png", 140, 50, (30, 160, 40))
    tall = drawn_image(folder / "tall.png", 30, 90, (20, 40, 200))
    rows = [
        {
            "id": "two-turns",
            "messages": [
                {"role": "user", "content": [{"type": "image", "path": red}, {"type": "text", "text": "What is this?"}]},
                {"role": "assistant", "content": REPLIES[0]},
                {"role": "user", "content": "And its edges?"},
                {"role": "assistant", "content": REPLIES[1]},
            ],
        },
        {
            "id": "two-images",
            "messages": [
                {"role": "user", "content": [{"type": "image", "path": wide}, {"type": "image", "path": tall},
                                             {"type": "text", "text": "Compare them."}]},
                {"role": "assistant", "content": "The first is wide, the second tall."},
            ],
        },
        {"id": "text-only", "messages": [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."}]},
    ]
    if with_audio:
        tone = np.sin(np.linspace(0, 440 * 2 * np.pi, 16000)).astype(np.float32) * 0.3
        soundfile.write(folder / "tone.wav", tone, 16000)
        rows.append({
            "id": "audio",
            "messages": [
                {"role": "user", "content": [{"type": "audio", "path": "tone.wav"}, {"type": "text", "text": "What is it?"}]},
                {"role": "assistant", "content": "A pure tone."},
            ],
        })
    return rows


def normalised(folder: Path, with_audio: bool = False) -> Path:
    """A normalised dataset made by `convert` from `conversations`, in `folder/normalised`."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "conversations.jsonl"
    source.write_text("\n".join(json.dumps(row) for row in conversations(folder, with_audio)) + "\n")
    convert([str(source)], folder / "normalised", progress=False)
    return folder / "normalised"
