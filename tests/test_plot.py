"""The loss curve: a PNG whose line spans the plot, eval losses as dots."""

from __future__ import annotations

import numpy as np
from PIL import Image

from vlmdata.train.plot import EVAL_COLOUR, HEIGHT, TRAIN_COLOUR, WIDTH, plot_loss


def test_small_changes_in_loss_fill_the_plot_height(tmp_path):
    records = [{"step": step, "loss": 6.25 - 0.01 * step} for step in range(1, 11)] + [{"step": 10, "eval_loss": 6.2}]
    plot_loss(records, tmp_path / "loss.png")
    pixels = np.asarray(Image.open(tmp_path / "loss.png").convert("RGB"))
    assert pixels.shape == (HEIGHT, WIDTH, 3)
    line_rows = np.flatnonzero((pixels == TRAIN_COLOUR).all(axis=2).any(axis=1))
    assert line_rows.max() - line_rows.min() > HEIGHT / 2  # a 0.1 drop is not drawn as a flat line
    assert (pixels == EVAL_COLOUR).all(axis=2).any()
