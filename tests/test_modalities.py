"""The modalities: the registry, and the steps convert (`load_media`) and tokenize (`processor_messages`) take
through every kind, on real images, real audio, real Arrow files and real processors."""

from __future__ import annotations

import io
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from tests.fixture_data import build_once
from tests.tokenize_fixtures import tiny_model
from vlmdata.errors import RowError
from vlmdata.media import MediaLoader, MediaOptions
from vlmdata.modalities import KINDS, MODALITIES, MediaError, load_media, media_counts, modality, processor_messages
from vlmdata.models.loading import load_processor
from vlmdata.models.registry import FAMILIES
from vlmdata.schema import NORMALISED_FEATURES, normalise, undecoded_features

QUESTION = {"type": "text", "text": "What is this?"}
ANSWER = {"role": "assistant", "content": "A drawing."}
# The same reply as a normalised row holds it.
STORED_ANSWER = {"role": "assistant", "content": [{"type": "text", "text": "A drawing."}]}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return build_once(tmp_path_factory)


@pytest.fixture(scope="module")
def gemma3():
    return load_processor(str(tiny_model("gemma3")))


@pytest.fixture(scope="module")
def gemma3n():
    return load_processor(str(tiny_model("gemma3n")))


def loader() -> MediaLoader:
    return MediaLoader(MediaOptions())


def user(*content) -> dict:
    return {"role": "user", "content": list(content)}


def stored_rows(root: Path, records: list[dict], folder: Path) -> list[dict]:
    """`records` normalised, their media loaded, written to a normalised dataset folder, and read back the
    way tokenize reads it (media undecoded)."""
    rows = []
    for number, record in enumerate(records):
        conversation = normalise(record)
        media = load_media(conversation, str(root), loader())
        rows.append({"messages": conversation.messages, **media, "id": str(number), "source": "test"})
    table = pa.Table.from_pylist(rows, schema=NORMALISED_FEATURES.arrow_schema)
    datasets.Dataset(datasets.table.InMemoryTable(table)).save_to_disk(str(folder))
    dataset = datasets.load_from_disk(str(folder))
    return dataset.cast(undecoded_features(dataset.features)).to_list()


def test_the_registry_lists_image_video_then_audio_and_finds_each_by_kind():
    assert KINDS == ("image", "video", "audio")
    assert [(m.kind, m.column, m.source_columns) for m in MODALITIES] == [
        ("image", "images", ("images", "image")), ("video", "videos", ("videos", "video")),
        ("audio", "audios", ("audios", "audio"))]
    assert modality("image") is MODALITIES[0] and modality("audio") is MODALITIES[2]
    assert modality("image").payload_keys == ("image", "path", "url", "base64")
    assert modality("video").payload_keys == ("video", "path", "url", "base64")
    assert modality("audio").payload_keys == ("audio", "path", "url", "base64")
    with pytest.raises(KeyError, match="no modality 'document'"):
        modality("document")


def test_one_kind_takes_bare_addresses_and_every_family_names_known_kinds():
    assert [m.kind for m in MODALITIES if m.takes_bare_addresses] == ["image"]
    for family in FAMILIES.values():
        assert "image" in family.modalities and set(family.modalities) <= set(KINDS), family.alias
    assert [m.kind for m in MODALITIES if m.taken_by(FAMILIES["gemma3n"])] == ["image", "audio"]
    assert [m.kind for m in MODALITIES if m.taken_by(FAMILIES["qwen2_vl"])] == ["image", "video"]
    assert [m.kind for m in MODALITIES if m.taken_by(FAMILIES["llava"])] == ["image"]


def test_load_media_loads_every_kind_in_reading_order(root):
    record = {
        "messages": [user({"type": "image", "path": "images/shapes.jpg"}, {"type": "audio", "path": "audio/tone.wav"},
                          QUESTION, {"type": "image", "path": "images/palette.png"}), ANSWER],
    }
    media = load_media(normalise(record), str(root), loader())

    assert list(media) == ["images", "videos", "audios"]
    assert [image["path"] for image in media["images"]] == ["shapes.jpg", "palette.png"]
    with Image.open(root / "images" / "shapes.jpg") as original, Image.open(io.BytesIO(media["images"][0]["bytes"])) as stored:
        assert stored.size == original.size
    clip = media["audios"][0]
    # The fixture is 1 s at 22050 Hz: stored as 1 s at the default 16 kHz.
    assert clip["sampling_rate"] == 16000 and clip["array"].dtype == np.float32 and len(clip["array"]) == 16000
    assert media_counts({"messages": [], **media}) == {"images": 2, "videos": 0, "audios": 1}
    assert media_counts({"messages": []}) == {"images": 0, "videos": 0, "audios": 0}


def test_load_media_of_a_text_row_gives_every_column_empty(root):
    record = {"messages": [user(QUESTION), ANSWER]}
    assert load_media(normalise(record), str(root), loader()) == {"images": [], "videos": [], "audios": []}


def test_a_bad_item_is_named_by_kind_and_position(root):
    good = {"type": "image", "path": "images/shapes.jpg"}
    corrupt = {"type": "image", "base64": "bm90IGFuIGltYWdl"}  # "not an image"
    with pytest.raises(MediaError, match=r"^image 1: cannot decode image from base64 data") as caught:
        load_media(normalise({"messages": [user(good, corrupt), ANSWER]}), str(root), loader())
    assert caught.value.kind == "image" and isinstance(caught.value, RowError)

    missing_clip = {"type": "audio", "path": "audio/nowhere.wav"}
    with pytest.raises(MediaError, match=r"^audio 0: .*nowhere\.wav") as caught:
        load_media(normalise({"messages": [user(good, missing_clip), ANSWER]}), str(root), loader())
    assert caught.value.kind == "audio"


def test_images_are_loaded_before_audio(root):
    bad_clip = {"type": "audio", "path": "audio/nowhere.wav"}
    bad_image = {"type": "image", "path": "images/nowhere.png"}
    with pytest.raises(MediaError) as caught:
        load_media(normalise({"messages": [user(bad_clip, bad_image), ANSWER]}), str(root), loader())
    assert caught.value.kind == "image" and str(caught.value).startswith("image 0: ")


def test_an_unforeseen_error_costs_the_row_with_its_kind(root, monkeypatch):
    # Stands for a decoder failing in a way nobody foresaw.
    from vlmdata.media import loader as media_loader

    def broken_decoder(data, label, resize, max_pixels):
        raise KeyError("a decoder bug")

    monkeypatch.setattr(media_loader, "prepare_image", broken_decoder)
    with pytest.raises(MediaError) as caught:
        load_media(normalise({"messages": [user({"type": "image", "path": "images/shapes.jpg"}), ANSWER]}),
                   str(root), loader())
    assert (caught.value.kind, str(caught.value)) == ("image", "unexpected KeyError: 'a decoder bug'")


def test_processor_messages_place_the_stored_images_and_the_processor_reads_them(root, gemma3, tmp_path):
    record = {"messages": [user({"type": "image", "path": "images/shapes.jpg"}, QUESTION,
                                {"type": "image", "path": "images/alpha.png"}), ANSWER]}
    row = stored_rows(root, [record], tmp_path / "data")[0]

    messages, counts = processor_messages(row, gemma3.family, gemma3.processor)

    assert counts == {"images": 2, "videos": 0, "audios": 0}
    content = messages[0]["content"]
    assert [part["type"] for part in content] == ["image", "text", "image"]
    with Image.open(root / "images" / "shapes.jpg") as original:
        assert np.array_equal(np.asarray(content[0]["image"].convert("RGB")), np.asarray(original.convert("RGB")))
    with Image.open(root / "images" / "alpha.png") as original:
        assert content[2]["image"].size == original.size
    assert content[1] == QUESTION
    assert messages[1] == STORED_ANSWER
    outputs = gemma3.processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="np")
    assert outputs["pixel_values"].shape[0] == 2


def test_processor_messages_give_audio_to_a_family_that_takes_it(root, gemma3n, tmp_path):
    record = {"messages": [user({"type": "audio", "path": "audio/tone.wav"}, QUESTION), ANSWER]}
    row = stored_rows(root, [record], tmp_path / "data")[0]

    messages, counts = processor_messages(row, gemma3n.family, gemma3n.processor)

    assert counts == {"images": 0, "videos": 0, "audios": 1}
    clip = messages[0]["content"][0]
    assert clip["type"] == "audio" and clip["audio"].dtype == np.float32
    assert np.array_equal(clip["audio"], np.asarray(row["audios"][0]["array"], dtype=np.float32))
    outputs = gemma3n.processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="np")
    assert "input_features" in outputs


def test_audio_for_a_family_without_audio_is_refused(root, gemma3, tmp_path):
    record = {"messages": [user({"type": "audio", "path": "audio/tone.wav"}, QUESTION), ANSWER]}
    row = stored_rows(root, [record], tmp_path / "data")[0]
    with pytest.raises(RowError, match="^an audio part, but this model family takes no audio$"):
        processor_messages(row, gemma3.family, gemma3.processor)


def test_a_clip_at_another_rate_than_the_processor_needs_is_refused(gemma3n):
    row = {"messages": [user({"type": "audio", "text": None}), STORED_ANSWER],
           "audios": [{"array": [0.0] * 800, "sampling_rate": 8000}]}
    with pytest.raises(RowError, match="^audio 0 is at 8000 Hz, the processor needs 16000 Hz$"):
        processor_messages(row, gemma3n.family, gemma3n.processor)


def test_parts_and_stored_items_that_do_not_match_are_refused(root, gemma3, tmp_path):
    record = {"messages": [user({"type": "image", "path": "images/shapes.jpg"}, {"type": "image", "path": "images/gray.jpg"},
                                QUESTION), ANSWER]}
    row = stored_rows(root, [record], tmp_path / "data")[0]

    one_part = {**row, "messages": [user({"type": "image", "text": None}, QUESTION), STORED_ANSWER]}
    with pytest.raises(RowError, match="^1 image parts but 2 images$"):
        processor_messages(one_part, gemma3.family, gemma3.processor)

    one_image = {**row, "images": row["images"][:1]}
    with pytest.raises(RowError, match="^image part 1 has no image in the images column$"):
        processor_messages(one_image, gemma3.family, gemma3.processor)

    no_column = {"messages": [user({"type": "audio", "text": None}), STORED_ANSWER]}
    with pytest.raises(RowError, match="^audio part 0 has no clip in the audios column$"):
        processor_messages(no_column, FAMILIES["gemma3n"], gemma3.processor)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"not an image at all", "^image 0: cannot decode: not a recognised image format$"),
        (None, "^image 0: cannot decode: "),
    ],
)
def test_stored_images_that_cannot_be_decoded_are_refused(root, gemma3, data, reason):
    png = (root / "images" / "gradient.png").read_bytes()
    stored = {"bytes": data if data is not None else png[: len(png) // 2], "path": None}
    row = {"messages": [user({"type": "image", "text": None}), STORED_ANSWER], "images": [stored]}
    with pytest.raises(RowError, match=reason) as caught:
        processor_messages(row, gemma3.family, gemma3.processor)
    assert " at 0x" not in str(caught.value)  # no memory address: the same reason on every run
