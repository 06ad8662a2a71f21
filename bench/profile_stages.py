"""Profile `convert` and `tokenize` with pyinstrument and summarise where the time goes.

Each stage runs once in this process with `--num-proc 1` (so that every sample lands in one profiler) on the
benchmark workload: convert with `--image-size 512`, tokenize with the real-size gemma3 processor. The
summary lists the functions with the most time of their own, each with the vlmdata function it was called
from, so that a line in it points at the code to change. Full reports (text and HTML) are written beside the
results.

Needs pyinstrument (`.venv/bin/pip install pyinstrument`); without it the script says so and writes nothing.

Example:
    python -m bench.profile_stages --convert-rows 200 --tokenize-rows 32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from bench.bench_tokenize import INPUT_IMAGE_SIZE, INPUT_RESIZE_MODE
from bench.build_processors import build_processors
from bench.common import BENCH_DIR, ROOT, write_results
from bench.make_workload import JSONL_NAME, make_workload, normalised_workload

PROFILES_DIR = BENCH_DIR / "profiles"
TOP = 12
# Functions below 1% of the run are noise in a summary.
MIN_SHARE = 0.01


def own_times(root) -> dict[tuple[str, str], float]:
    """Seconds of own time per (function, nearest vlmdata caller), summed over the whole call tree."""
    totals: dict[tuple[str, str], float] = defaultdict(float)

    def visit(frame, caller: str) -> None:
        path = frame.file_path or ""
        name = f"{Path(path).name}:{frame.function}" if path else frame.function
        if "/vlmdata/" in path and "/site-packages/" not in path:
            caller = f"{Path(path).relative_to(ROOT)}:{frame.function}" if Path(path).is_relative_to(ROOT) else name
        own = 0.0 if frame.is_synthetic else frame.total_self_time
        if own:
            totals[(name, caller)] += own
        for child in frame.children:
            visit(child, caller)

    visit(root, "")
    return totals


def summarise(profiler, stage: str, command: str, seconds: float) -> dict:
    session = profiler.last_session
    # Before rendering: the renderers group frames in place and add synthetic "[self]" frames.
    totals = own_times(session.root_frame())
    PROFILES_DIR.mkdir(parents=True, exist_ok=True)
    text = PROFILES_DIR / f"{stage}.txt"
    text.write_text(profiler.output_text(unicode=True, show_all=False), encoding="utf-8")
    (PROFILES_DIR / f"{stage}.html").write_text(profiler.output_html(), encoding="utf-8")
    duration = session.duration or sum(totals.values())
    top = sorted(totals.items(), key=lambda item: item[1], reverse=True)[:TOP]
    return {
        "command": command,
        "seconds": seconds,
        "report": str(text.relative_to(ROOT) if text.is_relative_to(ROOT) else text),
        "top": [{"function": name, "caller": "" if caller.endswith(name) else caller, "seconds": own,
                 "share": own / duration} for (name, caller), own in top if own / duration >= MIN_SHARE],
    }


def profile_convert(rows: int, image_size: str, scratch: Path) -> dict:
    from pyinstrument import Profiler

    from vlmdata.convert import convert
    from vlmdata.media import MediaOptions
    from vlmdata.media.options import Resize

    workload = make_workload(rows, quiet=True)
    profiler = Profiler(interval=0.002)
    started = time.perf_counter()
    profiler.start()
    convert([str(workload / JSONL_NAME)], scratch / "normalised", format="jsonl",
            media_options=MediaOptions(resize=Resize.parse(image_size)), overwrite=True, progress=False)
    profiler.stop()
    command = f"vlmdata convert ({rows} rows) --image-size {image_size}"
    return summarise(profiler, "convert", command, time.perf_counter() - started)


def profile_tokenize(rows: int, scratch: Path) -> dict:
    from pyinstrument import Profiler

    from vlmdata.tokenize import tokenize

    model = build_processors(("gemma3",))["gemma3"]
    data = normalised_workload(rows, INPUT_IMAGE_SIZE, INPUT_RESIZE_MODE)
    profiler = Profiler(interval=0.002)
    started = time.perf_counter()
    profiler.start()
    tokenize(data, scratch / "shards", model=str(model), overwrite=True, progress=False)
    profiler.stop()
    command = f"vlmdata tokenize ({rows} rows) --model gemma3 (real size)"
    return summarise(profiler, "tokenize", command, time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--convert-rows", type=int, default=200)
    parser.add_argument("--image-size", default="512")
    parser.add_argument("--tokenize-rows", type=int, default=32)
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "results" / "profile.json")
    args = parser.parse_args(argv)
    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        print("pyinstrument is not installed: .venv/bin/pip install pyinstrument", file=sys.stderr)
        return 0
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BENCH_DIR, prefix="profile-") as scratch:
        details = {"convert": profile_convert(args.convert_rows, args.image_size, Path(scratch)),
                   "tokenize": profile_tokenize(args.tokenize_rows, Path(scratch))}
    write_results(args.json, [], details)
    for stage, summary in details.items():
        print(f"{stage}: {summary['seconds']:.1f} s")
        for entry in summary["top"]:
            print(f"  {entry['seconds']:7.2f} s {entry['share']:5.0%}  {entry['function']}  <- {entry['caller']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
