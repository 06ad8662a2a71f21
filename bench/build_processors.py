"""Build processors of real size for the benchmarks, from the real transformers classes.

Image processing is where tokenize spends its time, so the image processors carry the released checkpoints'
settings; text tokenisation costs little, so the tokenizers and chat templates are the tiny fixtures' ones
(`fixtures/build_tiny_models.py`), which carry the same special tokens:

- gemma3: `Gemma3ImageProcessor` at 896x896, bilinear, mean and std 0.5, and `image_seq_length` 256
  (`mm_tokens_per_image` 256 in config.json), as google/gemma-3-4b-it;
- qwen2_vl: `Qwen2VLImageProcessor` with its default pixel budget (3136 to 1003520 pixels, 14 px patches
  merged 2x2, so up to 1280 image tokens per image).

No model weights are saved: tokenize needs only the processor and config.json (which names the family).

Example:
    python -m bench.build_processors          # prints out/bench/processors
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from bench.common import BENCH_DIR, FIXTURE_MODELS

PROCESSORS_DIR = BENCH_DIR / "processors"
FAMILIES = ("gemma3", "qwen2_vl")
# google/gemma-3-4b-it's preprocessor_config.json and config.json.
GEMMA3_IMAGE_SIZE = 896
GEMMA3_PATCH_SIZE = 14
GEMMA3_TOKENS_PER_IMAGE = 256


def processor_dir(family: str) -> Path:
    return PROCESSORS_DIR / family


def build_processors(families: tuple[str, ...] = FAMILIES) -> dict[str, Path]:
    """Saves each family's real-size processor under `out/bench/processors/<family>` (once)."""
    return {family: _build(family) for family in families}


def _build(family: str) -> Path:
    from transformers import (
        AutoTokenizer,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tiny = FIXTURE_MODELS / family
    if not (tiny / "config.json").is_file():
        raise SystemExit(f"{tiny} is missing: run `make fixtures` first")
    folder = processor_dir(family)
    stamp = folder / "built_from.json"
    source_stamp = (tiny / "fixture_stamp.txt").read_text().strip()
    if stamp.is_file() and json.loads(stamp.read_text()).get("fixture_stamp") == source_stamp:
        return folder

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    template = (tiny / "chat_template.jinja").read_text(encoding="utf-8")
    config = json.loads((tiny / "config.json").read_text(encoding="utf-8"))
    if family == "gemma3":
        image_processor = Gemma3ImageProcessor(
            size={"height": GEMMA3_IMAGE_SIZE, "width": GEMMA3_IMAGE_SIZE},
            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], resample=2,
        )
        processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template,
                                    image_seq_length=GEMMA3_TOKENS_PER_IMAGE)
        config["mm_tokens_per_image"] = GEMMA3_TOKENS_PER_IMAGE
        config["vision_config"].update(image_size=GEMMA3_IMAGE_SIZE, patch_size=GEMMA3_PATCH_SIZE)
    elif family == "qwen2_vl":
        processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(),
                                     video_processor=Qwen2VLVideoProcessor(),
                                     tokenizer=tokenizer, chat_template=template)
    else:
        raise ValueError(f"no real-size processor for {family!r}; known: {', '.join(FAMILIES)}")

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    processor.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    # Written last: a folder without it is an interrupted build and is built again.
    stamp.write_text(json.dumps({"fixture_stamp": source_stamp}), encoding="utf-8")
    return folder


def main() -> int:
    for family, folder in build_processors().items():
        print(f"{family:10s} {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
