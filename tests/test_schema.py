"""Normalisation rules of the seeds' "Dataset Format", one test per rule."""

import datasets
import pyarrow as pa
import pytest
from PIL import Image

from vlmdata.errors import RowError
from vlmdata.schema import NORMALISED_FEATURES, normalise, undecoded_features


def user(*content):
    return {"role": "user", "content": list(content)}


def assistant(text="ok"):
    return {"role": "assistant", "content": text}


def texts(conversation):
    return [(m["role"], [(p["type"], p["text"]) for p in m["content"]]) for m in conversation.messages]


def test_string_content_becomes_one_text_part():
    conversation = normalise({"messages": [{"role": "user", "content": "Hi"}, assistant("Hello")]})
    assert texts(conversation) == [("user", [("text", "Hi")]), ("assistant", [("text", "Hello")])]
    assert conversation.images == [] and conversation.audios == []
    assert conversation.media == {"image": [], "video": [], "audio": []}


def test_media_payloads_move_out_of_the_messages_in_reading_order():
    conversation = normalise(
        {
            "messages": [
                {"role": "system", "content": [{"type": "image", "url": "http://x/0.png"}, "Be brief."]},
                user({"type": "text", "text": "Compare"}, {"type": "image", "path": "a.jpg"},
                     {"type": "image", "base64": "QUJD"}),
                assistant(),
                user({"type": "audio", "path": "s.wav"}, {"type": "image", "image": {"bytes": b"x", "path": None}}),
                assistant(),
            ]
        }
    )
    assert conversation.images == [
        {"url": "http://x/0.png"},
        {"path": "a.jpg"},
        {"base64": "QUJD"},
        {"image": {"bytes": b"x", "path": None}},
    ]
    assert conversation.audios == [{"path": "s.wav"}]
    assert conversation.media == {"image": conversation.images, "video": [], "audio": conversation.audios}
    assert texts(conversation)[1] == ("user", [("text", "Compare"), ("image", None), ("image", None)])
    assert texts(conversation)[3] == ("user", [("audio", None), ("image", None)])


def test_images_column_fills_bare_image_parts_in_order():
    red, blue = Image.new("RGB", (2, 2), "red"), Image.new("RGB", (2, 2), "blue")
    conversation = normalise(
        {
            "messages": [user({"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}), assistant()],
            "images": [red, blue],
        }
    )
    assert [payload["image"] for payload in conversation.images] == [red, blue]


def test_images_left_over_go_to_the_start_of_the_first_user_message_and_all_are_used():
    conversation = normalise(
        {
            "messages": [
                {"role": "system", "content": "sys"},
                user({"type": "text", "text": "Look"}, {"type": "image"}),
                assistant(),
                user({"type": "text", "text": "again"}),
                assistant(),
            ],
            "images": ["one.jpg", "two.jpg", "three.jpg"],
        }
    )
    assert conversation.images == [{"path": "two.jpg"}, {"path": "three.jpg"}, {"path": "one.jpg"}]
    assert texts(conversation)[1] == ("user", [("image", None), ("image", None), ("text", "Look"), ("image", None)])


def test_single_image_column_is_accepted_and_strings_name_the_source():
    conversation = normalise({"messages": [user("Describe"), assistant()], "image": "https://h/bee.jpg"})
    assert conversation.images == [{"url": "https://h/bee.jpg"}]
    data_uri = normalise({"messages": [user("x"), assistant()], "images": ["data:image/png;base64,AAAA"]})
    assert data_uri.images == [{"base64": "data:image/png;base64,AAAA"}]


def test_index_keys_of_the_llava_instruct_mix_layout_pick_their_image():
    record = {
        "messages": [
            {"role": "user", "content": [
                {"type": "image", "text": None, "index": 1},
                {"type": "text", "text": "What?", "index": None},
                {"type": "image", "text": None, "index": 0},
            ]},
            {"role": "assistant", "content": [{"type": "text", "text": "Cats.", "index": None}]},
        ],
        "images": [{"bytes": b"zero", "path": "0.jpg"}, {"bytes": b"one", "path": "1.jpg"}],
    }
    conversation = normalise(record)
    assert [p["image"]["bytes"] for p in conversation.images] == [b"one", b"zero"]


def test_more_bare_image_parts_than_images_is_rejected_with_the_counts():
    with pytest.raises(RowError, match="3 image parts .* images column has 2"):
        normalise({"messages": [user({"type": "image"}, {"type": "image"}, {"type": "image"}), assistant()],
                   "images": ["a.jpg", "b.jpg"]})


def test_out_of_range_index_is_rejected():
    with pytest.raises(RowError, match="index 3 is out of range"):
        normalise({"messages": [user({"type": "image", "index": 3}), assistant()], "images": ["a.jpg"]})


def test_null_keys_are_ignored():
    # The shape Arrow gives when it merges a text part and an image part into one struct type.
    conversation = normalise(
        {
            "messages": [
                {"role": "user", "content": [
                    {"type": "image", "text": None, "url": None, "path": "a.jpg", "base64": None},
                    {"type": "text", "text": "What?", "url": None, "path": None, "base64": None},
                ], "name": None},
                {"role": "assistant", "content": [{"type": "text", "text": "A cat.", "path": None}]},
            ],
            "images": None,
        }
    )
    assert conversation.images == [{"path": "a.jpg"}]
    assert texts(conversation)[0] == ("user", [("image", None), ("text", "What?")])


def test_openai_image_url_and_input_audio_parts_are_understood():
    conversation = normalise(
        {
            "messages": [
                user({"type": "image_url", "image_url": {"url": "https://h/a.png"}},
                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                     {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}),
                assistant(),
            ]
        }
    )
    assert conversation.images == [{"url": "https://h/a.png"}, {"base64": "data:image/png;base64,AAAA"}]
    assert conversation.audios == [{"base64": "UklGRg=="}]


def test_a_part_without_type_is_typed_by_its_keys():
    conversation = normalise({"messages": [
        user({"path": "a.jpg"}, {"audio": {"path": "s.wav"}}, {"image": {"bytes": b"x", "path": None}},
             {"url": "https://h/b.png", "text": "a caption"}),
        assistant(),
    ]})
    assert conversation.images == [{"path": "a.jpg"}, {"image": {"bytes": b"x", "path": None}}]
    assert conversation.audios == [{"audio": {"path": "s.wav"}}]
    assert texts(conversation)[0][1][-1] == ("text", "a caption")
    # The kind's own key types the part; an address beside it is a second source, not a second kind.
    with pytest.raises(RowError, match="audio part has several sources"):
        normalise({"messages": [user({"audio": "s.wav", "path": "t.wav"}), assistant()]})


def test_a_part_without_type_holding_two_kinds_is_rejected():
    with pytest.raises(RowError, match="part 0: the part has no type and holds image and audio; give its type"):
        normalise({"messages": [user({"image": "a.jpg", "audio": "s.wav"}), assistant()]})


def test_each_kind_reads_its_own_columns():
    clip = {"array": [0.0, 0.5], "sampling_rate": 16000}
    conversation = normalise({
        "messages": [user({"type": "audio"}, {"type": "image"}, {"type": "audio"}), assistant()],
        "image": b"png bytes",
        "audio": [clip, b"wav bytes"],
    })
    assert conversation.images == [{"image": {"bytes": b"png bytes", "path": None}}]
    # Raw bytes in an audio column are audio, not an image.
    assert conversation.audios == [{"audio": clip}, {"audio": {"bytes": b"wav bytes", "path": None}}]


def test_more_bare_audio_parts_than_clips_names_the_audios_column():
    with pytest.raises(RowError, match="2 audio parts have no audio of their own but the audios column has 1"):
        normalise({"messages": [user({"type": "audio"}, {"type": "audio"}), assistant()], "audios": ["s.wav"]})


def test_the_normalised_features_are_the_arrow_schema_convert_writes_and_tokenize_reads():
    expected = pa.schema([
        ("messages", pa.list_(pa.struct([("role", pa.string()),
                                         ("content", pa.list_(pa.struct([("type", pa.string()), ("text", pa.string())])))]))),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("videos", pa.list_(pa.struct([("frames", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
                                       ("timestamps", pa.list_(pa.float64())), ("fps", pa.float64()),
                                       ("total_frames", pa.int64())]))),
        ("audios", pa.list_(pa.struct([("array", pa.list_(pa.float32())), ("sampling_rate", pa.int32())]))),
        ("id", pa.string()),
        ("source", pa.string()),
    ])
    assert NORMALISED_FEATURES.arrow_schema.equals(expected)
    assert NORMALISED_FEATURES["images"] == datasets.List(datasets.Image())
    undecoded = undecoded_features(NORMALISED_FEATURES)
    assert undecoded["images"] == datasets.List(datasets.Image(decode=False))
    assert undecoded.arrow_schema.equals(expected) and list(undecoded) == list(NORMALISED_FEATURES)
    # A dataset with only some media columns keeps just those.
    assert list(undecoded_features(datasets.Features({"messages": NORMALISED_FEATURES["messages"]}))) == ["messages"]


def test_role_aliases_are_mapped():
    conversation = normalise({"messages": [{"role": "human", "content": "q"}, {"role": "gpt", "content": "a"}]})
    assert [m["role"] for m in conversation.messages] == ["user", "assistant"]


@pytest.mark.parametrize(
    "record, reason",
    [
        ({}, "no messages"),
        ({"messages": []}, "messages is empty"),
        ({"messages": "hello"}, "messages is a str"),
        ({"messages": [{"content": "x"}, assistant()]}, "message 0 has no role"),
        ({"messages": [{"role": "narrator", "content": "x"}, assistant()]}, "unknown role 'narrator'"),
        ({"messages": [user({"type": "text", "text": 42}), assistant()]}, "part 0: text is a int, expected a string"),
        ({"messages": [user({"type": "document", "path": "v.pdf"}), assistant()]}, "unsupported part type 'document'"),
        ({"messages": [user({"type": "image", "path": "a", "url": "http://b"}), assistant()]}, "several sources"),
        ({"messages": [user("only a question")]}, "no assistant message"),
        ({"messages": [{"role": "user", "content": 3}, assistant()]}, "content is a int"),
    ],
)
def test_bad_rows_are_rejected_with_a_reason(record, reason):
    with pytest.raises(RowError, match=reason):
        normalise(record)
