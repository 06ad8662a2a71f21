"""The bundled data fixtures for reader tests, built once per test session into a temporary folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from vlmdata.readers import ReaderOptions

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_fixture_script(name: str):
    """The module of the script fixtures/<name>.py."""
    # fixtures/ is a folder of scripts, not a package: load the builder by its path.
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "fixtures" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_fixtures = load_fixture_script("make_fixtures")
_built: dict[str, Path] = {}


def build_once(tmp_path_factory) -> Path:
    """The root of a fixture tree built for this test session (images/, llava_instruct_mix/, mmiu/, jsonl/,
    sharegpt/, audio/); every test module shares the one build."""
    if "root" not in _built:
        _built["root"] = make_fixtures.build(tmp_path_factory.mktemp("fixtures") / "data")
    return _built["root"]


def read_all(reader, source, **options) -> list:
    """Every row a reader yields for `source`, with ReaderOptions built from keyword arguments."""
    return list(reader(str(source), ReaderOptions(**options)))


def hub_offline(monkeypatch) -> None:
    """Makes `datasets` and `huggingface_hub` fail at once instead of retrying an unreachable hub."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
