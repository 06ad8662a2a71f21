"""Smoke runs of the benchmark scripts: each one runs on a few rows and writes well-formed figures.

No figure is checked against a goal (timings on a shared machine say nothing in a test); these only catch
scripts that no longer run against the current stages. Everything is written under a temporary folder.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Read by the bench modules when they are imported: a temporary workspace and a pool of 3 photos.
os.environ["VLMDATA_BENCH_DIR"] = os.environ.get("VLMDATA_BENCH_SMOKE_DIR") or str(
    Path(os.environ.get("TMPDIR", "/tmp")) / f"vlmdata-bench-smoke-{os.getpid()}")
os.environ["VLMDATA_BENCH_PHOTOS"] = "3"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT))

pytestmark = pytest.mark.skipif(not (ROOT / "fixtures" / "data" / "models" / "gemma3").is_dir(),
                                reason="needs the tiny models: make fixtures")


@pytest.fixture(scope="module", autouse=True)
def bench_workspace():
    import shutil

    folder = Path(os.environ["VLMDATA_BENCH_DIR"])
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def read(path: Path) -> tuple[list[dict], dict]:
    payload = json.loads(path.read_text())
    return payload["figures"], payload["details"]


def test_make_workload_is_cached_and_well_formed():
    from bench.make_workload import JSONL_NAME, make_workload

    folder = make_workload(rows=3, quiet=True)
    assert make_workload(rows=3, quiet=True) == folder
    records = [json.loads(line) for line in (folder / JSONL_NAME).read_text().splitlines()]
    assert len(records) == 3
    for record in records:
        images = [part for message in record["messages"] if isinstance(message["content"], list)
                  for part in message["content"] if part["type"] == "image"]
        assert 1 <= len(images) <= 4
        assert all((folder / image["path"]).is_file() for image in images)
        assert {message["role"] for message in record["messages"]} >= {"user", "assistant"}


def test_bench_convert(tmp_path):
    from bench import bench_convert

    assert bench_convert.main(["--rows", "2", "--image-sizes", "256", "--repeats", "1",
                               "--json", str(tmp_path / "convert.json")]) == 0
    figures, details = read(tmp_path / "convert.json")
    assert {figure["key"] for figure in figures} == {"convert.draft.256", "convert.pillow.256"}
    assert all(figure["ratio"] > 0 for figure in figures)
    assert details["256"]["rows_per_s"]["vlmdata"] > 0


def test_bench_tokenize(tmp_path):
    from bench import bench_tokenize

    assert bench_tokenize.main(["--families", "gemma3", "--two-process-families", "", "--rows", "2",
                                "--warm-rows", "1", "--repeats", "1", "--json", str(tmp_path / "tokenize.json")]) == 0
    figures, details = read(tmp_path / "tokenize.json")
    keys = {figure["key"] for figure in figures}
    assert keys == {"tokenize.gemma3.floor", "tokenize.gemma3.datasets_map", "tokenize.gemma3.masks",
                    "tokenize.gemma3.floor_one_core"}
    assert details["gemma3"]["rows_per_s"]["floor"] > 0
    assert details["gemma3"]["image_processor"].startswith("Gemma3ImageProcessor")
    # The pinned pass ran in a process of its own, on one core from before torch started its threads.
    assert details["one_core"]["gemma3"]["torch_threads"] == 1
    assert details["one_core"]["gemma3"]["rows_per_s"]["floor"] > 0


def test_bench_memory(tmp_path):
    from bench import bench_memory

    # Convert only: a tokenize process imports torch and transformers, several seconds each time.
    assert bench_memory.main(["--convert-rows", "1,2", "--tokenize-rows", "none", "--convert-num-proc", "1",
                              "--json", str(tmp_path / "memory.json")]) == 0
    figures, details = read(tmp_path / "memory.json")
    assert {figure["key"] for figure in figures} == {"memory.convert.peak", "memory.convert.growth"}
    # A Python process with pyarrow and datasets loaded holds tens of MiB at least.
    assert details["convert"]["large"]["peak_rss_bytes"] > 20 * 2**20


def test_bench_storage_checks_exactness(tmp_path):
    from bench import bench_storage

    assert bench_storage.main(["--families", "gemma3", "--rows", "1", "--check-rows", "1",
                               "--json", str(tmp_path / "storage.json")]) == 0
    figures, details = read(tmp_path / "storage.json")
    assert [figure["key"] for figure in figures] == ["storage.gemma3"]
    assert details["gemma3"]["exact"], details["gemma3"]["problems"]
    assert details["gemma3"]["float32_pixel_bytes"] > 0


def test_bench_video_checks_exactness(tmp_path):
    from bench import bench_video

    assert bench_video.main(["--rows", "1", "--seconds", "2", "--repeats", "1", "--json", str(tmp_path / "video.json")]) == 0
    figures, details = read(tmp_path / "video.json")
    assert [figure["key"] for figure in figures] == [
        "video.decode.seek", "video.decode.sparse", "video.convert.seek", "video.storage.qwen2_vl", "video.storage.qwen2_5_vl"]
    for family in ("qwen2_vl", "qwen2_5_vl"):
        assert details[family]["exact"], details[family]["problems"]
        assert details[family]["float32_pixel_bytes"] > 0


def test_bench_collate(tmp_path):
    from bench import bench_collate

    assert bench_collate.main(["--families", "gemma3", "--rows", "2", "--batch-size", "2", "--repeats", "1",
                               "--json", str(tmp_path / "collate.json")]) == 0
    figures, details = read(tmp_path / "collate.json")
    assert [figure["key"] for figure in figures] == ["collate.gemma3", "collate.gemma3.cpu_decoded"]
    assert details["gemma3"]["shard_ms_per_batch"] > 0 and details["gemma3"]["on_the_fly_ms_per_batch"] > 0


def test_bench_packing(tmp_path):
    from bench import bench_packing

    assert bench_packing.main(["--families", "qwen2_vl", "--rows", "4", "--steps", "1", "--repeats", "1",
                               "--json", str(tmp_path / "packing.json")]) == 0
    figures, details = read(tmp_path / "packing.json")
    assert [figure["key"] for figure in figures] == ["packing.qwen2_vl.padding", "packing.qwen2_vl.speed",
                                                     "packing.qwen2_vl.attention"]
    assert figures[2]["ratio"] > 0
    assert details["qwen2_vl"]["packed_padding"] < details["qwen2_vl"]["unpacked_padding"]
    assert all(rate > 0 for rates in details["qwen2_vl"]["rates"].values() for rate in rates)


def test_profile_and_report(tmp_path):
    pytest.importorskip("pyinstrument")
    from bench import profile_stages, report

    assert profile_stages.main(["--convert-rows", "2", "--tokenize-rows", "1",
                                "--json", str(tmp_path / "profile.json")]) == 0
    _, details = read(tmp_path / "profile.json")
    assert set(details) == {"convert", "tokenize"}
    assert details["tokenize"]["top"]

    text = report.render(tmp_path, {"command": "make bench", "elapsed_s": 60.0})
    assert "## Figures" in text
    assert "not measured: no GPU on this machine" in text
    assert "## Where the time goes (profiles)" in text


def test_gpu_training_script_runs_at_tiny_width_on_the_cpu(tmp_path):
    from bench import gpu_training

    assert gpu_training.main(["--families", "qwen2_vl", "--rows", "4", "--steps", "1", "--tiny",
                              "--json", str(tmp_path / "gpu.json")]) == 0
    runs = json.loads((tmp_path / "gpu.json").read_text())["runs"]
    assert [run["side"] for run in runs] == ["unpacked", "packed"]
    assert all(run["trained_tokens"] > 0 and 0 < run["data_wait"] for run in runs)


def test_bench_ray(tmp_path):
    from bench import bench_ray

    assert bench_ray.main(["--rows", "4,8", "--repeats", "1", "--json", str(tmp_path / "ray.json")]) == 0
    figures, details = read(tmp_path / "ray.json")
    assert [figure["key"] for figure in figures] == ["ray.convert.steady", "ray.startup"]
    assert details["ray_init_s"] > 0 and len(details["actor_startup_s"]) == 2
