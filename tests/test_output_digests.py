"""The content of convert's and tokenize's outputs, held against digests recorded in `tests/golden/`.

Every column of every row (and the rejects file) of each output is reduced to a digest: exact hashes for ids,
strings, token ids and uint8 pixel codes; for floating point values (audio samples, audio features, float32
pixels), their shape and sums, compared with a tolerance, because floating point results differ between CPUs.
Moving code around must leave every digest as it was, for `--num-proc` 1 and 2 alike.

Recording (only when an output is meant to change, and say why in the commit):
    VLMDATA_RECORD_DIGESTS=1 python -m pytest tests/test_output_digests.py
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest

from tests.fixture_data import build_once
from tests.tokenize_fixtures import FAMILIES, tiny_model
from vlmdata.convert import convert
from vlmdata.media import MediaOptions, Resize
from vlmdata.tokenize import tokenize

GOLDEN = Path(__file__).parent / "golden" / "output_digests.json"
RECORD = os.environ.get("VLMDATA_RECORD_DIGESTS") == "1"
FLOAT_TOLERANCE = 1e-4
# Folders that differ between runs (the fixtures' temporary folder), replaced in every string before hashing.
RUN_FOLDERS: list[str] = []

BAD_ROWS = [
    {"id": "corrupt-image", "messages": [{"role": "user", "content": [{"type": "image", "base64": "bm90IGFuIGltYWdl"},
                                                                      {"type": "text", "text": "?"}]},
                                         {"role": "assistant", "content": "No."}]},
    {"id": "missing-file", "messages": [{"role": "user", "content": [{"type": "image", "path": "nowhere.png"}]},
                                        {"role": "assistant", "content": "No."}]},
    {"id": "no-assistant", "messages": [{"role": "user", "content": "Hello?"}]},
]


def leaf_digests(array: pa.Array) -> list:
    """Digests of an Arrow array's content, whatever its chunking: list lengths and nulls at every level,
    exact hashes of integers and strings, shape and sums of floats."""
    if isinstance(array.type, pa.ExtensionType):
        array = array.storage
    nulls = hashlib.sha256(np.asarray(array.is_null()).tobytes()).hexdigest()[:16]
    if pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type):
        lengths = np.asarray(array.value_lengths().fill_null(-1), dtype=np.int64)
        return [["lengths", nulls, hashlib.sha256(lengths.tobytes()).hexdigest()[:16]], *leaf_digests(array.flatten())]
    if pa.types.is_struct(array.type):
        fields = array.flatten()
        return [["struct", nulls], *[[array.type.field(i).name, leaf_digests(child)] for i, child in enumerate(fields)]]
    if pa.types.is_floating(array.type):
        values = np.asarray(array.fill_null(0), dtype=np.float64)
        return ["float", nulls, len(values), float(values.sum()), float(np.abs(values).sum())]
    if pa.types.is_integer(array.type) or pa.types.is_boolean(array.type):
        values = np.asarray(array.fill_null(False if pa.types.is_boolean(array.type) else 0))
        return ["exact", nulls, str(values.dtype), hashlib.sha256(values.tobytes()).hexdigest()[:16]]
    text = json.dumps(array.to_pylist(), default=repr)
    return ["exact", nulls, hashlib.sha256(without_run_folders(text).encode()).hexdigest()[:16]]


def without_run_folders(text: str) -> str:
    for folder in RUN_FOLDERS:
        text = text.replace(folder, "<fixtures>")
    return text


def folder_digest(folder: Path) -> dict:
    table = datasets.load_from_disk(str(folder)).data.table
    columns = {name: leaf_digests(pa.concat_arrays(table.column(name).chunks) if table.column(name).num_chunks
                                  else pa.array([], table.schema.field(name).type)) for name in table.column_names}
    rejects = without_run_folders((folder / "rejects.jsonl").read_text(encoding="utf-8"))
    return {"rows": table.num_rows, "columns": columns, "rejects": rejects.splitlines()}


def same(recorded, digest) -> bool:
    if isinstance(recorded, list) and recorded and recorded[0] == "float":
        return digest[:3] == recorded[:3] and all(
            np.isclose(a, b, rtol=FLOAT_TOLERANCE, atol=FLOAT_TOLERANCE) for a, b in zip(recorded[3:], digest[3:]))
    if isinstance(recorded, list):
        return isinstance(digest, list) and len(recorded) == len(digest) and all(map(same, recorded, digest))
    if isinstance(recorded, dict):
        return isinstance(digest, dict) and recorded.keys() == digest.keys() and all(same(recorded[k], digest[k]) for k in recorded)
    return recorded == digest


@pytest.fixture(scope="module")
def golden():
    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    yield recorded
    if RECORD:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")


def check(golden: dict, key: str, folder: Path) -> None:
    digest = folder_digest(folder)
    if RECORD:
        golden[key] = digest
        return
    assert key in golden, f"no recorded digest for {key}; record with VLMDATA_RECORD_DIGESTS=1"
    for column in sorted(set(golden[key]["columns"]) | set(digest["columns"])):
        assert same(golden[key]["columns"].get(column), digest["columns"].get(column)), f"{key}: column {column} changed"
    assert digest["rows"] == golden[key]["rows"]
    assert digest["rejects"] == golden[key]["rejects"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = build_once(tmp_path_factory)
    RUN_FOLDERS[:] = [str(root)]
    jsonl = root / "jsonl" / "with-bad-rows.jsonl"
    good = (root / "jsonl" / "conversations.jsonl").read_text(encoding="utf-8").splitlines()
    jsonl.write_text("\n".join([*good[:3], *map(json.dumps, BAD_ROWS), *good[3:], "{not json"]) + "\n", encoding="utf-8")
    return {
        "llava": [str(root / "llava_instruct_mix")],
        "mmiu": [str(root / "mmiu")],
        "jsonl": [str(jsonl)],
        "sharegpt": [str(root / "sharegpt" / "sharegpt.json")],
    }


CONVERTS = {  # source, resize
    "llava": None,
    "mmiu": Resize.parse("64", None, "bilinear"),
    "jsonl": Resize.parse("48x32", None, "bicubic"),
    "sharegpt": Resize.parse("64", "fit", "lanczos"),
}


@pytest.mark.slow
@pytest.mark.parametrize("num_proc", [1, 2])
@pytest.mark.parametrize("source", sorted(CONVERTS))
def test_convert_output_is_unchanged(golden, sources, tmp_path, source, num_proc):
    out = tmp_path / "out"
    convert(sources[source], out, media_options=MediaOptions(resize=CONVERTS[source]), num_proc=num_proc,
            progress=False)
    check(golden, f"convert/{source}", out)


@pytest.fixture(scope="module")
def normalised(sources, tmp_path_factory):
    """The JSONL source (images in several modes, audio, bad rows) converted once, for every family."""
    out = tmp_path_factory.mktemp("digests") / "normalised"
    convert(sources["jsonl"], out, media_options=MediaOptions(resize=Resize.parse("48", None, "bilinear")),
            progress=False)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("num_proc", [1, 2])
@pytest.mark.parametrize("family", FAMILIES)
def test_tokenize_output_is_unchanged(golden, normalised, tmp_path, family, num_proc):
    out = tmp_path / "shards"
    tokenize(normalised, out, model=str(tiny_model(family)), max_length=120, truncate="text", num_proc=num_proc,
             progress=False)
    check(golden, f"tokenize/{family}", out)
    shutil.rmtree(out)
