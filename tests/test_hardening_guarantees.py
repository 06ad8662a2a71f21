"""docs/guarantees.md names, for each guarantee, the test that checks it: every test named there must exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_named_in_the_guarantees_exists():
    text = (ROOT / "docs" / "guarantees.md").read_text()
    named = set(re.findall(r"`(test_\w+\.py)::(test_\w+)(?:\[[^\]]*\])?`", text))
    shorthand = set(re.findall(r"`…\[([^\]]+)\]`", text))
    assert len(named) > 50

    missing = [f"{file}::{test}" for file, test in sorted(named)
               if not re.search(rf"^def {test}\(", (ROOT / "tests" / file).read_text(), re.MULTILINE)]
    assert missing == []
    rows = (ROOT / "tests" / "test_hardening_rows.py").read_text()
    assert [case for case in sorted(shorthand) if f'"{case}"' not in rows] == []
