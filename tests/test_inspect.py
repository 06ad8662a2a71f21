"""`vlmdata inspect`: it tells the three kinds of path apart, and its figures equal those of the data itself."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageFile

from tests.browser import parse
from tests.inspect_fixtures import HOSTILE_ID, inspect_data
from vlmdata.cli import cli
from vlmdata.errors import FatalError
from vlmdata.inspect import detect, inspect
from vlmdata.inspect.samples import choose


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return inspect_data(tmp_path_factory)


def _metadata(folder: Path) -> dict:
    return json.loads((folder / "vlmdata.json").read_text())


def _cards(page: Path) -> list:
    return parse(page.read_text(encoding="utf-8")).find_all("article", "card")


def test_each_kind_of_path_is_recognised(data, tmp_path):
    assert detect(data.normalised).kind == "normalised"
    assert detect(data.shards).kind == "shards"
    assert detect(data.shards / "rejects.jsonl").kind == "rejects"
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(FatalError, match="not a rejects file"):
        detect(tmp_path / "notes.txt")
    with pytest.raises(FatalError, match="is not a normalised dataset, token shards"):
        detect(tmp_path)


def test_normalised_statistics_equal_the_dataset(data):
    statistics = inspect(data.normalised).statistics
    rows = datasets.load_from_disk(str(data.normalised))
    sizes = [image.size for row in rows for image in row["images"]]
    assert statistics.rows == len(rows)
    assert statistics.media.images_per_row == Counter(len(row["images"]) for row in rows)
    assert statistics.media.audios_per_row == Counter(len(row["audios"]) for row in rows)
    assert statistics.media.image_sizes == Counter(sizes)
    by_area = sorted(sizes, key=lambda size: (size[0] * size[1], size))
    assert statistics.media.size_range()["min"] == by_area[0]
    assert statistics.media.size_range()["max"] == by_area[-1]
    assert statistics.media.size_range()["median"] == by_area[(len(by_area) - 1) // 2]  # the lower one when even
    assert statistics.rejects_by_reason == Counter({"normalise: the conversation has no assistant message": 1})


def test_shard_statistics_equal_what_tokenize_reported(data):
    statistics = inspect(data.shards).statistics
    summary = _metadata(data.shards)["summary"]
    assert statistics.rows == summary["rows_written"]
    assert statistics.tokens == summary["tokens"]
    assert statistics.trained_tokens == summary["trained_tokens"]
    assert statistics.length_percentiles() == summary["length_percentiles"]
    assert dict(statistics.rejects_by_reason) == summary["rejects_by_reason"]
    # The images are counted in the input data, on the rows that made it into the shards.
    assert statistics.media.images == summary["images"]
    assert sum(statistics.media.images_per_row.values()) == summary["rows_written"]


def test_the_statistics_pass_decodes_no_image(data, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(Image.Image, "load", refuse)
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    statistics = inspect(data.normalised).statistics
    assert statistics.media.images > 0 and statistics.media.unreadable_images == 0


def test_rejects_file_statistics(data):
    statistics = inspect(data.shards / "rejects.jsonl").statistics
    assert statistics.rows == 1
    assert list(statistics.rejects_by_reason) == ["media: an audio part, but this model family takes no audio"]


def test_cli_summary_of_shards(data):
    result = CliRunner().invoke(cli, ["inspect", str(data.shards), "--quiet"])
    assert result.exit_code == 0, result.output
    summary = _metadata(data.shards)["summary"]
    percentiles = summary["length_percentiles"]
    assert f"Inspected the token shards {data.shards}" in result.output
    assert f"(gemma3, template gemma3)" in result.output
    shown = "/".join(str(percentiles[name]) for name in ("p50", "p90", "p99", "max"))
    assert f"length p50/p90/p99/max  {shown}" in result.output
    assert f"trained tokens          {summary['trained_tokens']} ({summary['trained_fraction']:.1%})" in result.output
    assert "images per row:" in result.output
    assert "1  media: an audio part, but this model family takes no audio" in result.output


def test_cli_summary_of_a_normalised_dataset_and_of_a_rejects_file(data):
    result = CliRunner().invoke(cli, ["inspect", str(data.normalised), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "image sizes" in result.output and "audio clips per row:" in result.output
    result = CliRunner().invoke(cli, ["inspect", str(data.normalised / "rejects.jsonl"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Inspected the rejects file" in result.output
    assert "1  normalise: the conversation has no assistant message" in result.output


def test_cli_errors_are_one_sentence(data, tmp_path):
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path), "--quiet"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and len(result.output.strip().splitlines()) == 1
    page = tmp_path / "page.html"
    arguments = ["inspect", str(data.shards), "--html", str(page), "--ids", "no-such-row", "--quiet"]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 1
    assert "error: No row has the id 'no-such-row'." in result.output


def test_the_page_shows_the_drawn_rows_or_the_ids_asked_for(data, tmp_path):
    rows = datasets.load_from_disk(str(data.normalised))
    result = inspect(data.normalised, html=tmp_path / "drawn.html", n=3, seed=7)
    expected = [rows[position]["id"] for position in choose(len(rows), 3, 7)]
    assert [card.attrs["data-id"] for card in _cards(result.page)] == expected
    again = inspect(data.normalised, html=tmp_path / "again.html", n=3, seed=7)
    assert again.page.read_text() == result.page.read_text()

    wanted = ["text-only", HOSTILE_ID, "relative-path"]
    result = inspect(data.shards, html=tmp_path / "chosen.html", ids=wanted)
    assert [card.attrs["data-id"] for card in _cards(result.page)] == wanted


def test_a_rejects_page_has_a_card_per_reject(data, tmp_path):
    result = inspect(data.normalised / "rejects.jsonl", html=tmp_path / "rejects.html")
    (card,) = _cards(result.page)
    assert card.attrs["data-id"] == "unanswered"
    assert "the conversation has no assistant message" in card.text()


def test_shards_whose_input_data_is_gone_still_inspect(data, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(data.shards, shards)
    metadata = _metadata(shards)
    metadata["arguments"]["data"] = str(tmp_path / "moved-away")
    (shards / "vlmdata.json").write_text(json.dumps(metadata))
    result = inspect(shards, html=tmp_path / "page.html", n=2)
    assert result.statistics.media is None
    assert "not found" in result.statistics.media_note
    cards = _cards(result.page)
    assert len(cards) == 2
    assert all(not card.find_all("img") and "images not shown" in card.text() for card in cards)
    assert np.isclose(result.statistics.trained_fraction, metadata["summary"]["trained_fraction"], atol=1e-6)


def test_cli_writes_a_page_of_the_rows_drawn_with_n_and_seed(data, tmp_path):
    page = tmp_path / "page.html"
    arguments = ["inspect", str(data.shards), "--html", str(page), "--n", "2", "--seed", "1", "--quiet"]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 0, result.output
    assert f"HTML preview of 2 rows -> {page}" in result.output
    ids = datasets.load_from_disk(str(data.shards))["id"]
    assert [card.attrs["data-id"] for card in _cards(page)] == [ids[position] for position in choose(len(ids), 2, 1)]


def test_a_dataset_without_media_columns_counts_no_media_and_draws_no_media_histogram(tmp_path):
    from vlmdata.inspect.report import histograms, summary_rows

    reply = {"role": "assistant", "content": [{"type": "text", "text": "Hi."}]}
    rows = [{"messages": [{"role": "user", "content": [{"type": "text", "text": "Hello?"}]}, reply],
             "id": f"row-{number}", "source": "made elsewhere"} for number in range(3)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "data"))

    result = inspect(tmp_path / "data", html=tmp_path / "page.html")

    statistics = result.statistics
    assert statistics.rows == 3
    assert statistics.media.per_row == {"image": Counter({0: 3}), "video": Counter({0: 3}), "audio": Counter({0: 3})}
    assert [pair for pair in summary_rows(statistics) if pair[0] in ("images", "audio clips")] == [
        ("images", "0"), ("audio clips", "0")]
    assert histograms(statistics) == []
    for card in _cards(result.page):
        details = dict(zip((dt.text() for dt in card.find_all("dt")), (dd.text() for dd in card.find_all("dd"))))
        assert (details["images"], details["audio clips"]) == ("0", "0")
        assert not card.find_all("img")
