"""`--engine ray` on a local Ray cluster started by these tests: the same bytes as `--engine local`, every row
accounted for, workers and drivers that die (docs/architecture.md, "Executors")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import fsspec
import pytest
from click.testing import CliRunner

from tests.fixture_data import REPO_ROOT, build_once
from tests.ray_workers import DyingWorker, StageWith
from tests.tokenize_fixtures import tiny_model
from vlmdata.cli import cli
from vlmdata.convert import convert
from vlmdata.errors import FatalError
from vlmdata.media import MediaOptions, Resize
from vlmdata.ray_engine import RayExecutor, check_shared
from vlmdata.stage import run_stage
from vlmdata.tokenize import tokenize

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.slow
UNIT = 16  # rows per work unit: the smallest, so that the fixtures make several units


def start_cluster(cpus_per_node: list[int]) -> Cluster:
    # Actors import the test workers from the repository, which is not installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus_per_node[0], "include_dashboard": False})
    for cpus in cpus_per_node[1:]:
        cluster.add_node(num_cpus=cpus)
    cluster.wait_for_nodes()
    return cluster


@pytest.fixture(scope="module")
def cluster():
    cluster = start_cluster([2])
    yield cluster.address
    cluster.shutdown()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The fixtures' layouts, and a JSON Lines file of 64 rows (bad ones among them): four work units."""
    root = build_once(tmp_path_factory)
    good = (root / "jsonl" / "conversations.jsonl").read_text(encoding="utf-8").splitlines()
    lines = []
    while len(lines) < 60:
        for line in good:
            row = json.loads(line)
            row["id"] = f"row-{len(lines)}"
            lines.append(json.dumps(row))
    lines[5] = json.dumps({"id": "no-assistant", "messages": [{"role": "user", "content": "Hello?"}]})
    lines[21] = "{not json"
    lines[37] = json.dumps({"id": "missing-file", "messages": [
        {"role": "user", "content": [{"type": "image", "path": "nowhere.png"}]}, {"role": "assistant", "content": "No."}]})
    jsonl = root / "jsonl" / "many.jsonl"
    jsonl.write_text("\n".join(lines[:64]) + "\n", encoding="utf-8")
    return {"llava": str(root / "llava_instruct_mix"), "mmiu": str(root / "mmiu"), "jsonl": str(jsonl)}


def files(folder: Path) -> dict[str, bytes]:
    """The bytes of every Arrow file and of the rejects file, by name."""
    names = sorted(path.name for path in folder.glob("*.arrow")) + ["rejects.jsonl"]
    return {name: (folder / name).read_bytes() for name in names}


def assert_same_files(local: Path, remote: Path) -> None:
    expected, got = files(local), files(remote)
    assert list(got) == list(expected)
    for name in expected:
        assert got[name] == expected[name], f"{name} differs"


MEDIA = MediaOptions(resize=Resize.parse("48", None, "bilinear"))


@pytest.fixture(scope="module")
def local_jsonl(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "jsonl"
    convert([sources["jsonl"]], out, media_options=MEDIA, rows_per_unit=UNIT, progress=False)
    return out


@pytest.mark.parametrize("source", ["llava", "mmiu", "jsonl"])
def test_convert_on_ray_writes_the_bytes_of_local(cluster, sources, tmp_path, source):
    local, remote = tmp_path / "local", tmp_path / "ray"
    convert([sources[source]], local, media_options=MEDIA, rows_per_unit=UNIT, num_proc=2, progress=False)
    summary = convert([sources[source]], remote, media_options=MEDIA, rows_per_unit=UNIT, engine="ray",
                      ray_address=cluster, num_workers=2, progress=False)

    assert_same_files(local, remote)
    assert summary.rows_read == summary.rows_written + summary.rows_rejected
    metadata = json.loads((remote / "vlmdata.json").read_text())
    assert metadata["summary"]["engine"]["engine"] == "ray" and metadata["summary"]["engine"]["workers"] == 2
    if source == "jsonl":
        assert summary.engine["units"] == 4 and summary.rows_rejected == 3
        assert len(datasets.load_from_disk(str(remote))) == 61


@pytest.mark.parametrize("family", ["gemma3", "qwen2_vl"])
def test_tokenize_on_ray_writes_the_bytes_of_local(cluster, local_jsonl, tmp_path, family):
    local, remote = tmp_path / "local", tmp_path / "ray"
    model = str(tiny_model(family))
    tokenize(local_jsonl, local, model=model, max_length=120, truncate="text", rows_per_unit=UNIT, progress=False)
    summary = tokenize(local_jsonl, remote, model=model, max_length=120, truncate="text", rows_per_unit=UNIT,
                       engine="ray", ray_address=cluster, num_workers=2, progress=False)

    assert_same_files(local, remote)
    assert summary.engine["units"] == 4
    assert (remote / "processor").is_dir()


def test_a_worker_killed_mid_unit_has_its_unit_retried(cluster, sources, local_jsonl, tmp_path):
    marker = tmp_path / "killed"
    stage = StageWith([sources["jsonl"]], lambda options: DyingWorker(options, row_id="row-40", once_marker=str(marker)), MEDIA)
    run_stage(stage, tmp_path / "out", RayExecutor(cluster, num_workers=2), rows_per_unit=UNIT, progress=False)

    assert marker.read_text() == "killed"
    assert_same_files(local_jsonl, tmp_path / "out")


def test_a_unit_that_keeps_killing_its_worker_stops_the_run_naming_it(cluster, sources, tmp_path):
    stage = StageWith([sources["jsonl"]], lambda options: DyingWorker(options, row_id="row-40"), MEDIA)
    with pytest.raises(FatalError, match=r"work unit 2 \(input rows 32-47\) failed 3 times: its worker died"):
        run_stage(stage, tmp_path / "out", RayExecutor(cluster, num_workers=2), rows_per_unit=UNIT, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_killed_driver_leaves_no_complete_folder_and_the_rerun_keeps_its_units(cluster, sources, local_jsonl, tmp_path):
    out = tmp_path / "out"
    units = out.with_name("out.partial") / ".units"
    driver = subprocess.Popen([sys.executable, "-m", "tests.ray_workers", sources["jsonl"], str(out), cluster, "row-40"],
                              cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not all((units / f"unit-0000{index}.json").is_file() for index in (0, 1)):
        assert driver.poll() is None, driver.stderr.read().decode()
        assert time.monotonic() < deadline, "the driver wrote no unit in 120 s"
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()

    assert not out.exists()
    with pytest.raises(FileNotFoundError):
        datasets.load_from_disk(str(out.with_name("out.partial")))
    summary = convert([sources["jsonl"]], out, media_options=MediaOptions(), rows_per_unit=UNIT, engine="ray",
                      ray_address=cluster, num_workers=2, progress=False)
    assert summary.engine["units_resumed"] >= 2
    local = tmp_path / "local"
    convert([sources["jsonl"]], local, media_options=MediaOptions(), rows_per_unit=UNIT, progress=False)
    assert_same_files(local, out)


def test_two_nodes_run_the_units_and_write_the_bytes_of_local(sources, local_jsonl, tmp_path):
    two_nodes = start_cluster([1, 1])
    try:
        summary = convert([sources["jsonl"]], tmp_path / "out", media_options=MEDIA, rows_per_unit=UNIT, engine="ray",
                          ray_address=two_nodes.address, num_workers=2, progress=False)
        # The storage check itself, on a folder only this process can see (its own in-memory file system).
        ray.init(address=two_nodes.address, logging_level="ERROR", log_to_driver=False)
        try:
            fsspec.filesystem("memory").makedirs("/private/out.partial/.units", exist_ok=True)
            with pytest.raises(FatalError, match=r"memory://private/out is not on storage that every node "
                                                 r"of the cluster shares \(2 of 2 nodes cannot see it\)"):
                check_shared(ray, "memory://private/out.partial/.units")
            check_shared(ray, str(tmp_path))  # and one they all see
        finally:
            ray.shutdown()
    finally:
        two_nodes.shutdown()
    assert summary.engine["nodes"] == 2 and summary.engine["worker_nodes"] == 2
    assert_same_files(local_jsonl, tmp_path / "out")


def test_the_command_line_runs_on_ray_and_says_how(cluster, sources, local_jsonl, tmp_path):
    result = CliRunner().invoke(cli, ["convert", sources["jsonl"], "-o", str(tmp_path / "out"), "--image-size", "48",
                                      "--engine", "ray", "--ray-address", cluster, "--num-workers", "2",
                                      "--rows-per-unit", "16", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "engine         ray, 2 workers on 1 node, 4 units, start-up" in result.output
    assert_same_files(local_jsonl, tmp_path / "out")


def test_without_ray_the_engine_is_one_sentence_naming_the_extra(sources, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ModuleNotFoundError
    result = CliRunner().invoke(cli, ["convert", sources["jsonl"], "-o", str(tmp_path / "out"), "--engine", "ray"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: --engine ray needs ray, which is not installed: pip install 'vlmdata[ray]'."
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_ray_options_belong_to_the_ray_engine(sources, tmp_path):
    with pytest.raises(FatalError, match="--num-workers are options of --engine ray"):
        convert([sources["jsonl"]], tmp_path / "out", num_workers=2, progress=False)
    with pytest.raises(FatalError, match="--num-proc is an option of --engine local"):
        convert([sources["jsonl"]], tmp_path / "out", engine="ray", num_proc=2, progress=False)


def test_a_file_url_output_is_written_by_the_workers(cluster, sources, local_jsonl, tmp_path):
    convert([sources["jsonl"]], f"file://{tmp_path}/out", media_options=MEDIA, rows_per_unit=UNIT, engine="ray",
            ray_address=cluster, num_workers=2, progress=False)
    assert_same_files(local_jsonl, tmp_path / "out")


def test_a_memory_url_is_refused_for_ray_workers(cluster, sources):
    with pytest.raises(FatalError, match="memory:// output lives in this process only"):
        convert([sources["jsonl"]], "memory://bucket/out", engine="ray", ray_address=cluster, progress=False)
