"""The loss curve as a PNG, drawn with Pillow so training needs no plotting library."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

WIDTH, HEIGHT, MARGIN = 800, 450, 60
TRAIN_COLOUR, EVAL_COLOUR, AXIS_COLOUR = (31, 119, 180), (214, 39, 40), (90, 90, 90)


def plot_loss(records: list[dict], path: str | Path) -> None:
    """Draws training loss (line) and eval loss (dots) against the step.

    Args:
        records: loss log entries, each with `step` and `loss` and/or `eval_loss`.
        path: the PNG to write.
    """
    train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in records if r.get("eval_loss") is not None]
    points = train + evals
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, 15), "loss per step (line: train, dots: eval)", fill=AXIS_COLOUR)
    left, top, right, bottom = MARGIN, MARGIN - 20, WIDTH - 20, HEIGHT - MARGIN
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=AXIS_COLOUR)
    if points:
        steps = [step for step, _ in points]
        losses = [loss for _, loss in points]
        low_step, high_step = min(steps), max(max(steps), min(steps) + 1)
        # The axis spans the losses seen (plus a margin), not 0..max: late changes stay visible.
        margin = (max(losses) - min(losses)) * 0.05 or 0.05
        low, high = min(losses) - margin, max(losses) + margin

        def at(step: float, loss: float) -> tuple[float, float]:
            x = left + (step - low_step) / (high_step - low_step) * (right - left)
            y = bottom - (loss - low) / (high - low or 1.0) * (bottom - top)
            return x, y

        if len(train) > 1:
            draw.line([at(step, loss) for step, loss in train], fill=TRAIN_COLOUR, width=2)
        elif train:
            x, y = at(*train[0])
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=TRAIN_COLOUR)
        for step, loss in evals:
            x, y = at(step, loss)
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=EVAL_COLOUR)
        for value in (low, (low + high) / 2, high):
            draw.text((5, at(low_step, value)[1] - 6), f"{value:.3g}", fill=AXIS_COLOUR)
        for step in (low_step, (low_step + high_step) // 2, high_step):
            draw.text((at(step, low)[0] - 10, bottom + 8), str(int(step)), fill=AXIS_COLOUR)
    draw.text((WIDTH // 2 - 15, HEIGHT - 25), "step", fill=AXIS_COLOUR)
    image.save(path)
