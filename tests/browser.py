"""Rendering a page in headless Chromium and reading back the DOM it built.

`render` runs Chromium once per page, taking the DOM (`--dump-dom`, after the page has loaded and anything on it
has run) and a screenshot in the same start. `parse` turns the DOM into a small tree to query.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
VOID_ELEMENTS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def chromium() -> str:
    """The Chromium binary ($CHROMIUM, else `chromium` on the PATH, else Debian's /usr/bin/chromium).

    Without one the calling test fails when CI is set, where it must run, and is skipped elsewhere.
    """
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(found).is_file():
        message = (
            f"Chromium is needed to render the inspect page and {found} does not exist: install Debian's "
            "`chromium` (`make install` does) or set CHROMIUM to the browser's path."
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def render(page: Path, screenshot: Path, width: int = 1280, height: int = 2400) -> str:
    """Loads `page` in headless Chromium, saves a screenshot and returns the DOM after load."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        result = subprocess.run(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
             f"--screenshot={screenshot}", "--dump-dom", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 0 and "<html" in result.stdout, result.stderr[-2000:]
    return result.stdout


@dataclass
class Element:
    """One element of a parsed DOM."""

    tag: str
    attrs: dict[str, str]
    children: list = field(default_factory=list)  # Elements and strings, in document order

    def text(self) -> str:
        return "".join(child if isinstance(child, str) else child.text() for child in self.children)

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list["Element"]:
        """Every descendant with this tag and/or class, in document order."""
        found = []
        for child in self.children:
            if isinstance(child, Element):
                if (tag is None or child.tag == tag) and (cls is None or cls in child.classes()):
                    found.append(child)
                found.extend(child.find_all(tag, cls))
        return found


class _TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.stack[-1].children.append(element)
        if tag not in VOID_ELEMENTS:
            self.stack.append(element)

    def handle_endtag(self, tag):
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(dom: str) -> Element:
    """The DOM serialised by Chromium as a tree of Elements."""
    builder = _TreeBuilder()
    builder.feed(dom)
    builder.close()
    return builder.root
