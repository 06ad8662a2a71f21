"""Bad input to tokenize and to train's data loading: a bad row costs that row, a bad folder is one sentence.

Every input is real: normalised datasets made by `convert`, token shards made by `tokenize`, then damaged the
way disks, killed runs and hand-made datasets damage them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from tests.tokenize_fixtures import normalised, tiny_model
from vlmdata.schema import NORMALISED_FEATURES as FEATURES
from vlmdata.errors import FatalError
from vlmdata.tokenize import tokenize
from vlmdata.train.data import open_shards

VLMDATA = str(Path(sys.executable).parent / "vlmdata")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return normalised(tmp_path_factory.mktemp("hardening-data"))


@pytest.fixture(scope="module")
def shards(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hardening-shards") / "shards"
    tokenize(data_dir, out, model=str(tiny_model("gemma3")), progress=False)
    return out


def _tokenize(data: Path, out: Path, **options):
    return tokenize(data, out, model=str(tiny_model("gemma3")), progress=False, **options)


def _rejects(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "rejects.jsonl").read_text().splitlines()]


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _only_arrow_file(folder: Path) -> Path:
    (arrow,) = folder.glob("*.arrow")
    return arrow


# Train's data loading: each way a shard folder is found damaged, and the words its sentence must hold.

def _corrupt_metadata(folder: Path) -> None:
    text = (folder / "vlmdata.json").read_text()
    (folder / "vlmdata.json").write_text(text[: len(text) // 2])  # cut mid-write


def _metadata_without(key: str):
    def damage(folder: Path) -> None:
        metadata = json.loads((folder / "vlmdata.json").read_text())
        del metadata[key]
        (folder / "vlmdata.json").write_text(json.dumps(metadata))
    return damage


def _truncated_shard(folder: Path) -> None:
    arrow = _only_arrow_file(folder)
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])


def _garbage_shard(folder: Path) -> None:
    _only_arrow_file(folder).write_bytes(b"not an arrow stream\n" * 50)


def _no_state(folder: Path) -> None:
    (folder / "state.json").unlink()  # what a run killed before its last file leaves


def _no_processor(folder: Path) -> None:
    shutil.rmtree(folder / "processor")


DAMAGED_SHARDS = {
    "corrupt-metadata": (_corrupt_metadata, "vlmdata.json of .* cannot be read \\(JSONDecodeError\\)"),
    "metadata-without-layout": (_metadata_without("layout"), "lacks its 'layout' entry"),
    "metadata-without-model": (_metadata_without("model"), "lacks its 'model' entry"),
    "truncated-shard": (_truncated_shard, "cannot be read .*truncated or corrupt"),
    "garbage-shard": (_garbage_shard, "cannot be read .*truncated or corrupt"),
    "no-state-json": (_no_state, "half-written output"),
    "no-processor": (_no_processor, "has no processor/ folder"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_SHARDS))
def test_damaged_shards_are_refused_with_one_sentence_naming_the_folder(case, shards, tmp_path):
    damage, expected = DAMAGED_SHARDS[case]
    folder = tmp_path / "shards"
    shutil.copytree(shards, folder)
    damage(folder)

    with pytest.raises(FatalError, match=expected) as raised:
        open_shards(str(folder))
    message = str(raised.value)
    assert str(folder) in message and "\n" not in message
    assert "tokenize" in message  # says what to do


def test_a_partial_folder_left_by_a_killed_run_is_refused(shards, tmp_path):
    # Complete in every file but its name: the rename that marks an output finished never happened.
    partial = tmp_path / "shards.partial"
    shutil.copytree(shards, partial)
    with pytest.raises(FatalError, match="half-written output .*run the same `vlmdata tokenize` command again"):
        open_shards(str(partial))


def test_shards_with_zero_rows_are_refused_before_training(data_dir, tmp_path):
    summary = _tokenize(data_dir, tmp_path / "empty", max_length=1)  # every row too long: all rejected
    assert summary.rows_written == 0 and summary.rows_rejected == summary.rows_read == 3
    with pytest.raises(FatalError, match="holds no rows to train on \\(its rejects.jsonl says why"):
        open_shards(str(tmp_path / "empty"))


def test_intact_shards_still_open(shards):
    opened = open_shards(str(shards))
    assert len(opened.dataset) == 3 and opened.checkpoint and opened.processor_dir.is_dir()


def test_cli_train_on_a_damaged_folder_is_one_line_without_traceback(shards, tmp_path):
    folder = tmp_path / "shards"
    shutil.copytree(shards, folder)
    _truncated_shard(folder)
    result = subprocess.run(
        [VLMDATA, "train", str(folder), "--model", str(tiny_model("gemma3")), "-o", str(tmp_path / "out"), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    line = _one_error_line(result)
    assert str(folder) in line and "truncated or corrupt" in line


# Tokenize: --strict, an unreadable DATA folder, and rows that are malformed in ways convert never writes.

def _rows_of(data_dir: Path) -> list[dict]:
    """The normalised rows as plain values, images as their encoded bytes (kept in memory: casting on disk
    would leave a cache file in the fixture's folder)."""
    dataset = datasets.load_from_disk(str(data_dir), keep_in_memory=True)
    return dataset.cast_column("images", datasets.List(datasets.Image(decode=False))).to_list()


def _with_corrupt_image(data_dir: Path, out: Path, row_id: str) -> Path:
    """A copy of the normalised dataset whose row `row_id` holds bytes that are not an image."""
    rows = _rows_of(data_dir)
    for row in rows:
        if row["id"] == row_id:
            row["images"][0] = {"bytes": b"\x89PNG but then nothing", "path": None}
    datasets.Dataset.from_list(rows, features=FEATURES).save_to_disk(str(out))
    return out


def test_tokenize_strict_stops_at_the_first_bad_row_with_the_message_of_its_reject(data_dir, tmp_path):
    data = _with_corrupt_image(data_dir, tmp_path / "data", "two-images")
    summary = _tokenize(data, tmp_path / "lenient")
    assert (summary.rows_written, summary.rows_rejected) == (2, 1)
    (reject,) = _rejects(tmp_path / "lenient")
    assert reject["id"] == "two-images" and "cannot decode" in reject["reason"]

    out = tmp_path / "strict"
    result = subprocess.run(
        [VLMDATA, "tokenize", str(data), "-o", str(out), "--model", str(tiny_model("gemma3")), "--strict", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    line = _one_error_line(result)
    assert line == f"error: row two-images of {reject['source']} was rejected ({reject['stage']}): {reject['reason']}"
    # The same reason on every run: no address of an in-memory file object in it.
    assert reject["reason"] == "image 0: cannot decode: not a recognised image format"
    assert not out.exists() and not out.with_name("strict.partial").exists()


@pytest.mark.parametrize("damage", ["truncated-shard", "no-state-json"])
def test_tokenize_on_an_unreadable_data_folder_is_one_sentence(damage, data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    {"truncated-shard": _truncated_shard, "no-state-json": _no_state}[damage](data)
    out = tmp_path / "shards"
    result = subprocess.run(
        [VLMDATA, "tokenize", str(data), "-o", str(out), "--model", str(tiny_model("gemma3")), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    line = _one_error_line(result)
    assert str(data) in line
    assert not out.exists() and not out.with_name("shards.partial").exists()


def test_a_malformed_row_costs_that_row_only(data_dir, tmp_path):
    # Rows `convert` never writes, but a dataset made by hand can hold: null messages, a message with null content.
    rows = _rows_of(data_dir)
    text_only = next(row for row in rows if row["id"] == "text-only")
    rows.insert(1, {**text_only, "id": "null-messages", "messages": None})
    rows.append({**text_only, "id": "null-content", "messages": [{"role": "user", "content": None}]})
    data = tmp_path / "data"
    datasets.Dataset.from_list(rows, features=FEATURES).save_to_disk(str(data))

    summary = _tokenize(data, tmp_path / "shards")

    assert summary.rows_read == 5 == summary.rows_written + summary.rows_rejected
    assert sorted(datasets.load_from_disk(str(tmp_path / "shards"))["id"]) == ["text-only", "two-images", "two-turns"]
    reasons = {reject["id"]: reject["reason"] for reject in _rejects(tmp_path / "shards")}
    assert set(reasons) == {"null-messages", "null-content"}
    assert all(reason.startswith("unexpected TypeError: ") for reason in reasons.values()), reasons


SCHEMAS_CONVERT_NEVER_WRITES = {
    # content as a plain string: iterating it gives characters, and a character has no "type" key
    "content-a-string": (
        datasets.Features({"messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
                           "id": datasets.Value("string")}),
        [{"role": "user", "content": "Hello?"}, {"role": "assistant", "content": "Hi."}],
        "unexpected TypeError: ",
    ),
    # parts without "type"
    "part-without-type": (
        datasets.Features({"messages": datasets.List({"role": datasets.Value("string"),
                                                      "content": datasets.List({"text": datasets.Value("string")})}),
                           "id": datasets.Value("string")}),
        [{"role": "user", "content": [{"text": "Hello?"}]}, {"role": "assistant", "content": [{"text": "Hi."}]}],
        "unexpected KeyError: 'type'",
    ),
}


@pytest.mark.parametrize("case", sorted(SCHEMAS_CONVERT_NEVER_WRITES))
def test_rows_of_a_shape_convert_never_writes_are_rejects_not_a_crash(case, tmp_path):
    features, messages, reason = SCHEMAS_CONVERT_NEVER_WRITES[case]
    data = tmp_path / "data"
    datasets.Dataset.from_list([{"messages": messages, "id": "odd"}], features=features).save_to_disk(str(data))

    summary = _tokenize(data, tmp_path / "shards")

    assert (summary.rows_read, summary.rows_written, summary.rows_rejected) == (1, 0, 1)
    (reject,) = _rejects(tmp_path / "shards")
    assert reject["id"] == "odd" and reject["stage"] == "media" and reject["reason"].startswith(reason), reject


def test_a_dataset_row_whose_replies_are_all_empty_is_rejected_and_one_empty_reply_among_others_is_kept(tmp_path):
    features = datasets.Features({"messages": datasets.List({"role": datasets.Value("string"), "content": datasets.List(
        {"type": datasets.Value("string"), "text": datasets.Value("string")})}), "id": datasets.Value("string")})

    def turns(*replies):
        messages = []
        for number, reply in enumerate(replies):
            messages += [{"role": "user", "content": [{"type": "text", "text": f"Question {number}?"}]},
                         {"role": "assistant", "content": [{"type": "text", "text": reply}]}]
        return messages

    rows = [{"messages": turns("", " "), "id": "all-empty"}, {"messages": turns("", "Yes."), "id": "one-empty"}]
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp_path / "data"))

    summary = _tokenize(tmp_path / "data", tmp_path / "shards")

    assert (summary.rows_read, summary.rows_written) == (2, 1)
    (reject,) = _rejects(tmp_path / "shards")
    assert (reject["id"], reject["stage"], reject["reason"]) == ("all-empty", "tokenize", "every assistant turn is empty (2 of them)")


def test_damaged_arrow_data_in_the_normalised_dataset_costs_only_the_rows_it_holds(tmp_path):
    # Text bytes that are not UTF-8 in the middle of an Arrow file: what a disk error or a bad copy leaves.
    rows = [{"id": f"row-{n}", "messages": [{"role": "user", "content": [{"type": "text", "text": f"Question number {n}?"}]},
                                            {"role": "assistant", "content": [{"type": "text", "text": "Yes."}]}]}
            for n in range(20)]
    features = datasets.Features({"messages": FEATURES["messages"], "id": datasets.Value("string")})
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp_path / "data"))
    (arrow,) = (tmp_path / "data").glob("*.arrow")
    data = arrow.read_bytes()
    assert data.count(b"Question number 17?") == 1
    arrow.write_bytes(data.replace(b"Question number 17?", b"Question number \xff\xfe?"))

    summary = _tokenize(tmp_path / "data", tmp_path / "shards")

    assert (summary.rows_read, summary.rows_written, summary.rows_rejected) == (20, 19, 1)
    (reject,) = _rejects(tmp_path / "shards")
    assert reject["id"].endswith(":17") and reject["stage"] == "read"
    assert reject["reason"].startswith("cannot read row 17 of the dataset: UnicodeDecodeError")
    assert datasets.load_from_disk(str(tmp_path / "shards"))["id"] == [f"row-{n}" for n in range(20) if n != 17]
