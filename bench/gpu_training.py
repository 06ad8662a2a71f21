"""Training steps on a GPU, packed and unpacked, with models of real width and depth: tokens per second and the
share of step time spent waiting on data.

The models are the tiny fixtures' configs with the language model (and vision encoder) widened and deepened to
those of Qwen2-VL-2B and Gemma 3 4B, randomly initialised in bf16: no weights are downloaded. Their processors,
and so the images' token counts, stay the tiny fixtures'. For each family and attention implementation (sdpa,
and flash-attention 2 where it is installed), `vlmdata train` runs `--steps` steps unpacked and packed at about
equal tokens per step, and QLoRA 4-bit when bitsandbytes is installed. The data wait is the collator's time per
batch, measured on the same batches, over the step time (the data loader runs in the training process).

Example:
    python -m bench.gpu_training --rows 64 --steps 20 --json out/gpu/training.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import BENCH_DIR, FIXTURE_MODELS
from bench.make_workload import normalised_workload

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
# Widths and depths of the real checkpoints (their config.json); everything else stays the tiny config's.
REAL_SIZE = {
    "qwen2_vl": {"text_config": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                                 "num_attention_heads": 12, "num_key_value_heads": 2, "head_dim": 128},
                 "vision_config": {"depth": 32, "embed_dim": 1280, "num_heads": 16, "hidden_size": 1536, "mlp_ratio": 4}},
    "gemma3": {"text_config": {"hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
                               "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                               "query_pre_attn_scalar": 256, "sliding_window": 1024},
               "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                                 "num_attention_heads": 16}},
}


def real_size_model(family: str, folder: Path, tiny: bool = False) -> Path:
    """The tiny checkpoint's config at real width and depth (kept tiny with `tiny`, to check the script on a
    CPU), random weights, saved with its processor."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    config = AutoConfig.from_pretrained(FIXTURE_MODELS / family)
    for part, values in ({} if tiny else REAL_SIZE[family]).items():
        for key, value in values.items():
            setattr(getattr(config, part), key, value)
    if family == "gemma3" and not tiny:
        config.text_config.layer_types = [
            "full_attention" if (index + 1) % 6 == 0 else "sliding_attention" for index in range(34)]
    with torch.device(DEVICE):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16 if CUDA else torch.float32)
    model.save_pretrained(folder)
    AutoProcessor.from_pretrained(FIXTURE_MODELS / family).save_pretrained(folder)
    del model
    if CUDA:
        torch.cuda.empty_cache()
    return folder


def run(shards: Path, model: Path, out: Path, steps: int, batch_size: int, pack_length: int | None,
        attention: str, quantization: str | None) -> dict:
    from vlmdata.train import AdapterOptions, TrainOptions, train

    options = TrainOptions(adapter=AdapterOptions(lora_dropout=0.0), max_steps=steps, learning_rate=1e-4,
                           batch_size=batch_size, packing=pack_length is not None, pack_length=pack_length,
                           report_to="none", logging_steps=1, bf16=CUDA, quantization=quantization,
                           attn_implementation=attention)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    summary = train(str(shards), out, model=str(model), options=options, overwrite=True, progress=False)
    records = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    tokens = sum(record["trained_tokens"] for record in records)
    return {"seconds": summary.metrics["train_runtime"], "trained_tokens": tokens,
            "tokens_per_s": tokens / summary.metrics["train_runtime"],
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if CUDA else None, "loss": records[-1]["loss"]}


def collate_seconds(shards: Path, batch_size: int, pack_length: int | None, batches: int) -> float:
    """The collator's time per batch, on the CPU, for the batches a run makes."""
    from transformers import AutoProcessor

    from vlmdata.pack_plan import PackOptions, plan_packs
    from vlmdata.train.collator import ShardCollator
    from vlmdata.train.data import ArrowRows, open_shards
    from vlmdata.train.packing import PackingCollator

    opened = open_shards(str(shards))
    rows = ArrowRows(opened.dataset)
    pad = AutoProcessor.from_pretrained(opened.processor_dir).tokenizer.pad_token_id or 0
    started = time.perf_counter()
    if pack_length is None:
        collate = ShardCollator(opened.layout, pad, decode_pixels=False)
        for index in range(batches):
            collate([rows[(index * batch_size + offset) % len(rows)] for offset in range(batch_size)])
    else:
        packs = plan_packs(np.array(opened.dataset["length"]), PackOptions(pack_length), seed=42).packs
        collate = PackingCollator(opened.layout, pad, decode_pixels=False)
        for index in range(batches):
            collate([[rows[row] for row in packs[(index * batch_size + offset) % len(packs)]]
                     for offset in range(batch_size)])
    return (time.perf_counter() - started) / batches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="qwen2_vl,gemma3")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tiny", action="store_true", help="keep the tiny widths: checks the script on a CPU")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "gpu_training.json")
    args = parser.parse_args(argv)
    from vlmdata.shards import load_shards
    from vlmdata.tokenize import tokenize

    work = BENCH_DIR / "gpu"
    work.mkdir(parents=True, exist_ok=True)
    flash = ["flash_attention_2"] if importlib.util.find_spec("flash_attn") else []
    quantizations = [None] + (["4bit"] if importlib.util.find_spec("bitsandbytes") else [])
    results = {"gpu": torch.cuda.get_device_name() if CUDA else "none (CPU)", "flash_attention": bool(flash), "quantizations": quantizations,
               "runs": []}
    data = normalised_workload(args.rows, "768", "fit")
    for family in args.families.split(","):
        shards = work / f"shards-{family}"
        if not shards.exists():
            tokenize(data, shards, model=str(FIXTURE_MODELS / family), progress=False)
        lengths = np.array(load_shards(shards)["length"])
        pack_length = int(lengths.max())
        packs_per_step = max(1, round(args.batch_size * lengths.mean() / pack_length))
        model = real_size_model(family, work / f"model-{family}", args.tiny)
        # Gemma 3's packed masks need sdpa (flash-attention 2 cannot hold its images' two-way blocks).
        for attention in ["sdpa"] + (flash if family != "gemma3" else []):
            for quantization in quantizations:
                for side, size, length in (("unpacked", args.batch_size, None), ("packed", packs_per_step, pack_length)):
                    figures = run(shards, model, work / "out", args.steps, size, length, attention, quantization)
                    figures["data_wait"] = collate_seconds(shards, size, length, 8) / (figures["seconds"] / args.steps)
                    results["runs"].append({"family": family, "attention": attention, "quantization": quantization,
                                            "side": side, "batch_size": size, "pack_length": length, **figures})
                    print(json.dumps(results["runs"][-1]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
