"""The collator pads and stacks what the shards hold into exactly the batch the processor itself would make."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoProcessor

from tests.test_tokenize import processor_messages
from tests.tokenize_fixtures import FAMILIES, normalised, tiny_model
from vlmdata.batching import Batching, concat_padded, stack_padded
from vlmdata.shards import decode_codes, load_shards, model_inputs, read_layout
from vlmdata.tokenize import tokenize
from vlmdata.train import ShardCollator
from vlmdata.train.collator import PixelDecoding


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return normalised(tmp_path_factory.mktemp("collator"))


@pytest.mark.parametrize("alias", FAMILIES)
def test_a_batch_from_shards_equals_the_processors_own_batch(alias, data_dir, tmp_path):
    tokenize(data_dir, tmp_path / "shards", model=str(tiny_model(alias)), progress=False)
    rows = {row["id"]: row for row in load_shards(tmp_path / "shards")}
    source = list(datasets.load_from_disk(str(data_dir)))
    if alias in ("mllama", "smolvlm"):
        # Mllama's processor leaves text-only rows out of the image tensors of a mixed batch, which its model
        # cannot then line up; the collator gives such rows empty images instead (trained in test_train).
        # SmolVLM2's gives a text-only row an image of zeros, which its model drops; the collator gives it none
        # (the same logits: test_smolvlm_text_only_row_in_a_batch_gives_the_processors_logits).
        source = [row for row in source if row["images"]]
    # The processor saved with the shards renders with the template the shards were made with.
    processor = AutoProcessor.from_pretrained(tmp_path / "shards" / "processor")
    expected = processor.apply_chat_template(
        [processor_messages(row) for row in source], tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "right"},  # as for training; Llama 4's default is left
    )
    collate = ShardCollator(read_layout(tmp_path / "shards"), pad_token_id=processor.tokenizer.pad_token_id)
    batch = collate([rows[row["id"]] for row in source])

    assert set(batch) == set(expected) | {"labels"}
    for name, tensor in expected.items():
        assert batch[name].dtype == tensor.dtype, name
        assert batch[name].shape == tensor.shape, f"{alias} {name}"
        assert torch.equal(batch[name], tensor), f"{alias} {name} {(batch[name] != tensor).nonzero()[:5].tolist()}"
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


# Families whose pixels batch without padding: their codes stay codes until the model's pre-hook decodes them.
# Pixtral pads images of different sizes, Mllama pads tiles and rows: their codes are decoded in the collator.
# Gemma 4's processor pads every image to the same number of patches itself.
# LLaVA-OneVision pads each image's AnyRes tiles to the most any image of the batch has: decoded in the collator.
# LFM2-VL's processor pads each tile's patches with zeros after normalising, kept as runs: decoded in the collator.
CODES_REACH_THE_MODEL = {
    "gemma3", "gemma3n", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "llava", "llama4", "gemma4", "glm4v",
    "internvl",
}


@pytest.mark.parametrize("alias", FAMILIES)
def test_pixel_codes_decoded_by_the_model_hook_equal_the_processors_batch(alias, data_dir, tmp_path):
    tokenize(data_dir, tmp_path / "shards", model=str(tiny_model(alias)), progress=False)
    layout = read_layout(tmp_path / "shards")
    rows = [row for row in load_shards(tmp_path / "shards") if alias != "mllama" or len(row["pixel_values"])]
    floats = ShardCollator(layout, pad_token_id=0)(rows)
    codes = ShardCollator(layout, pad_token_id=0, decode_pixels=False)(rows)

    assert (codes["pixel_values"].dtype == torch.uint8) == (alias in CODES_REACH_THE_MODEL), alias
    seen = {}
    model = torch.nn.Module()
    model.forward = lambda **inputs: seen.update(inputs)
    model.register_forward_pre_hook(PixelDecoding(layout), with_kwargs=True)
    model(**codes)
    assert set(seen) == set(floats)
    for name, tensor in floats.items():
        assert seen[name].dtype == tensor.dtype and torch.equal(seen[name], tensor), f"{alias} {name}"


def test_smolvlm_text_only_row_in_a_batch_gives_the_processors_logits(data_dir, tmp_path):
    from transformers import AutoModelForImageTextToText

    tokenize(data_dir, tmp_path / "shards", model=str(tiny_model("smolvlm")), progress=False)
    rows = {row["id"]: row for row in load_shards(tmp_path / "shards")}
    source = list(datasets.load_from_disk(str(data_dir)))
    processor = AutoProcessor.from_pretrained(tmp_path / "shards" / "processor")
    expected = processor.apply_chat_template(
        [processor_messages(row) for row in source], tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"padding": True, "padding_side": "right"})
    batch = ShardCollator(read_layout(tmp_path / "shards"), pad_token_id=processor.tokenizer.pad_token_id)(
        [rows[row["id"]] for row in source])
    # The processor's batch has an image of zeros for the text-only row; the collator's has none.
    assert expected["pixel_values"].shape[0] == len(source) and batch["pixel_values"].shape[0] == len(source) - 1
    assert not expected["pixel_values"][[not row["images"] for row in source]].any()
    model = AutoModelForImageTextToText.from_pretrained(tiny_model("smolvlm")).eval()
    with torch.no_grad():
        got = model(**{name: value for name, value in batch.items() if name != "labels"}).logits
        want = model(**expected).logits
    mask = expected["attention_mask"].bool()
    assert torch.allclose(got[mask], want[mask], atol=1e-5)


@pytest.mark.parametrize("alias", ["gemma3", "qwen2_vl"])
def test_a_model_with_the_decoding_hook_gives_the_loss_of_float_pixels(alias, data_dir, tmp_path):
    from transformers import AutoModelForImageTextToText

    tokenize(data_dir, tmp_path / "shards", model=str(tiny_model(alias)), progress=False)
    layout = read_layout(tmp_path / "shards")
    rows = [row for row in load_shards(tmp_path / "shards") if len(row["pixel_values"])]
    model = AutoModelForImageTextToText.from_pretrained(tiny_model(alias)).eval()
    with torch.no_grad():
        expected = model(**ShardCollator(layout, pad_token_id=0)(rows))
        model.register_forward_pre_hook(PixelDecoding(layout, model.dtype), with_kwargs=True)
        got = model(**ShardCollator(layout, pad_token_id=0, decode_pixels=False)(rows))
    assert torch.equal(got.logits, expected.logits) and torch.equal(got.loss, expected.loss)


@pytest.mark.parametrize("alias", ["gemma3", "qwen2_vl", "mllama"])
def test_two_rows_packed_into_one_by_the_same_rules_line_up_for_the_model(alias, data_dir, tmp_path):
    from transformers import AutoModelForImageTextToText

    tokenize(data_dir, tmp_path / "shards", model=str(tiny_model(alias)), progress=False)
    layout = read_layout(tmp_path / "shards")
    with_images = [row for row in load_shards(tmp_path / "shards") if len(row["pixel_values"])]  # one image, then two
    first, second = (model_inputs(row, layout) for row in with_images)
    lengths = [int(row["length"]) for row in with_images]
    # As the collator does, a tensor neither row has (Qwen2-VL's video pixels, in rows of images) is left out.
    rules = {name: rule for name, rule in layout.batch_rules(pad_token_id=0).items() if name in first or name in second}
    packed = {name: rule.concat([first.get(name), second.get(name)], lengths) for name, rule in rules.items()}

    for name, rule in rules.items():
        a, b = first[name], second[name]
        if rule.batching is Batching.PER_TOKEN and a.ndim == 2:  # ids, labels, masks, type ids
            assert torch.equal(packed[name], torch.cat([a, b], dim=1)), name
        elif rule.batching is Batching.PER_TOKEN:  # Mllama's cross-attention mask: each row's tokens see its own images
            assert packed[name].shape == (1, sum(lengths), a.shape[2] + b.shape[2], a.shape[3]), name
            assert torch.equal(packed[name][:, :lengths[0], :a.shape[2]], a)
            assert torch.equal(packed[name][:, lengths[0]:, a.shape[2]:], b)
            assert not packed[name][:, :lengths[0], a.shape[2]:].any()
            assert not packed[name][:, lengths[0]:, :a.shape[2]].any()
        elif rule.batching is Batching.PER_ROW:  # Mllama's [1, images, tiles, ...]
            assert packed[name].shape[:2] == (1, a.shape[1] + b.shape[1]), name
            assert torch.equal(packed[name], torch.cat([a, b], dim=1)), name  # the tiny images all have four tiles
        else:  # pixels, patches, grids
            assert torch.equal(packed[name], torch.cat([a, b])), name
    codes = [model_inputs(row, layout, decode_pixels=False)["pixel_values"] for row in with_images]
    packed_codes = rules["pixel_values"].concat(codes, lengths)
    if packed_codes.dtype == torch.uint8:  # packing adds no padding: the codes stay codes for the model's hook
        packed_codes = decode_codes(packed_codes, {spec.name: spec for spec in layout.tensors}["pixel_values"])
    assert torch.equal(packed_codes, packed["pixel_values"])

    # The model takes the packed row: every image's features meet its own image tokens.
    model = AutoModelForImageTextToText.from_pretrained(tiny_model(alias)).eval()
    with torch.no_grad():
        assert torch.isfinite(model(**packed).loss)


def test_a_row_without_a_per_token_tensor_packs_as_padding_of_its_length(data_dir, tmp_path):
    tokenize(data_dir, tmp_path / "shards", model=str(tiny_model("mllama")), progress=False)
    layout = read_layout(tmp_path / "shards")
    rows = sorted(load_shards(tmp_path / "shards"), key=lambda row: len(row["pixel_values"]) == 0)  # text-only last
    inputs = [model_inputs(row, layout) for row in rows]
    assert "cross_attention_mask" not in inputs[-1]  # Mllama's text-only row has none
    lengths = [int(row["length"]) for row in rows]
    rule = layout.batch_rules(pad_token_id=0)["cross_attention_mask"]
    packed = rule.concat([row.get("cross_attention_mask") for row in inputs], lengths)
    assert packed.shape[1] == sum(lengths)
    assert not packed[:, sum(lengths[:-1]):].any()


def test_padding_helpers_pad_every_dimension_and_fill_missing_rows():
    stacked = stack_padded([torch.ones(1, 2, 3), None, torch.full((1, 4, 1), 2.0)], pad=-1)
    assert stacked.shape == (3, 4, 3)
    assert (stacked[1] == -1).all() and (stacked[0, :2, :3] == 1).all() and (stacked[0, 2:] == -1).all()
    # Per-token tensors repeat their last token's values over the padding, as Mllama's processor does.
    per_token = stack_padded([torch.tensor([[[1, 0]]]), torch.tensor([[[0, 1], [1, 1], [0, 0]]])], pad=0, repeat_last=True)
    assert per_token[0].tolist() == [[1, 0], [1, 0], [1, 0]]
    joined = concat_padded([torch.ones(2, 3, 4), torch.full((1, 5, 2), 2.0)])
    assert joined.shape == (3, 5, 4) and joined[2, :, :2].eq(2).all() and joined[2, :, 2:].eq(0).all()
