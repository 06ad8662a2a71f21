"""The `vlmdata` command as a user runs it: a real process, its output and its exit code."""

import json
import subprocess
import sys
from pathlib import Path

import datasets

VLMDATA = str(Path(sys.executable).parent / "vlmdata")


def run(*args, cwd=None):
    return subprocess.run([VLMDATA, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


GOOD = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
BAD = {"id": "lonely", "messages": [{"role": "user", "content": "nobody answers"}]}


def test_convert_prints_a_summary_with_rejects_by_reason(tmp_path):
    source = write_rows(tmp_path / "rows.jsonl", [GOOD, BAD, GOOD])
    result = run("convert", source, "-o", tmp_path / "out", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "Converted 2 of 3 rows" in result.stdout
    assert "rows rejected  1" in result.stdout
    assert "normalise: the conversation has no assistant message" in result.stdout
    assert len(datasets.load_from_disk(str(tmp_path / "out"))) == 2


def test_strict_exits_non_zero_with_the_row_and_the_reason(tmp_path):
    source = write_rows(tmp_path / "rows.jsonl", [GOOD, BAD])
    result = run("convert", source, "-o", tmp_path / "out", "--strict", "--quiet")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: row lonely of {source} was rejected (normalise): the conversation has no assistant message"
    ]
    assert not (tmp_path / "out").exists()


def test_a_fatal_problem_is_one_sentence_without_a_traceback(tmp_path):
    result = run("convert", tmp_path / "does-not-exist.jsonl", "-o", tmp_path / "out", "--quiet")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "does-not-exist.jsonl" in result.stderr


def test_bad_option_values_are_explained(tmp_path):
    source = write_rows(tmp_path / "rows.jsonl", [GOOD])
    result = run("convert", source, "-o", tmp_path / "out", "--image-size", "big")
    assert result.returncode == 2
    assert "image size must be N or WxH" in result.stderr


def test_help_shows_defaults():
    result = run("convert", "--help")
    assert result.returncode == 0
    assert "--resize-algorithm" in result.stdout and "[default: bilinear]" in result.stdout


def test_the_command_line_and_the_recipe_runner_import_no_torch():
    # OpenMP reads its settings when torch is imported, which tokenize sets first: importing torch earlier,
    # to declare the commands or to read a recipe, would be too late for them.
    code = ("import sys, vlmdata.cli, vlmdata.recipe, vlmdata.recipe.run, vlmdata.recipe.stages; "
            "print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
