"""The command line under bad input: `--strict` stops with the reject's own message, a fatal problem is one
sentence and a non-zero exit, and neither leaves output behind."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from vlmdata.cli import cli
from vlmdata.convert import convert

VLMDATA = str(Path(sys.executable).parent / "vlmdata")
GOOD = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def assert_one_sentence_and_no_output(result, out: Path) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # not an exception that escaped the command
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert not out.with_name(out.name + ".partial").exists()
    return lines[0]


def test_strict_stops_at_the_first_bad_row_with_the_message_of_its_reject(tmp_path):
    rows = [GOOD, {"id": "bad", "messages": [{"role": "user", "content": [{"type": "image", "path": "no.png"}]},
                                             {"role": "assistant", "content": "a"}]}, GOOD]
    source = write_rows(tmp_path / "rows.jsonl", rows)
    convert([str(source)], tmp_path / "lenient", progress=False)
    (reject,) = map(json.loads, (tmp_path / "lenient" / "rejects.jsonl").read_text().splitlines())

    result = subprocess.run([VLMDATA, "convert", str(source), "-o", str(tmp_path / "out"), "--strict", "--quiet"],
                            capture_output=True, text=True, timeout=300)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: row bad of {source} was rejected ({reject['stage']}): {reject['reason']}"
    )
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def not_parquet(tmp_path):
    (tmp_path / "data.parquet").write_bytes(b"PAR1 but nothing else")
    return [str(tmp_path / "data.parquet")]


def broken_json_array(tmp_path):
    # The first items convert before the break is found: the run stops then, and its partial output goes.
    (tmp_path / "rows.json").write_text("[" + ", ".join([json.dumps(GOOD)] * 40) + ", {broken")
    return [str(tmp_path / "rows.json")]


def corrupt_mmiu_archive(tmp_path):
    rows = [{"question": "q", "output": "a", "input_image_path": ["./Cat/t/a.jpg"]}]
    write_rows(tmp_path / "meta.jsonl", rows)
    (tmp_path / "Cat.zip").write_bytes(b"PK\x03\x04 not really a zip")
    return [str(tmp_path), "--format", "mmiu"]


def unknown_format(tmp_path):
    (tmp_path / "notes.txt").write_text("just some notes")
    return [str(tmp_path / "notes.txt")]


FATAL = {
    "missing source": (lambda tmp_path: [str(tmp_path / "absent.jsonl")], "absent.jsonl: no such file or folder"),
    "missing source, format given": (
        lambda tmp_path: [str(tmp_path / "absent.jsonl"), "--format", "jsonl"], "absent.jsonl: no such file"),
    "unknown format": (unknown_format, "Cannot tell the format of"),
    "not parquet": (not_parquet, "as parquet"),
    "broken JSON array": (broken_json_array, "is not valid JSON: item 40"),
    "corrupt archive": (corrupt_mmiu_archive, "Cannot open the image archive"),
}


@pytest.mark.parametrize("case", sorted(FATAL))
def test_a_fatal_problem_is_one_sentence_without_a_traceback(tmp_path, case):
    make_arguments, message = FATAL[case]
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["convert", *make_arguments(tmp_path), "-o", str(out), "--quiet"])

    line = assert_one_sentence_and_no_output(result, out)
    assert message in line
    assert not out.exists()


def test_an_output_folder_that_cannot_be_made_is_fatal(tmp_path):
    source = write_rows(tmp_path / "rows.jsonl", [GOOD])
    (tmp_path / "taken").write_text("a file, not a folder")

    result = CliRunner().invoke(cli, ["convert", str(source), "-o", str(tmp_path / "taken" / "out"), "--quiet"])

    line = assert_one_sentence_and_no_output(result, tmp_path / "taken" / "out")
    assert "Cannot create the output folder" in line and "taken" in line
    assert (tmp_path / "taken").read_text() == "a file, not a folder"
    usage = CliRunner().invoke(cli, ["convert", str(source), "-o", str(tmp_path / "taken"), "--quiet"])
    assert usage.exit_code == 2 and "is a file" in usage.stderr


def test_a_bad_source_fails_before_the_output_folder_is_touched(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")

    result = CliRunner().invoke(cli, ["convert", str(tmp_path / "absent.jsonl"), "-o", str(tmp_path / "out"),
                                      "--overwrite", "--quiet"])

    assert_one_sentence_and_no_output(result, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_an_unexpected_error_in_one_row_costs_that_row_only(tmp_path, monkeypatch):
    # Stands for a decoder failing in a way nobody foresaw: the guard of last resort must hold.
    from vlmdata.media import loader

    def broken_decoder(data, label, resize, max_pixels):
        raise KeyError("a decoder bug")

    monkeypatch.setattr(loader, "prepare_image", broken_decoder)
    image = {"type": "image", "base64": "iVBORw0KGgo="}
    rows = [GOOD, {"id": "odd", "messages": [{"role": "user", "content": [image]}, GOOD["messages"][1]]}, GOOD]
    source = write_rows(tmp_path / "rows.jsonl", rows)

    summary = convert([str(source)], tmp_path / "out", progress=False)

    assert (summary.rows_written, summary.rows_rejected) == (2, 1)
    reject = json.loads((tmp_path / "out" / "rejects.jsonl").read_text())
    assert (reject["id"], reject["stage"]) == ("odd", "image")
    assert reject["reason"] == "unexpected KeyError: 'a decoder bug'"


def test_zip_member_paths_cannot_reach_outside_through_the_command(tmp_path):
    rows = [{"question": "q", "output": "a", "input_image_path": [path]}
            for path in ["./Cat/../../etc/passwd", "/etc/passwd", "./Cat/t/ok.jpg"]]
    write_rows(tmp_path / "meta.jsonl", rows)
    with zipfile.ZipFile(tmp_path / "Cat.zip", "w") as archive:
        archive.writestr("t/ok.jpg", b"not an image, but a member")
        archive.writestr("../../etc/passwd", b"root:x:0:0")

    result = CliRunner().invoke(cli, ["convert", str(tmp_path), "--format", "mmiu", "-o", str(tmp_path / "out"),
                                      "--quiet"])

    assert result.exit_code == 0, result.output
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert len(reasons) == 3
    assert all("points outside the dataset folder" in reason for reason in reasons[:2])
    assert "cannot decode image 't/ok.jpg'" in reasons[2]
