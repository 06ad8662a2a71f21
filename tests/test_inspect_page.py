"""The inspect page as a browser shows it: Chromium renders it once per page, and the tests read its DOM.

Screenshots are kept under out/test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from PIL import Image
from transformers import AutoTokenizer

from tests.browser import chromium, parse, render
from tests.inspect_fixtures import HOSTILE_ID, HOSTILE_REPLY, IMG_ONERROR, SCRIPT, inspect_data
from vlmdata.inspect import inspect
from vlmdata.shards import load_shards

ARTIFACTS = Path(__file__).resolve().parents[1] / "out" / "test-artifacts"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHARD_IDS = ["relative-path", HOSTILE_ID, "conversations.jsonl:4", "text-only"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    chromium()  # before the data is built: without a browser there is nothing to test here
    return inspect_data(tmp_path_factory)


@pytest.fixture(scope="module")
def shard_page(data, tmp_path_factory):
    """The shard page for SHARD_IDS as Chromium built it: (the DOM tree, the raw DOM)."""
    page = tmp_path_factory.mktemp("page") / "shards.html"
    inspect(data.shards, html=page, ids=SHARD_IDS)
    screenshot = ARTIFACTS / "inspect-shards.png"
    dom = render(page, screenshot)
    print(f"screenshot of the shard page: {screenshot}")
    return parse(dom), dom


@pytest.fixture(scope="module")
def normalised_page(data, tmp_path_factory):
    page = tmp_path_factory.mktemp("page") / "normalised.html"
    inspect(data.normalised, html=page, n=5, seed=3)
    screenshot = ARTIFACTS / "inspect-normalised.png"
    dom = render(page, screenshot)
    print(f"screenshot of the normalised page: {screenshot}")
    return parse(dom)


def _trained_runs(input_ids: list[int], labels: list[int]) -> list[list[int]]:
    runs, current = [], []
    for token, label in zip(input_ids, labels):
        if label != -100:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def _cards_by_id(tree) -> dict:
    return {card.attrs["data-id"]: card for card in tree.find_all("article", "card")}


def test_one_card_per_requested_row_in_order(shard_page):
    tree, _ = shard_page
    assert [card.attrs["data-id"] for card in tree.find_all("article", "card")] == SHARD_IDS


def test_highlighted_text_is_the_decoded_trained_tokens(data, shard_page):
    tree, _ = shard_page
    tokenizer = AutoTokenizer.from_pretrained(str(data.shards / "processor"))
    rows = {row["id"]: row for row in load_shards(data.shards)}
    for row_id, card in _cards_by_id(tree).items():
        row = rows[row_id]
        runs = _trained_runs(row["input_ids"].tolist(), row["labels"].tolist())
        expected = [tokenizer.decode(run, skip_special_tokens=False) for run in runs]
        assert [span.text() for span in card.find_all("span", "trained")] == expected, row_id
        assert card.find_all("span", "masked"), row_id


def test_media_runs_are_one_chip_per_image_beside_thumbnails(data, shard_page):
    tree, _ = shard_page
    images = {row["id"]: len(row["images"]) for row in datasets.load_from_disk(str(data.normalised))}
    for row_id, card in _cards_by_id(tree).items():
        chips = [chip.text() for chip in card.find_all("span", "chip")]
        assert len(chips) == images[row_id], row_id
        assert all(chip.startswith("[") and chip.endswith(" image tokens]") for chip in chips), chips
        thumbnails = card.find_all("img")
        assert len(thumbnails) == images[row_id]
        assert all(img.attrs["src"].startswith("data:image/") for img in thumbnails)


def test_markup_in_the_data_is_shown_as_text_and_never_runs(shard_page):
    tree, dom = shard_page
    body = tree.find_all("body")[0]
    assert "data-pwned" not in body.attrs
    assert not tree.find_all("script")
    assert all("onerror" not in img.attrs for img in tree.find_all("img"))
    card = _cards_by_id(tree)[HOSTILE_ID]
    assert card.find_all("h2")[0].text() == HOSTILE_ID
    assert SCRIPT in card.text() and IMG_ONERROR in card.text()
    assert HOSTILE_REPLY in "".join(span.text() for span in card.find_all("span", "trained"))
    assert "<script>" not in dom.split("<body", 1)[1]


def test_the_page_loads_nothing_from_outside(shard_page):
    tree, _ = shard_page
    assert not tree.find_all("link") and not tree.find_all("iframe")
    assert all(img.attrs["src"].startswith("data:") for img in tree.find_all("img"))
    chart = tree.find_all("svg", "chart")
    assert chart and chart[-1].find_all("rect", "bar")  # the token-length histogram


def test_a_normalised_page_has_the_conversation_and_images(data, normalised_page):
    cards = normalised_page.find_all("article", "card")
    assert len(cards) == 5
    rows = {row["id"]: row for row in datasets.load_from_disk(str(data.normalised))}
    for card in cards:
        row = rows[card.attrs["data-id"]]
        roles = [message.attrs["data-role"] for message in card.find_all("div", "message")]
        assert roles == [message["role"] for message in row["messages"]]
        assert len(card.find_all("img")) == len(row["images"])
        assert not card.find_all("span", "trained")


def test_the_screenshots_are_png_images_of_the_window(shard_page, normalised_page):
    for name in ("inspect-shards.png", "inspect-normalised.png"):
        screenshot = ARTIFACTS / name
        assert screenshot.read_bytes().startswith(PNG_SIGNATURE), name
        with Image.open(screenshot) as image:
            assert image.size == (1280, 2400)  # render's window size
            assert image.convert("L").getextrema()[0] < 200, name  # something was drawn, not a blank page


def test_the_header_shows_the_statistics_tokenize_recorded(data, shard_page):
    tree, _ = shard_page
    (header,) = tree.find_all("header")
    table = header.find_all("table", "stats")[0]
    shown = {cells[0].text(): cells[1].text() for cells in (row.find_all("td") for row in table.find_all("tr"))}
    summary = json.loads((data.shards / "vlmdata.json").read_text())["summary"]
    percentiles = "/".join(str(summary["length_percentiles"][name]) for name in ("p50", "p90", "p99", "max"))
    assert shown["rows"] == str(summary["rows_written"])
    assert shown["tokens"] == str(summary["tokens"])
    assert shown["length p50/p90/p99/max"] == percentiles
    assert shown["trained tokens"] == f"{summary['trained_tokens']} ({summary['trained_fraction']:.1%})"
    assert shown["images"] == str(summary["images"])
    assert shown["model"].endswith("(gemma3, template gemma3)")
    assert shown["rows rejected"] == str(sum(summary["rejects_by_reason"].values()))
