"""Packed batches give every sample exactly what it gets alone: logits, summed loss and LoRA gradients.

Each family's tiny model (its constant-initialised weights randomised, so that a leak cannot hide behind a zero
gate) runs its real shard rows one by one and packed, in float32. The negative controls at the end break one
part of the packing contract each and must make the comparison fail.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForImageTextToText

from tests.tokenize_fixtures import FAMILIES, normalised, tiny_model
from vlmdata.cli import cli
from vlmdata.errors import FatalError
from vlmdata.labels import IGNORE_INDEX
from vlmdata.pack_plan import PackOptions, plan_packs
from vlmdata.shards import load_shards, read_layout
from vlmdata.tokenize import tokenize
from vlmdata.train.collator import PixelDecoding, ShardCollator
from vlmdata.train.model import DEFAULT_LORA_TARGETS
from vlmdata.train import packed_attention
from vlmdata.train.packed_attention import SDPA_PACKED, sample_spans, use_packed_attention
from vlmdata.train.packing import REFUSED, check_packable, llama4_pack_limit, packing_collator, packing_refusal

PACKED = [alias for alias in FAMILIES if packing_refusal(alias, 4096) is None]
TOLERANCE = 1e-5
# What a leak between samples does to the logits of the tiny models: far above float32 rounding.
LEAK = 1e-3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return normalised(tmp_path_factory.mktemp("packing"))


@pytest.fixture(scope="module")
def shards(data_dir, tmp_path_factory):
    made = {}

    def make(alias: str, train_on: str = "assistant"):
        if (alias, train_on) not in made:
            out = tmp_path_factory.mktemp(f"shards-{alias}-{train_on}") / "shards"
            tokenize(data_dir, out, model=str(tiny_model(alias)), train_on=train_on, progress=False)
            made[alias, train_on] = out
        return made[alias, train_on]

    return make


def _model(alias: str, **kwargs):
    return AutoModelForImageTextToText.from_pretrained(tiny_model(alias), dtype=torch.float32, **kwargs).eval()


def _packing(model, layout, alias: str):
    """The packing collator training uses, pixel codes decoded on the model's side as in training."""
    model.register_forward_pre_hook(PixelDecoding(layout, torch.float32), with_kwargs=True)
    return packing_collator(layout, 0, model, alias)


def _rows(shards_dir):
    return list(load_shards(shards_dir)), read_layout(shards_dir)


def _alone(model, layout, rows) -> list[dict]:
    """Each row's batch of one, as the ordinary collator makes it."""
    return [ShardCollator(layout, pad_token_id=0, float_dtype=torch.float32)([row]) for row in rows]


def _logits(model, batch) -> torch.Tensor:
    inputs = {name: value for name, value in batch.items() if name != "labels"}
    return model(**inputs).logits


def _summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                             ignore_index=IGNORE_INDEX, reduction="sum")


def _packed_rows_logits(logits: torch.Tensor, packs: list[list[int]], lengths: list[int]) -> dict[int, torch.Tensor]:
    """The logits of each row, cut out of the packed batch."""
    out = {}
    for index, pack in enumerate(packs):
        start = 0
        for row in pack:
            out[row] = logits[index, start:start + lengths[row]]
            start += lengths[row]
    return out


def _worst_difference(model, layout, rows, packs, collate) -> float:
    with torch.no_grad():
        alone = [_logits(model, batch)[0] for batch in _alone(model, layout, rows)]
        packed = _packed_rows_logits(_logits(model, collate([[rows[row] for row in pack] for pack in packs])),
                                     packs, [len(row["input_ids"]) for row in rows])
    return max((packed[row] - alone[row]).abs().max().item() for row in range(len(rows)))


# One pack of every row, and two packs of different lengths in one batch (the shorter padded).
# sdpa_packed (--attn-implementation sdpa_packed) takes each sample's block of the mask that sdpa takes whole.
@pytest.mark.parametrize("attention", ["sdpa", SDPA_PACKED])
@pytest.mark.parametrize("packs", [[[0, 1, 2]], [[2, 0], [1]]], ids=["one-pack", "two-packs"])
@pytest.mark.parametrize("alias", PACKED)
def test_packed_logits_equal_each_sample_alone(alias, packs, attention, shards):
    rows, layout = _rows(shards(alias))
    model = _model(alias)
    assert attention == "sdpa" or use_packed_attention(model)
    collate = _packing(model, layout, alias)

    assert _worst_difference(model, layout, rows, packs, collate) < TOLERANCE


def test_sample_spans_start_at_each_restart_and_keep_trailing_padding_together():
    assert sample_spans(torch.tensor([0, 1, 2, 0, 1, 0, 0, 0])) == [(0, 3), (3, 5), (5, 8)]
    assert sample_spans(torch.tensor([0, 1, 2, 3])) == [(0, 4)]


def _attention_lengths(model, batch, monkeypatch) -> list[int]:
    """The query lengths sdpa_packed hands to sdpa, layer after layer, in one forward."""
    seen, real = [], packed_attention.sdpa_attention_forward

    def recording(module, query, *args, **kwargs):
        seen.append(query.shape[2])
        return real(module, query, *args, **kwargs)

    monkeypatch.setattr(packed_attention, "sdpa_attention_forward", recording)
    with torch.no_grad():
        _logits(model, batch)
    return seen


def test_sdpa_packed_runs_sdpa_on_each_samples_block_alone(shards, monkeypatch):
    rows, layout = _rows(shards("qwen2_vl"))
    model = _model("qwen2_vl")
    assert use_packed_attention(model)
    batch = _packing(model, layout, "qwen2_vl")([rows])
    layers = model.config.get_text_config().num_hidden_layers

    assert _attention_lengths(model, batch, monkeypatch) == [len(row["input_ids"]) for row in rows] * layers
    # A mask that lets samples see each other is taken whole (the negative control below shows the leak).
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    assert _attention_lengths(model, batch, monkeypatch) == [batch["input_ids"].shape[1]] * layers
    # Only a language model that attends with sdpa takes it; the vision side keeps its own.
    assert model.config.vision_config._attn_implementation == "sdpa"
    assert not use_packed_attention(_model("qwen2_vl", attn_implementation="eager"))


def test_gemma3_with_eager_attention_takes_additive_masks_and_stays_exact(shards):
    rows, layout = _rows(shards("gemma3"))
    model = _model("gemma3", attn_implementation="eager")
    collate = _packing(model, layout, "gemma3")

    assert collate.layer_masks.additive_dtype == torch.float32
    assert _worst_difference(model, layout, rows, [[0, 1, 2]], collate) < TOLERANCE


@pytest.mark.parametrize("alias", PACKED)
def test_summed_loss_and_lora_gradients_equal_the_samples_alone(alias, shards):
    rows, layout = _rows(shards(alias))
    torch.manual_seed(0)
    # Random A and B (peft's default B is zero, which would leave A's gradient zero and untested).
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=DEFAULT_LORA_TARGETS, init_lora_weights=False)
    base = _model(alias)
    assert use_packed_attention(base)
    model = get_peft_model(base, config)
    lora = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    collate = _packing(model, layout, alias)

    alone_loss = sum(_summed_loss(_logits(model, batch), batch["labels"]) for batch in _alone(model, layout, rows))
    alone_loss.backward()
    alone_grads = {name: parameter.grad.clone() for name, parameter in lora.items()}
    model.zero_grad()
    batch = collate([rows])
    packed_loss = _summed_loss(_logits(model, batch), batch["labels"])
    packed_loss.backward()

    assert packed_loss.item() == pytest.approx(alone_loss.item(), rel=TOLERANCE)
    assert any(grad.abs().sum() > 0 for grad in alone_grads.values())
    for name, parameter in lora.items():
        # Sums over a few hundred tokens in another order: float32 rounding relative to the gradient's scale.
        scale = alone_grads[name].abs().max().item()
        torch.testing.assert_close(parameter.grad, alone_grads[name], rtol=1e-4, atol=1e-4 * scale + 1e-9, msg=name)


def test_a_packed_batch_restarts_positions_masks_first_labels_and_pads_at_position_zero(shards):
    rows, layout = _rows(shards("llava"))
    lengths = [len(row["input_ids"]) for row in rows]
    batch = _packing(_model("llava"), layout, "llava")([[rows[0], rows[2]], [rows[1]]])

    assert "attention_mask" not in batch and batch["use_cache"] is False
    first, second = lengths[0], lengths[0] + lengths[2]
    assert batch["position_ids"][0].tolist() == list(range(lengths[0])) + list(range(lengths[2]))
    assert batch["position_ids"][1].tolist() == list(range(lengths[1])) + [0] * (second - lengths[1])
    assert batch["labels"][0, 0] == IGNORE_INDEX and batch["labels"][0, first] == IGNORE_INDEX
    assert (batch["labels"][1, lengths[1]:] == IGNORE_INDEX).all()
    assert torch.equal(batch["input_ids"][0, first:second], torch.as_tensor(rows[2]["input_ids"], dtype=torch.long))
    # The three images (one in the first row, two in the second) reach the model, pack by pack.
    assert batch["pixel_values"].shape[0] == 3


# Negative controls: each breaks one part of the contract, and the comparison must then fail.


@pytest.mark.parametrize("alias", ["gemma3", "qwen2_vl", "llava"])
def test_control_an_all_ones_attention_mask_lets_samples_attend_to_each_other(alias, shards):
    rows, layout = _rows(shards(alias))
    model = _model(alias)
    use_packed_attention(model)  # which then takes the whole product: the mask lets every sample see the others
    collate = _packing(model, layout, alias)

    def all_ones(packs):
        batch = collate(packs)
        batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        return batch

    assert _worst_difference(model, layout, rows, [[0, 1, 2]], all_ones) > LEAK


@pytest.mark.parametrize("alias", ["llava", "qwen2_vl"])
def test_control_use_cache_true_turns_off_the_separation(alias, shards):
    rows, layout = _rows(shards(alias))
    model = _model(alias)
    collate = _packing(model, layout, alias)

    def with_cache(packs):
        return {**collate(packs), "use_cache": True}

    assert _worst_difference(model, layout, rows, [[0, 1, 2]], with_cache) > LEAK


@pytest.mark.parametrize("alias", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_control_three_mrope_rows_without_the_text_row_do_not_isolate_samples(alias, shards):
    rows, layout = _rows(shards(alias))
    model = _model(alias)
    collate = _packing(model, layout, alias)

    def three_rows(packs):
        batch = collate(packs)
        batch["position_ids"] = batch["position_ids"][1:]
        return batch

    assert _worst_difference(model, layout, rows, [[0, 1, 2]], three_rows) > LEAK


def test_control_gemma3_positions_alone_let_an_image_block_spill_into_the_next_sample(shards):
    rows, layout = _rows(shards("gemma3"))
    model = _model("gemma3")
    collate = _packing(model, layout, "gemma3")

    def positions_only(packs):
        batch = collate(packs)
        del batch["attention_mask"]
        return batch

    assert _worst_difference(model, layout, rows, [[0, 1, 2]], positions_only) > LEAK


def test_control_labels_concatenated_without_masking_first_labels_train_across_samples(shards):
    # Trained on every token, each row's first label is its first token: left unmasked in a pack, it would be
    # predicted from the previous sample's last token.
    rows, layout = _rows(shards("gemma3", train_on="all"))
    model = _model("gemma3")
    collate = _packing(model, layout, "gemma3")
    with torch.no_grad():
        alone = sum(_summed_loss(_logits(model, batch), batch["labels"]) for batch in _alone(model, layout, rows))
        batch = collate([rows])
        careless = torch.cat([torch.as_tensor(row["labels"], dtype=torch.long) for row in rows])[None]
        careless_loss = _summed_loss(_logits(model, batch), careless)
        packed_loss = _summed_loss(_logits(model, batch), batch["labels"])

    assert packed_loss.item() == pytest.approx(alone.item(), rel=TOLERANCE)
    assert careless_loss.item() != pytest.approx(alone.item(), rel=1e-3)


def test_control_llama4_beyond_its_limit_scales_later_samples_differently(shards):
    rows, layout = _rows(shards("llama4"))
    # The same tiny model with a short floor scale, so that a short pack crosses it.
    model = _model("llama4", text_config={**AutoConfig.from_pretrained(tiny_model("llama4")).text_config.to_dict(),
                                          "floor_scale": 64, "attn_scale": 1.0})
    limit = llama4_pack_limit(model.config)
    collate = _packing(model, layout, "llama4")
    lengths = [len(row["input_ids"]) for row in rows]

    assert limit == 63 and sum(lengths) > limit
    assert _worst_difference(model, layout, rows, [[0, 1, 2]], collate) > LEAK
    with pytest.raises(FatalError, match="Llama 4 packs exactly only up to 63 tokens"):
        check_packable("llama4", sum(lengths), model.config)


def test_control_lfm2_vl_convolutions_reach_into_the_sample_before(shards):
    # Why LFM2-VL is refused: its conv layers mix each token with the kernel width - 1 tokens before it, and at a
    # sample's start those belong to the sample before. A window of ones makes the leak plain.
    rows, layout = _rows(shards("lfm2_vl"))
    model = _model("lfm2_vl")
    conv = model.model.language_model.layers[0].conv.conv
    with torch.no_grad():
        conv.weight.fill_(1.0)
    collate = _packing(model, layout, "lfm2_vl")
    lengths = [len(row["input_ids"]) for row in rows]
    with torch.no_grad():
        alone = [_logits(model, batch)[0] for batch in _alone(model, layout, rows)]
        packed = _packed_rows_logits(_logits(model, collate([rows])), [list(range(len(rows)))], lengths)
    assert (packed[0] - alone[0]).abs().max() < TOLERANCE  # the first sample has nothing before it
    reach = conv.kernel_size[0] - 1
    for row in range(1, len(rows)):
        assert (packed[row][:reach] - alone[row][:reach]).abs().max() > LEAK, row


# Refusals and the command line.


@pytest.mark.parametrize("alias", sorted(REFUSED))
def test_families_that_cannot_pack_exactly_are_refused_in_one_sentence(alias, shards, tmp_path):
    result = CliRunner().invoke(cli, ["train", str(shards(alias)), "-o", str(tmp_path / "out"), "--packing", "--quiet"])

    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "train it without --packing" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("alias, attention", [("gemma3", "sdpa"), ("qwen2_vl", "sdpa"), ("qwen2_vl", SDPA_PACKED)])
def test_one_epoch_packed_and_unpacked_give_the_same_token_weighted_loss(alias, attention, shards, tmp_path):
    def epoch(*extra):
        out = tmp_path / ("packed" if extra else "unpacked")
        result = CliRunner().invoke(cli, ["train", str(shards(alias)), "-o", str(out), "--learning-rate", "0",
                                          "--lora-dropout", "0", "--epochs", "1", "--logging-steps", "1", "--quiet",
                                          *extra])
        assert result.exit_code == 0, result.output
        records = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
        return records, json.loads((out / "metrics.json").read_text()), result.output

    unpacked, _, _ = epoch()
    packed, metrics, output = epoch("--packing", "--pack-length", "256", "--attn-implementation", attention)
    trained = [sum(record["trained_tokens"] for record in records) for records in (unpacked, packed)]
    mean = [sum(record["loss"] * record["trained_tokens"] for record in records) / total
            for records, total in zip((unpacked, packed), trained)]

    labels = sum(int((torch.as_tensor(row["labels"][1:]) != IGNORE_INDEX).sum()) for row in load_shards(shards(alias)))
    assert trained == [labels, labels]
    assert len(packed) < len(unpacked)
    assert mean[1] == pytest.approx(mean[0], rel=1e-5)
    assert metrics["packing_length"] == 256 and metrics["packing_packs"] == len(packed)
    assert 0 < metrics["packing_fill_ratio"] <= 1 and metrics["packing_padding_fraction"] == 0.0
    assert metrics["packing_attention"] == attention
    assert "packing" in output and "samples each" in output


def test_inspect_shows_the_plan_training_would_make(shards, data_dir, tmp_path):
    result = CliRunner().invoke(cli, ["inspect", str(shards("gemma3")), "--pack-length", "120", "--seed", "42", "--quiet"])
    assert result.exit_code == 0, result.output
    lengths = [len(row["input_ids"]) for row in load_shards(shards("gemma3"))]
    plan = plan_packs(np.array(lengths), PackOptions(pack_length=120), seed=42)
    assert f"{len(plan.packs)} packs for 3 rows" in result.output
    assert f"fill ratio {plan.fill_ratio:.1%}" in result.output

    train = CliRunner().invoke(cli, ["train", str(shards("gemma3")), "-o", str(tmp_path / "out"), "--packing",
                                     "--pack-length", "120", "--max-steps", "1", "--quiet"])
    assert train.exit_code == 0, train.output
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["packing_packs"] == len(plan.packs)

    refused = CliRunner().invoke(cli, ["inspect", str(shards("mllama")), "--pack-length", "4096", "--quiet"])
    assert "note: Mllama's cross-attention" in refused.output
    normalised_data = CliRunner().invoke(cli, ["inspect", str(data_dir), "--pack-length", "4096", "--quiet"])
    assert normalised_data.exit_code == 1 and "--pack-length needs token shards" in normalised_data.output


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="flash-attn is installed here")
def test_flash_attention_without_flash_attn_is_one_sentence_before_the_output_is_touched(shards, tmp_path):
    result = CliRunner().invoke(cli, ["train", str(shards("qwen2_vl")), "-o", str(tmp_path / "out"), "--packing",
                                      "--attn-implementation", "flash_attention_2", "--quiet"])
    assert result.exit_code == 1 and "pip install flash-attn" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_gemma3_packing_refuses_flash_attention_in_one_sentence(shards):
    rows, layout = _rows(shards("gemma3"))
    model = _model("gemma3")
    model.config.get_text_config()._attn_implementation = "flash_attention_2"
    with pytest.raises(FatalError, match="Gemma 3 packs with sdpa, eager or flex attention"):
        packing_collator(layout, 0, model, "gemma3")


def test_glm4v_packs_video_rows_apart_from_image_rows_and_each_stays_exact(tmp_path):
    import datasets
    from PIL import Image

    from tests.test_video_tokenize import IMAGE_PART, png, text, video_rows
    from vlmdata.schema import NORMALISED_FEATURES
    from vlmdata.train.packing import plan_rows

    still = {"messages": [{"role": "user", "content": [IMAGE_PART, text("What is it?")]},
                          {"role": "assistant", "content": [text("A green card.")]}],
             "images": [png(Image.new("RGB", (64, 48), (30, 160, 40)))], "videos": [], "audios": [], "id": "still",
             "source": "made"}
    data = tmp_path / "normalised"
    datasets.Dataset.from_list(video_rows() + [still, {**still, "id": "still-2"}],
                               features=NORMALISED_FEATURES).save_to_disk(str(data))
    shards_dir = tmp_path / "shards"
    tokenize(data, shards_dir, model=str(tiny_model("glm4v")), progress=False)
    rows, layout = _rows(shards_dir)
    has_video = [len(row["pixel_values_videos"]) > 0 for row in rows]
    assert any(has_video) and not all(has_video)

    plan = plan_rows(datasets.load_from_disk(str(shards_dir)), PackOptions(pack_length=4096), 0, None, "glm4v")
    assert sorted(len(pack) for pack in plan.packs) == sorted([has_video.count(True), has_video.count(False)])
    assert all(len({has_video[row] for row in pack}) == 1 for pack in plan.packs)
    model = _model("glm4v")
    collate = _packing(model, layout, "glm4v")
    for pack in plan.packs:  # a batch of one pack: a batch holding both images and videos fails the same way
        chosen = [rows[row] for row in pack]
        assert _worst_difference(model, layout, chosen, [list(range(len(pack)))], collate) < TOLERANCE


def test_smolvlm_packs_video_rows_with_still_images_and_each_stays_exact(tmp_path):
    import datasets
    from PIL import Image

    from tests.test_video_tokenize import IMAGE_PART, VIDEO_PART, moving_frames, png, stored_video, text, video_rows
    from vlmdata.schema import NORMALISED_FEATURES

    # A video row and a still image row share one pixel_values; a row of two videos of different lengths pads
    # the shorter one with an empty frame, which the model drops wherever the row sits in the pack.
    still = {"messages": [{"role": "user", "content": [IMAGE_PART, text("What is it?")]},
                          {"role": "assistant", "content": [text("A green card.")]}],
             "images": [png(Image.new("RGB", (64, 48), (30, 160, 40)))], "videos": [], "audios": [], "id": "still",
             "source": "made"}
    two_videos = {**still, "id": "two-videos", "images": [],
                  "messages": [{"role": "user", "content": [VIDEO_PART, VIDEO_PART, text("Both?")]},
                               {"role": "assistant", "content": [text("Yes.")]}],
                  "videos": [stored_video(moving_frames(4)), stored_video(moving_frames(3))]}
    rows = [row for row in video_rows() if row["id"] != "image-and-video"] + [still, two_videos]
    data = tmp_path / "normalised"
    datasets.Dataset.from_list(rows, features=NORMALISED_FEATURES).save_to_disk(str(data))
    shards_dir = tmp_path / "shards"
    tokenize(data, shards_dir, model=str(tiny_model("smolvlm")), progress=False)
    rows, layout = _rows(shards_dir)
    assert len(rows) == 5
    model = _model("smolvlm")
    collate = _packing(model, layout, "smolvlm")
    for packs in ([[0, 1, 2, 3, 4]], [[4, 3], [0, 2, 1]]):
        assert _worst_difference(model, layout, rows, packs, collate) < TOLERANCE


def test_the_media_budget_counts_each_rows_media_tokens_from_its_input_ids(shards):
    import datasets
    from transformers import AutoProcessor

    from vlmdata.models.registry import get_family
    from vlmdata.train.packing import plan_rows

    processor = AutoProcessor.from_pretrained(tiny_model("gemma3"))
    rows = datasets.load_from_disk(str(shards("gemma3")))
    media_ids = {processor.tokenizer.convert_tokens_to_ids(token) for token in get_family("gemma3").media_tokens}
    media = [int(np.isin(row["input_ids"], sorted(media_ids)).sum()) for row in rows]
    assert sorted(media)[0] == 0 and sorted(media)[-1] > sorted(media)[1] > 0  # text-only, one image, two images

    budget = max(media)  # the two image rows cannot share a pack, the text row can join either
    plan = plan_rows(rows, PackOptions(pack_length=4096, media_budget=budget), 0, processor, "gemma3")
    assert len(plan.packs) == 2 and all(sum(media[row] for row in pack) <= budget for pack in plan.packs)
    assert len(plan_rows(rows, PackOptions(pack_length=4096), 0, processor, "gemma3").packs) == 1
