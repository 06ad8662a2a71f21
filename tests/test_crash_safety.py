"""A killed run never leaves output that looks complete, never loses the output it was replacing, and running
the same command again finishes the job with the same bytes as a run never interrupted.

Runs are real `vlmdata` processes killed with SIGKILL, either when the output shows progress (a slow HTTP
server keeps the run busy long enough), or at an exact file system step: an audit hook (`sys.addaudithook`)
in the child kills it just before it opens, renames or deletes a given path.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
from click.testing import CliRunner
from PIL import Image

from httpserver import Reply, serve
from vlmdata.cli import cli

KILLED = -signal.SIGKILL
VLMDATA = str(Path(sys.executable).parent / "vlmdata")
# Runs `vlmdata ARGS...` and kills itself just before the NTH file system EVENT on a path ending in NEEDLE.
KILL_AT = r"""
import os, signal, sys
event, needle, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = 0
def kill_at(name, args):
    global seen
    if name == event and any(str(arg).endswith(needle) for arg in args):
        seen += 1
        if seen == nth:
            os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(kill_at)
from vlmdata.cli import cli
cli(sys.argv[4:], prog_name="vlmdata")
"""


def run_killed_at(event: str, needle: str, *args, nth: int = 1, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", KILL_AT, event, needle, str(nth), *map(str, args)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def invoke(*args):
    """The same command, run in this process (quicker than a new one, and the same code)."""
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result


def content(folder: Path) -> dict[str, bytes]:
    """What must be identical between two runs: the shards, the rejects and the files `load_from_disk` reads."""
    names = [path.name for path in folder.iterdir() if path.suffix == ".arrow"]
    names += [name for name in ("rejects.jsonl", "state.json", "dataset_info.json") if (folder / name).exists()]
    return {name: (folder / name).read_bytes() for name in sorted(names)}


def png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (shade, 255 - shade, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def chat(row_id: str, image_part: dict | None = None) -> dict:
    question = [image_part, "What colour?"] if image_part else "Hello?"
    return {"id": row_id, "messages": [{"role": "user", "content": question},
                                       {"role": "assistant", "content": "Green."}]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- killed at an exact step, while replacing an existing output ------------------------------------------------


@pytest.fixture(scope="module")
def overwrite_case(tmp_path_factory):
    """A source, the output of an older run to be replaced, and the output the new run must produce."""
    folder = tmp_path_factory.mktemp("overwrite")
    (folder / "media").mkdir()
    for shade in range(0, 250, 10):
        (folder / "media" / f"{shade}.png").write_bytes(png(shade))
    rows = [chat(f"r{shade}", {"type": "image", "path": f"media/{shade}.png"}) for shade in range(0, 250, 10)]
    rows += [chat("bad", {"type": "image", "path": "media/absent.png"}), chat("text-only")]
    source = write_jsonl(folder / "rows.jsonl", rows)
    old_source = write_jsonl(folder / "old.jsonl", [chat("old")])
    invoke("convert", old_source, "-o", folder / "old", "--quiet")
    invoke("convert", source, "-o", folder / "expected", "--quiet", "--image-size", "16")
    return source, folder / "old", folder / "expected"


KILL_POINTS = {
    "opening the first shard": ("open", "shard-00000-000.arrow"),
    "naming the shards": ("os.rename", "shard-00000-000.arrow"),
    "writing state.json": ("open", "state.json"),
    "moving the old output aside": ("os.rename", "out.previous"),
    "moving the new output in": ("os.rename", "out.partial"),
    "deleting the old output": ("shutil.rmtree", "out.previous"),
    "half-way through deleting the old output": ("os.remove", "data-00000-of-00001.arrow"),
}


@pytest.mark.parametrize("moment", list(KILL_POINTS))
def test_a_kill_at_any_step_loses_nothing_and_a_rerun_finishes_the_job(overwrite_case, tmp_path, moment):
    source, old, expected = overwrite_case
    out, partial, previous = tmp_path / "out", tmp_path / "out.partial", tmp_path / "out.previous"
    shutil.copytree(old, out)
    command = ["convert", source, "-o", out, "--quiet", "--image-size", "16", "--overwrite"]

    killed = run_killed_at(*KILL_POINTS[moment], *command, cwd=tmp_path)

    assert killed.returncode == KILLED, killed.stderr
    # A folder named out is whole, old or new; only between two renames is the old one whole as out.previous.
    whole = out if out.exists() else previous
    assert content(whole) in (content(old), content(expected))
    assert len(datasets.load_from_disk(str(whole))) in (1, 26)
    if partial.exists() and not (partial / "state.json").exists():
        with pytest.raises(FileNotFoundError):
            datasets.load_from_disk(str(partial))

    invoke(*command)

    assert content(out) == content(expected)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_a_run_killed_between_the_renames_gives_the_old_output_back(overwrite_case, tmp_path):
    source, old, _ = overwrite_case
    shutil.copytree(old, tmp_path / "out")
    command = ["convert", source, "-o", tmp_path / "out", "--quiet", "--overwrite"]
    assert run_killed_at("os.rename", "out.partial", *command, cwd=tmp_path).returncode == KILLED
    assert not (tmp_path / "out").exists()

    # Without --overwrite, the next run puts the old output back, then refuses to replace it.
    result = CliRunner().invoke(cli, [str(arg) for arg in command[:-1]])

    assert result.exit_code == 1 and "already exists" in result.stderr
    assert content(tmp_path / "out") == content(old)
    assert not (tmp_path / "out.previous").exists()


# --- killed while busy ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_source(tmp_path_factory):
    """Rows whose images come from a server that takes 40 ms per image, and the output they must give."""
    folder = tmp_path_factory.mktemp("slow")
    routes = {f"/{shade}.png": Reply(body=png(shade), delay=0.04) for shade in range(64)}
    with serve(routes) as server:
        rows = [chat(f"r{shade}", {"type": "image", "url": server.url(f"/{shade}.png")}) for shade in range(64)]
        rows.insert(5, chat("broken", {"type": "image", "url": server.url("/missing.png")}))
        source = write_jsonl(folder / "rows.jsonl", rows)
        invoke("convert", source, "-o", folder / "expected", "--quiet")
        yield server, source, folder / "expected"


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def children_of(pid: int) -> list[str]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [child for child in found if Path(f"/proc/{child}").exists()]


def test_a_run_killed_while_writing_shards_leaves_a_partial_folder_that_a_rerun_replaces(slow_source, tmp_path):
    _, source, expected = slow_source
    out, partial = tmp_path / "out", tmp_path / "out.partial"
    command = ["convert", source, "-o", out, "--quiet", "--num-proc", "2"]
    run = subprocess.Popen([VLMDATA, *map(str, command)], cwd=tmp_path, stderr=subprocess.DEVNULL)
    shard = partial / "shard-00000-000.arrow"
    wait_for(lambda: shard.exists() and shard.stat().st_size > 0)
    workers = children_of(run.pid)

    run.kill()

    assert run.wait() == KILLED
    assert not out.exists()
    with pytest.raises(FileNotFoundError):
        datasets.load_from_disk(str(partial))
    wait_for(lambda: not any(Path(f"/proc/{worker}").exists() for worker in workers), timeout=30)

    invoke(*command)

    assert content(out) == content(expected)  # with two processes, as the reference run with one
    assert not partial.exists()


def test_a_second_run_on_the_same_output_is_refused_while_the_first_is_alive(slow_source, tmp_path):
    server, source, expected = slow_source
    out, partial = tmp_path / "out", tmp_path / "out.partial"
    first = subprocess.Popen([VLMDATA, "convert", str(source), "-o", str(out), "--quiet"], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (partial / "rejects.jsonl").exists())

    second = CliRunner().invoke(cli, ["convert", str(source), "-o", str(out), "--quiet"])

    assert second.exit_code == 1
    assert "is being written by another run" in second.stderr
    assert first.wait(timeout=120) == 0, first.stderr.read()
    assert content(out) == content(expected)


# --- tokenize ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tokenize_killed_mid_run_and_mid_replace_loses_nothing(tmp_path):
    from tokenize_fixtures import normalised, tiny_model

    data, model = normalised(tmp_path / "data"), tiny_model("gemma3")
    invoke("tokenize", data, "-o", tmp_path / "expected", "--model", model, "--quiet")
    out = tmp_path / "work" / "out"
    shutil.copytree(data, out)  # a complete older output, to be replaced
    command = ["tokenize", data, "-o", out, "--model", model, "--quiet", "--overwrite"]

    killed = run_killed_at("open", "shard-00000-000.arrow", *command, cwd=tmp_path / "work")
    assert killed.returncode == KILLED, killed.stderr
    assert content(out) == content(data)
    with pytest.raises(FileNotFoundError):
        datasets.load_from_disk(str(out.with_name("out.partial")))

    killed = run_killed_at("os.rename", "out.partial", *command, cwd=tmp_path / "work")
    assert killed.returncode == KILLED, killed.stderr
    assert not out.exists() and content(out.with_name("out.previous")) == content(data)

    invoke(*command)

    assert content(out) == content(tmp_path / "expected")
    assert sorted(path.name for path in (tmp_path / "work").iterdir()) == ["out"]


def test_sigterm_with_two_workers_cleans_up_and_leaks_nothing(slow_source, tmp_path):
    _, source, expected = slow_source
    out, partial = tmp_path / "out", tmp_path / "out.partial"
    command = ["convert", source, "-o", out, "--quiet", "--num-proc", "2"]
    run = subprocess.Popen([VLMDATA, *map(str, command)], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    shard = partial / "shard-00000-000.arrow"
    wait_for(lambda: shard.exists() and shard.stat().st_size > 0)
    workers = children_of(run.pid)

    run.terminate()
    _, stderr = run.communicate(timeout=120)

    assert run.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in stderr
    assert "leaked" not in stderr and "resource_tracker" not in stderr and "Traceback" not in stderr, stderr
    assert not out.exists() and not partial.exists()
    wait_for(lambda: not any(Path(f"/proc/{worker}").exists() for worker in workers), timeout=30)
