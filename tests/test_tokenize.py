"""`vlmdata tokenize`: shards equal the processor's own output, labels mark the right tokens, nothing is lost."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForImageTextToText, AutoProcessor

from tests.tokenize_fixtures import END_OF_TURN, FAMILIES, LAST_REPLY_OPENING, REPLIES, normalised, tiny_model
from vlmdata.cli import cli
from vlmdata.errors import FatalError
from vlmdata.models.registry import DEFAULT_TEMPLATE_DATE, get_family
from vlmdata.shards import load_shards, model_inputs, read_layout
from vlmdata.tokenize import tokenize


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return normalised(tmp_path_factory.mktemp("tokenize"))


def _tokenize(data_dir: Path, out: Path, alias: str, **options):
    return tokenize(data_dir, out, model=str(tiny_model(alias)), progress=False, **options)


def _shard_rows(folder: Path) -> dict[str, dict]:
    return {row["id"]: row for row in load_shards(folder)}


# Official templates that print anything but a string as Python text outside user turns.
TEXT_ONLY_OUTSIDE_USER_TURNS = {"glm4v"}


def processor_messages(row: dict, alias: str = "") -> list[dict]:
    """A normalised row in the processor's chat format, its images decoded by `datasets`."""
    images = iter(row["images"])
    messages = []
    for message in row["messages"]:
        content = []
        for part in message["content"]:
            if part["type"] == "image":
                content.append({"type": "image", "image": next(images)})
            else:
                content.append({"type": "text", "text": part["text"]})
        if alias in TEXT_ONLY_OUTSIDE_USER_TURNS and message["role"] != "user":
            content = "".join(part["text"] for part in content)
        messages.append({"role": message["role"], "content": content})
    return messages


@pytest.mark.parametrize("alias", FAMILIES)
def test_shards_equal_the_processor_output(alias, data_dir, tmp_path):
    summary = _tokenize(data_dir, tmp_path / "shards", alias)
    assert summary.rows_written == summary.rows_read == 3, summary.rejects_by_reason
    # Loaded fresh, with the checkpoint's own official template: what users of the processor get.
    processor = AutoProcessor.from_pretrained(tiny_model(alias))
    shards, layout = _shard_rows(tmp_path / "shards"), read_layout(tmp_path / "shards")
    # Templates that write today's date (Llama 3.2 Vision) are given tokenize's fixed one, as a user may too.
    date = {"date_string": DEFAULT_TEMPLATE_DATE} if "date_string" in processor.chat_template else {}
    for row in datasets.load_from_disk(str(data_dir)):
        expected = processor.apply_chat_template(
            processor_messages(row, alias), tokenize=True, return_dict=True, return_tensors="pt", **date
        )
        rebuilt = model_inputs(shards[row["id"]], layout)
        assert set(rebuilt) == set(expected) | {"labels"}, row["id"]
        for name, tensor in expected.items():
            assert rebuilt[name].dtype == tensor.dtype, name
            assert torch.equal(rebuilt[name], tensor), f"{alias} {row['id']} {name}"
        assert int(shards[row["id"]]["length"]) == expected["input_ids"].shape[1]


def _trained_runs(row: dict, tokenizer) -> list[str]:
    """The decoded runs of consecutive trained tokens of a shard row."""
    runs, current = [], []
    for token, label in zip(row["input_ids"].tolist(), row["labels"].tolist()):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


@pytest.mark.parametrize("alias", FAMILIES)
def test_labels_train_on_assistant_and_last(alias, data_dir, tmp_path):
    tokenizer = AutoProcessor.from_pretrained(tiny_model(alias)).tokenizer
    _tokenize(data_dir, tmp_path / "assistant", alias)
    _tokenize(data_dir, tmp_path / "last", alias, train_on="last")
    end = END_OF_TURN[alias]
    every = _trained_runs(_shard_rows(tmp_path / "assistant")["two-turns"], tokenizer)
    last = _trained_runs(_shard_rows(tmp_path / "last")["two-turns"], tokenizer)
    last_reply = LAST_REPLY_OPENING.get(alias, "") + REPLIES[-1] + end
    assert [run.strip() for run in every] == [(REPLIES[0] + end).strip(), last_reply.strip()]
    assert [run.strip() for run in last] == [last_reply.strip()]


@pytest.mark.parametrize("alias", ["gemma3", "qwen2_vl", "llava", "qwen3_5", "glm4v", "internvl", "llava_onevision",
                                   "lfm2_vl", "smolvlm"])
def test_labels_train_on_all_skips_only_media(alias, data_dir, tmp_path):
    loaded = AutoProcessor.from_pretrained(tiny_model(alias))
    _tokenize(data_dir, tmp_path / "all", alias, train_on="all")
    vocab = loaded.tokenizer.get_vocab()
    media = {vocab[token] for token in get_family(alias).media_tokens if token in vocab}
    for row in _shard_rows(tmp_path / "all").values():
        ids, labels = row["input_ids"].tolist(), row["labels"].tolist()
        assert [label == -100 for label in labels] == [token in media for token in ids]


def test_long_rows_are_rejected_with_their_length(data_dir, tmp_path):
    full = _shard_rows(_tokenized(data_dir, tmp_path / "full"))
    length = int(full["two-turns"]["length"])
    summary = _tokenize(data_dir, tmp_path / "short", "gemma3", max_length=length - 1)
    assert summary.rows_rejected >= 1 and summary.rows_read == summary.rows_written + summary.rows_rejected
    rejects = [json.loads(line) for line in (tmp_path / "short" / "rejects.jsonl").read_text().splitlines()]
    reason = next(reject["reason"] for reject in rejects if reject["id"] == "two-turns")
    assert f"{length} tokens" in reason and f"--max-length {length - 1}" in reason


def _tokenized(data_dir: Path, out: Path) -> Path:
    _tokenize(data_dir, out, "gemma3")
    return out


def test_truncate_text_cuts_only_trailing_text(data_dir, tmp_path):
    full = _shard_rows(_tokenized(data_dir, tmp_path / "full"))["two-turns"]
    cut_at = int(full["length"]) - 5  # inside the last reply: media tokens all come before
    _tokenize(data_dir, tmp_path / "cut", "gemma3", max_length=cut_at, truncate="text")
    cut = _shard_rows(tmp_path / "cut")["two-turns"]
    assert int(cut["length"]) == cut_at
    for name in ("input_ids", "labels", "token_type_ids"):
        assert cut[name].tolist() == full[name][:cut_at].tolist(), name
    assert (cut["pixel_values"] == full["pixel_values"]).all()


def test_truncate_text_never_cuts_through_image_tokens(data_dir, tmp_path):
    full = _shard_rows(_tokenized(data_dir, tmp_path / "full"))["two-turns"]
    image_token = AutoProcessor.from_pretrained(tiny_model("gemma3")).tokenizer.convert_tokens_to_ids("<image_soft_token>")
    inside_image = full["input_ids"].tolist().index(image_token) + 1
    summary = _tokenize(data_dir, tmp_path / "cut", "gemma3", max_length=inside_image, truncate="text")
    assert "two-turns" not in _shard_rows(tmp_path / "cut")
    rejects = (tmp_path / "cut" / "rejects.jsonl").read_text()
    assert "through media tokens" in rejects and summary.rows_rejected >= 1


@pytest.mark.parametrize("alias", ["qwen2_vl", "mllama", "lfm2_vl", "smolvlm"])
def test_truncate_text_keeps_every_media_token_and_the_tensors_aligned(alias, data_dir, tmp_path):
    # Qwen2-VL: many <|image_pad|> tokens matched by image_grid_thw; Mllama: a cross_attention_mask per token;
    # LFM2-VL: tile names among the <image> runs, and a pixel row per tile; SmolVLM: crops whose row and column
    # tokens sit among the image tokens.
    _tokenize(data_dir, tmp_path / "full", alias)
    full_rows = _shard_rows(tmp_path / "full")
    layout = read_layout(tmp_path / "full")
    vocab = AutoProcessor.from_pretrained(tiny_model(alias)).tokenizer.get_vocab()
    media = {vocab[token] for token in get_family(alias).media_tokens if token in vocab}

    def media_positions(row: dict) -> list[int]:
        return [position for position, token in enumerate(row["input_ids"].tolist()) if token in media]

    two_turns = full_rows["two-turns"]
    cut_at = (media_positions(two_turns)[-1] + 1 + int(two_turns["length"])) // 2  # inside the text after the image
    assert media_positions(two_turns)[-1] < cut_at < int(two_turns["length"])
    summary = _tokenize(data_dir, tmp_path / "cut", alias, max_length=cut_at, truncate="text")
    assert summary.rows_read == summary.rows_written + summary.rows_rejected == 3
    cut_rows = _shard_rows(tmp_path / "cut")
    rejects_file = tmp_path / "cut" / "rejects.jsonl"
    lines = rejects_file.read_text().splitlines() if rejects_file.exists() else []
    rejects = {reject["id"]: reject["reason"] for reject in map(json.loads, lines)}
    assert "two-turns" in cut_rows
    per_token = {spec.name for spec in layout.tensors if spec.per_token} | {"input_ids", "attention_mask", "labels"}
    for row_id, full in full_rows.items():
        if row_id not in cut_rows:  # refused only if the cut would go through media or leave no reply token
            if media_positions(full) and media_positions(full)[-1] >= cut_at:
                assert "through media tokens" in rejects[row_id], row_id
            else:
                assert (full["labels"][:cut_at] == -100).all() and "no token to train on" in rejects[row_id], row_id
            continue
        cut, kept = cut_rows[row_id], min(int(full["length"]), cut_at)
        assert int(cut["length"]) == len(cut["input_ids"]) == len(cut["labels"]) == kept <= cut_at, row_id
        assert media_positions(cut) == media_positions(full), row_id
        assert (cut["labels"] != -100).any(), row_id  # what remains of the reply is still trained
        before, after = model_inputs(full, layout), model_inputs(cut, layout)
        assert set(before) == set(after)
        for name, tensor in before.items():
            expected = tensor[:, :kept] if name in per_token else tensor
            assert torch.equal(after[name], expected), f"{alias} {row_id} {name}"
    # The real model takes the cut row: its image features still match its image tokens.
    model = AutoModelForImageTextToText.from_pretrained(tiny_model(alias))
    with torch.no_grad():
        assert torch.isfinite(model(**model_inputs(cut_rows["two-turns"], layout)).loss)


def test_num_proc_gives_identical_shards(data_dir, tmp_path):
    _tokenize(data_dir, tmp_path / "one", "qwen2_vl", num_proc=1)
    _tokenize(data_dir, tmp_path / "two", "qwen2_vl", num_proc=2)
    one, two = sorted((tmp_path / "one").glob("*.arrow")), sorted((tmp_path / "two").glob("*.arrow"))
    assert [path.name for path in one] == [path.name for path in two]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))


def test_folder_loads_both_ways_and_holds_processor_and_metadata(data_dir, tmp_path):
    out = tmp_path / "shards"
    summary = _tokenize(data_dir, out, "gemma3")
    from_disk = datasets.load_from_disk(str(out))
    from_files = datasets.load_dataset("arrow", data_files=f"{out}/*.arrow", split="train")
    assert from_disk["input_ids"] == from_files["input_ids"] and len(from_disk) == 3
    assert from_disk.features["pixel_values"].dtype == "uint8"
    metadata = json.loads((out / "vlmdata.json").read_text())
    assert metadata["pixel_storage"] == {"pixel_values": "uint8 codes + rescale/normalise table"}
    assert metadata["stage"] == "tokenize" and metadata["chat_template"] == "gemma3"
    assert metadata["summary"]["tokens"] == summary.tokens == sum(from_disk["length"])
    assert 0 < metadata["summary"]["trained_fraction"] < 1 and "p50" in metadata["summary"]["length_percentiles"]
    saved = AutoProcessor.from_pretrained(out / "processor")
    assert "{% generation %}" in saved.chat_template.replace("{%- generation -%}", "{% generation %}")


@pytest.mark.parametrize("alias", ["gemma3n", "gemma4"])
def test_audio_rows_end_to_end(alias, tmp_path):
    data = normalised(tmp_path / "audio", with_audio=True)
    summary = _tokenize(data, tmp_path / "shards", alias)
    assert summary.rows_written == 4 and summary.media["audios"] == 1
    row = _shard_rows(tmp_path / "shards")["audio"]
    processor = AutoProcessor.from_pretrained(tiny_model(alias))
    source = next(r for r in datasets.load_from_disk(str(data)) if r["id"] == "audio")
    audio = source["audios"][0]["array"]
    messages = [
        {"role": "user", "content": [{"type": "audio", "audio": torch.tensor(audio).numpy()},
                                     {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A pure tone."}]},
    ]
    expected = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    rebuilt = model_inputs(row, read_layout(tmp_path / "shards"))
    assert set(rebuilt) == set(expected) | {"labels"}
    for name, tensor in expected.items():
        assert torch.equal(rebuilt[name], tensor), name
    audio_token = processor.tokenizer.convert_tokens_to_ids(processor.audio_token)
    assert (rebuilt["labels"][rebuilt["input_ids"] == audio_token] == -100).all()
    model = AutoModelForImageTextToText.from_pretrained(tiny_model(alias))
    with torch.no_grad():
        assert torch.isfinite(model(**rebuilt).loss)


def test_audio_for_a_family_without_audio_is_rejected(tmp_path):
    data = normalised(tmp_path / "audio", with_audio=True)
    summary = _tokenize(data, tmp_path / "shards", "gemma3")
    assert summary.rows_written == 3 and summary.rows_rejected == 1
    assert "takes no audio" in (tmp_path / "shards" / "rejects.jsonl").read_text()


def test_template_without_generation_markers_is_fatal(data_dir, tmp_path):
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m.role }}{% endfor %}")
    with pytest.raises(FatalError, match="generation"):
        _tokenize(data_dir, tmp_path / "shards", "gemma3", chat_template=str(template))


def test_cli_prints_summary(data_dir, tmp_path):
    out = tmp_path / "shards"
    result = CliRunner().invoke(cli, ["tokenize", str(data_dir), "-o", str(out), "--model", str(tiny_model("llava")), "--quiet"])
    assert result.exit_code == 0, result.output
    for label in ("rows written", "tokens", "trained tokens", "images", "bytes per sample"):
        assert label in result.output
    assert (out / "vlmdata.json").is_file()


def test_cli_unknown_model_is_one_line_error(data_dir, tmp_path):
    result = CliRunner().invoke(cli, ["tokenize", str(data_dir), "-o", str(tmp_path / "s"), "--model", str(tmp_path / "nope")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Cannot load the processor") and "nope" in lines[0]


def test_a_dataset_written_again_in_the_same_process_is_read_again(tmp_path):
    # Workers keep the dataset they opened for the next batches; a folder converted again must not be served
    # from that old copy.
    from vlmdata.convert import convert

    source = normalised(tmp_path / "first").parent / "conversations.jsonl"
    lines = source.read_text().splitlines()
    data = tmp_path / "data"
    convert([str(source)], data, progress=False)
    tokenize(data, tmp_path / "one", model=str(tiny_model("gemma3")), progress=False)
    source.write_text("\n".join(lines[1:2]) + "\n")
    convert([str(source)], data, overwrite=True, progress=False)
    tokenize(data, tmp_path / "two", model=str(tiny_model("gemma3")), progress=False)

    assert len(datasets.load_from_disk(str(tmp_path / "one"))) == len(lines) > 1
    assert datasets.load_from_disk(str(tmp_path / "two"))["id"] == datasets.load_from_disk(str(data))["id"]
