"""`vlmdata tokenize` options end to end: rows with nothing to train on, `--num-proc`, `--chat-template FILE`."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoProcessor

from tests.tokenize_fixtures import REPLIES, conversations, normalised, tiny_model
from vlmdata.convert import convert
from vlmdata.models.registry import load_template
from vlmdata.shards import load_shards
from vlmdata.tokenize import ROWS_PER_BATCH, tokenize

NO_TRAINED_TOKEN = "no token to train on"


def _tokenize(data_dir: Path, out: Path, alias: str, **options):
    return tokenize(data_dir, out, model=str(tiny_model(alias)), progress=False, **options)


def _tokenized_rows(data_dir: Path, out: Path, alias: str, **options) -> dict[str, dict]:
    _tokenize(data_dir, out, alias, **options)
    return _shard_rows(out)


def _first_trained(row: dict) -> int:
    return next(position for position, label in enumerate(row["labels"].tolist()) if label != -100)


def _rejects(folder: Path) -> dict[str, str]:
    lines = (folder / "rejects.jsonl").read_text().splitlines()
    return {reject["id"]: reject["reason"] for reject in map(json.loads, lines)}


def _shard_rows(folder: Path) -> dict[str, dict]:
    return {row["id"]: row for row in load_shards(folder)}


def _converted(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "rows.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    convert([str(source)], folder / "normalised", progress=False)
    return folder / "normalised"


def _trained_runs(row: dict, tokenizer) -> list[str]:
    runs, current = [], []
    for token, label in zip(row["input_ids"].tolist(), row["labels"].tolist()):
        if label != -100:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return [tokenizer.decode(run) for run in runs + ([current] if current else [])]


# -- rows with no trainable token -------------------------------------------------------------------------------


def test_an_empty_last_reply_with_no_end_of_turn_token_leaves_last_nothing_to_train(tmp_path):
    # LLaVA writes no end-of-turn token, so with --train-on last an empty final reply leaves nothing to train
    # on; Qwen still trains its <|im_end|>, so the same row is kept there. (A row whose replies are all empty
    # is refused before, by convert.)
    data = _converted(tmp_path, [
        {"id": "empty-last", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                          {"role": "user", "content": "And?"}, {"role": "assistant", "content": []}]},
        {"id": "fine", "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
    ])
    llava = _tokenize(data, tmp_path / "llava", "llava", train_on="last")
    assert (llava.rows_read, llava.rows_written, llava.rows_rejected) == (2, 1, 1)
    assert _rejects(tmp_path / "llava") == {"empty-last": f"{NO_TRAINED_TOKEN} (--train-on last)"}
    assert set(_shard_rows(tmp_path / "llava")) == {"fine"}
    assert _tokenize(data, tmp_path / "llava-all", "llava", train_on="assistant").rows_written == 2
    qwen = _tokenize(data, tmp_path / "qwen", "qwen2_vl", train_on="last")
    assert qwen.rows_written == 2 and qwen.rows_rejected == 0


def test_a_conversation_without_assistant_turn_is_rejected(tmp_path):
    # `convert` refuses such rows, but users may bring their own normalised dataset (docs/architecture.md, "The data path").
    def message(role: str, text: str) -> dict:
        return {"role": role, "content": [{"type": "text", "text": text}]}

    rows = [
        {"id": "user-only", "source": "mine", "messages": [message("user", "Describe nothing.")]},
        {"id": "fine", "source": "mine", "messages": [message("user", "Hi"), message("assistant", "Hello.")]},
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "normalised"))
    summary = _tokenize(tmp_path / "normalised", tmp_path / "shards", "gemma3")
    assert (summary.rows_written, summary.rows_rejected) == (1, 1)
    assert _rejects(tmp_path / "shards") == {"user-only": f"{NO_TRAINED_TOKEN} (--train-on assistant)"}
    reject = json.loads((tmp_path / "shards" / "rejects.jsonl").read_text())
    assert reject["stage"] == "tokenize" and reject["source"] == "mine"


@pytest.mark.parametrize("train_on", ["assistant", "last", "all"])
def test_truncation_that_leaves_no_reply_token_is_rejected(train_on, tmp_path):
    data = normalised(tmp_path / "data")
    first_trained = _first_trained(_tokenized_rows(data, tmp_path / "full", "qwen2_vl")["text-only"])
    summary = _tokenize(data, tmp_path / "cut", "qwen2_vl", max_length=first_trained, truncate="text", train_on=train_on)
    rejects = _rejects(tmp_path / "cut")
    assert summary.rows_read == summary.rows_written + summary.rows_rejected == 3
    if train_on == "all":  # the system and user text remain, and they are trained
        assert "text-only" not in rejects
        assert int(_shard_rows(tmp_path / "cut")["text-only"]["length"]) == first_trained
    else:
        assert rejects["text-only"] == f"{NO_TRAINED_TOKEN} (--train-on {train_on})"


@pytest.mark.parametrize("case", ["empty-final-reply", "final-reply-cut-away"])
def test_train_on_last_never_trains_an_earlier_reply(case, tmp_path):
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."},
             {"role": "user", "content": "More?"}, {"role": "assistant", "content": [] if case.startswith("empty") else "Yes."}]
    data = _converted(tmp_path, [{"id": "row", "messages": turns}])
    alias = "llava" if case.startswith("empty") else "qwen2_vl"
    options = {}
    if case == "final-reply-cut-away":
        full = _tokenized_rows(data, tmp_path / "full", alias, train_on="last")["row"]
        options = {"max_length": _first_trained(full), "truncate": "text"}
    _tokenize(data, tmp_path / "last", alias, train_on="last", **options)
    rows = _shard_rows(tmp_path / "last")
    tokenizer = AutoProcessor.from_pretrained(tiny_model(alias)).tokenizer
    assert "row" not in rows, _trained_runs(rows["row"], tokenizer)
    assert _rejects(tmp_path / "last")["row"] == f"{NO_TRAINED_TOKEN} (--train-on last)"


# -- --num-proc -------------------------------------------------------------------------------------------------


def test_num_proc_two_gives_the_same_shards_and_rejects_over_several_batches(tmp_path):
    # Ten copies of the fixture rows, an audio row in each copy (rejected by Qwen-VL), so that batches hold
    # different numbers of written rows and rejects sit in every batch.
    rows = [{**row, "id": f"{row['id']}-{copy}"} for copy in range(10) for row in conversations(tmp_path, with_audio=True)]
    assert len(rows) > 2 * ROWS_PER_BATCH
    data = _converted(tmp_path, rows)
    one = _tokenize(data, tmp_path / "one", "qwen2_vl", num_proc=1)
    two = _tokenize(data, tmp_path / "two", "qwen2_vl", num_proc=2)
    assert (one.rows_read, one.rows_written, one.rows_rejected) == (40, 30, 10)
    first, second = sorted((tmp_path / "one").glob("*.arrow")), sorted((tmp_path / "two").glob("*.arrow"))
    assert first and [path.name for path in first] == [path.name for path in second]
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert (tmp_path / "one" / "rejects.jsonl").read_bytes() == (tmp_path / "two" / "rejects.jsonl").read_bytes()
    assert [row["id"] for row in load_shards(tmp_path / "two")] == [row["id"] for row in rows if "audio" not in row["id"]]
    ignored = {"elapsed_s", "out_dir", "engine"}  # how it ran, not what it wrote
    assert {k: v for k, v in one.to_dict().items() if k not in ignored} == {
        k: v for k, v in two.to_dict().items() if k not in ignored
    }


# -- --chat-template FILE ---------------------------------------------------------------------------------------


def test_a_chat_template_file_is_used_and_recorded(tmp_path):
    official = load_template("qwen2_vl")
    assert official.count("You are a helpful assistant.") == 2  # once in the comment, once in the output
    custom = tmp_path / "meticulous.jinja"
    custom.write_text(official.replace("You are a helpful assistant.", "You are a meticulous assistant."))
    data = normalised(tmp_path / "data")
    summary = _tokenize(data, tmp_path / "shards", "qwen2_vl", chat_template=str(custom))
    assert summary.rows_written == 3 and summary.template == str(custom)

    processor = AutoProcessor.from_pretrained(tiny_model("qwen2_vl"))
    shards = _shard_rows(tmp_path / "shards")
    for row_id, row in shards.items():
        text = processor.tokenizer.decode(row["input_ids"].tolist())
        assert "You are a meticulous assistant." in text and "helpful" not in text, row_id
    # The trained tokens are still exactly the replies: the markers of the file were honoured.
    assert [run.strip() for run in _trained_runs(shards["two-turns"], processor.tokenizer)] == [
        reply + "<|im_end|>" for reply in REPLIES
    ]
    # And the rows are what the processor itself makes with that template.
    source = next(row for row in datasets.load_from_disk(str(data)) if row["id"] == "text-only")
    messages = [{"role": m["role"], "content": [{"type": "text", "text": p["text"]} for p in m["content"]]}
                for m in source["messages"]]
    expected = processor.apply_chat_template(messages, chat_template=custom.read_text(), tokenize=True,
                                             return_dict=True, return_tensors="pt")
    assert torch.equal(torch.as_tensor(shards["text-only"]["input_ids"]).long(), expected["input_ids"][0])

    metadata = json.loads((tmp_path / "shards" / "vlmdata.json").read_text())
    assert metadata["chat_template"] == metadata["arguments"]["chat_template"] == str(custom)
    saved = AutoProcessor.from_pretrained(tmp_path / "shards" / "processor")
    assert saved.chat_template == custom.read_text()


def test_truncation_cuts_only_the_tensors_the_layout_says_run_along_the_tokens():
    from vlmdata.batching import Batching
    from vlmdata.tensor_spec import Storage, TensorLayout, TensorSpec
    from vlmdata.tokenize import _cut_per_token

    def spec(name, batching, tail):
        return TensorSpec(name=name, batching=batching, storage=Storage.ARRAY, dtype="torch.float32",
                          stored_dtype="float32", tail=tail)

    # Audio features of as many frames as the row has tokens look per-token by their shape alone.
    layout = TensorLayout((spec("input_features", Batching.PER_ITEM, (12, 8)), spec("token_type_ids", Batching.PER_TOKEN, ())))
    outputs = {name: torch.zeros(1, 12, *rest) for name, rest in
               (("input_ids", ()), ("attention_mask", ()), ("assistant_masks", ()), ("token_type_ids", ()), ("input_features", (8,)))}
    _cut_per_token(outputs, layout, 5)
    assert {name: tuple(tensor.shape) for name, tensor in outputs.items()} == {
        "input_ids": (1, 5), "attention_mask": (1, 5), "assistant_masks": (1, 5), "token_type_ids": (1, 5),
        "input_features": (1, 12, 8)}


def test_the_date_a_template_writes_is_fixed_recorded_and_can_be_given(tmp_path):
    # Llama 3.2 Vision's template writes "Today Date" into rows without images: today's date would make the
    # same data give other shards tomorrow.
    data = _converted(tmp_path, [{"id": "text", "messages": [{"role": "user", "content": "Hi"},
                                                              {"role": "assistant", "content": "Hello."}]}])
    processor = AutoProcessor.from_pretrained(tiny_model("mllama"))
    texts = {}
    for date in (None, "01 Dec 2026"):
        out = tmp_path / f"shards-{date}"
        _tokenize(data, out, "mllama", **({"template_date": date} if date else {}))
        texts[date] = processor.tokenizer.decode(load_shards(out)[0]["input_ids"])
        metadata = json.loads((out / "vlmdata.json").read_text())
        assert metadata["arguments"]["template_date"] == (date or "26 Jul 2024")
    assert "Today Date: 26 Jul 2024" in texts[None]
    assert "Today Date: 01 Dec 2026" in texts["01 Dec 2026"]


def test_the_chat_template_is_recorded_by_its_content(tmp_path):
    from vlmdata.recipe import stage_settings

    template = tmp_path / "mine.jinja"
    template.write_text(load_template("gemma3"))
    before = stage_settings({"chat_template": str(template), "model": "gemma3"})
    template.write_text(load_template("gemma3") + "\n")
    after = stage_settings({"chat_template": str(template), "model": "gemma3"})
    assert before["chat_template"] == after["chat_template"] and before != after
    assert stage_settings({"chat_template": None}) == {"chat_template": None}  # packaged templates: as before

    data = _converted(tmp_path, [{"id": "row", "messages": [{"role": "user", "content": "Hi"},
                                                             {"role": "assistant", "content": "Hello."}]}])
    _tokenize(data, tmp_path / "shards", "gemma3", chat_template=str(template))
    metadata = json.loads((tmp_path / "shards" / "vlmdata.json").read_text())
    assert metadata["chat_template_sha256"] == after["chat_template_sha256"]
