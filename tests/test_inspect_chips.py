"""Media chips on the inspect page: one chip per image or audio clip, for every family with a tiny model.

The families differ in how a media run ends: Gemma, Qwen, Mistral, Llama 4, InternVL and LFM2-VL close it with a
token of its own, while LLaVA (and LLaVA-OneVision) repeats <image> and Mllama writes one <|image|> per image, so adjacent
images there are told apart only by their length. SmolVLM2 writes line breaks between an image's rows of crops,
which stay within its chip, closed by the <fake_token_around_image> after its global view.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
from transformers import AutoProcessor

from tests.browser import parse
from tests.tokenize_fixtures import FAMILIES, normalised, tiny_model
from vlmdata.inspect import inspect
from vlmdata.models.registry import get_family, load_template
from vlmdata.tokenize import tokenize


def _chips(page: Path, row_id: str) -> list[str]:
    (card,) = [card for card in parse(page.read_text()).find_all("article", "card") if card.attrs["data-id"] == row_id]
    return [chip.text() for chip in card.find_all("span", "chip")]


def _shards(folder: Path, alias: str, chat_template: str | None = None) -> Path:
    data = normalised(folder / "data", with_audio="audio" in get_family(alias).modalities)
    tokenize(data, folder / "shards", model=str(tiny_model(alias)), chat_template=chat_template, progress=False)
    return folder / "shards"


@pytest.mark.parametrize("alias", FAMILIES)
def test_two_images_in_one_turn_make_two_chips(alias, tmp_path):
    shards = _shards(tmp_path, alias)
    page = inspect(shards, html=tmp_path / "page.html", ids=["two-images"]).page
    images = {row["id"]: len(row["images"]) for row in datasets.load_from_disk(str(tmp_path / "data" / "normalised"))}
    chips = _chips(page, "two-images")
    assert len(chips) == images["two-images"] == 2, chips
    assert all(chip.startswith("[") and chip.endswith((" image tokens]", " image token]")) for chip in chips), chips


@pytest.mark.parametrize("alias", ["gemma3n", "gemma4"])
def test_audio_is_one_audio_chip(alias, tmp_path):
    shards = _shards(tmp_path, alias)
    page = inspect(shards, html=tmp_path / "page.html", ids=["audio", "two-images"]).page
    (chip,) = _chips(page, "audio")
    assert chip.startswith("[") and chip.endswith(" audio tokens]")
    assert all(chip.endswith(" image tokens]") for chip in _chips(page, "two-images"))


def test_llava_images_with_nothing_between_them_are_still_two_chips(tmp_path):
    # The packaged LLaVA template writes "<image>\n" per image; a user's template may leave out the newline,
    # and then the two runs of <image> touch.
    template = tmp_path / "llava-adjacent.jinja"
    template.write_text(load_template("llava").replace("'<image>\\n'", "'<image>'"))
    assert "'<image>'" in template.read_text()
    shards = _shards(tmp_path, "llava", chat_template=str(template))
    page = inspect(shards, html=tmp_path / "page.html", ids=["two-images"]).page
    chips = _chips(page, "two-images")
    assert len(chips) == 2 and chips[0] == chips[1], chips
    assert chips[0] == "[16 image tokens]"  # the tiny LLaVA's 20×20 image in 5×5 patches, CLS dropped


def test_lfm2_vl_tiled_image_is_one_chip_with_its_tile_names(tmp_path):
    # A tiled image is <|image_start|>, a tile name and <image> run per tile, <|img_thumbnail|> and its run, then
    # <|image_end|>: one chip holding every one of those tokens.
    shards = _shards(tmp_path, "lfm2_vl")
    page = inspect(shards, html=tmp_path / "page.html", ids=["two-turns"]).page
    (row,) = [row for row in datasets.load_from_disk(str(shards)) if row["id"] == "two-turns"]
    tokenizer = AutoProcessor.from_pretrained(shards / "processor").tokenizer
    vocab = tokenizer.get_vocab()
    media = {vocab[token] for token in get_family("lfm2_vl").media_tokens if token in vocab}
    tokens = sum(token in media for token in row["input_ids"])
    assert vocab["<|img_row_1_col_1|>"] in row["input_ids"] and vocab["<|img_thumbnail|>"] in row["input_ids"]
    assert _chips(page, "two-turns") == [f"[{tokens} image tokens]"]
