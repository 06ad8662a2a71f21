"""Media files named by a dataset: the media root as a sandbox, and only regular files of bounded size."""

import io
import os
import re

import pytest
from PIL import Image

from vlmdata.errors import RowError
from vlmdata.media import MediaLoader, MediaOptions
from vlmdata.media.files import stored_file_name


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (0, 90, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def layout(tmp_path):
    """A media root holding cat.png, and a secret file beside it that the dataset must not reach."""
    root = tmp_path / "media"
    (root / "pets").mkdir(parents=True)
    (root / "pets" / "cat.png").write_bytes(png_bytes())
    (tmp_path / "secret.png").write_bytes(png_bytes())
    return root


def sandboxed(root, **options) -> MediaLoader:
    return MediaLoader(MediaOptions(media_root=str(root), **options))


@pytest.mark.parametrize(
    "path",
    ["pets/cat.png", "./pets/../pets/cat.png", "{root}/pets/cat.png", "file://{root}/pets/cat.png"],
)
def test_paths_inside_the_media_root_are_read(layout, path):
    stored = sandboxed(layout).load_image({"path": path.format(root=layout)}, None)
    assert stored["bytes"] == png_bytes()


@pytest.mark.parametrize(
    "path",
    ["../secret.png", "pets/../../secret.png", "{root}/../secret.png", "/etc/passwd", "file:///etc/passwd",
     "../../../../../../etc/passwd", "~/.ssh/id_rsa"],
)
def test_paths_leading_outside_the_media_root_are_refused(layout, path):
    with pytest.raises(RowError, match="leads outside the media root"):
        sandboxed(layout).load_image({"path": path.format(root=layout)}, None)


def test_a_symbolic_link_out_of_the_media_root_is_refused(layout):
    os.symlink(layout.parent / "secret.png", layout / "pets" / "link.png")
    os.symlink(layout.parent, layout / "escape")
    loader = sandboxed(layout)
    for path in ["pets/link.png", "escape/secret.png"]:
        with pytest.raises(RowError, match=f"image path '{path}' leads outside the media root"):
            loader.load_image({"path": path}, None)


def test_a_symbolic_link_staying_inside_the_media_root_is_followed(layout):
    os.symlink(layout / "pets" / "cat.png", layout / "alias.png")
    assert sandboxed(layout).load_image({"path": "alias.png"}, None)["bytes"] == png_bytes()


def test_embedded_bytes_with_a_path_read_the_path_inside_the_sandbox(layout):
    with pytest.raises(RowError, match="leads outside the media root"):
        sandboxed(layout).load_image({"image": {"bytes": None, "path": "../secret.png"}}, None)


def test_without_a_media_root_paths_are_the_datasets_own(layout):
    # The documented default: relative to the source file, absolute paths as they are.
    loader = MediaLoader(MediaOptions())
    assert loader.load_image({"path": "../secret.png"}, str(layout))["bytes"] == png_bytes()


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "folder"])
def test_devices_and_folders_are_not_read(tmp_path, special):
    (tmp_path / "folder").mkdir()
    path = special if special.startswith("/") else str(tmp_path / special)
    with pytest.raises(RowError, match="is not a regular file"):
        MediaLoader(MediaOptions()).load_image({"path": path}, None)


def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(RowError, match="is not a regular file"):
        MediaLoader(MediaOptions()).load_audio({"path": str(tmp_path / "pipe.png")}, None)


def test_files_over_max_file_bytes_are_refused_before_reading(tmp_path):
    (tmp_path / "cat.png").write_bytes(png_bytes())
    size = len(png_bytes())
    with pytest.raises(RowError, match=f"image file 'cat.png' is {size} bytes, over the limit of {size - 1}"):
        MediaLoader(MediaOptions(max_file_bytes=size - 1)).load_image({"path": "cat.png"}, str(tmp_path))
    assert MediaLoader(MediaOptions(max_file_bytes=size)).load_image({"path": "cat.png"}, str(tmp_path))


@pytest.mark.parametrize("payload", [{"bytes": "text, not bytes"}, {"bytes": 10**12}, {"path": 7}])
def test_embedded_values_of_the_wrong_type_are_rejected_not_crashed_on(payload):
    with pytest.raises(RowError, match="must be"):
        MediaLoader(MediaOptions()).load_image({"image": payload}, None)


@pytest.mark.parametrize("path", ["pets/c\x00at.png", "{root}/pets/c\x00at.png", "file://{root}/pets/c%00at.png"])
@pytest.mark.parametrize("sandbox", [True, False])
def test_a_nul_byte_in_a_path_is_a_bad_row_with_its_reason(layout, path, sandbox):
    written = path.format(root=layout)
    loader = sandboxed(layout) if sandbox else MediaLoader(MediaOptions())
    with pytest.raises(RowError, match=re.escape(f"image path {written!r} contains a NUL byte")):
        loader.load_image({"path": written}, None if sandbox else str(layout))
    with pytest.raises(RowError, match=re.escape(f"audio path {written!r} contains a NUL byte")):
        loader.load_audio({"path": written}, None if sandbox else str(layout))


@pytest.mark.parametrize("sandbox", [True, False])
def test_a_file_name_that_is_not_utf8_on_disk_is_read(layout, sandbox):
    # Python names the byte 0xff, which UTF-8 never has, with the surrogate '\udcff'; JSON can spell it too.
    with open(os.path.join(os.fsencode(layout), b"pets", b"bad\xff.png"), "wb") as file:
        file.write(png_bytes())
    loader = sandboxed(layout) if sandbox else MediaLoader(MediaOptions())
    stored = loader.load_image({"path": "pets/bad\udcff.png"}, None if sandbox else str(layout))
    assert stored["bytes"] == png_bytes()


def test_a_path_with_a_surrogate_that_stands_for_no_byte_is_a_bad_row(layout):
    with pytest.raises(RowError, match=re.escape("image path 'pets/\\ud800.png' holds characters no file name can")):
        MediaLoader(MediaOptions()).load_image({"path": "pets/\ud800.png"}, str(layout))


def test_stored_file_names_are_valid_unicode():
    assert stored_file_name("pets/bad\udcff.png") == "bad\\udcff.png"
    assert stored_file_name("pets/cat.png") == "cat.png"
    assert stored_file_name(None) is None
    stored_file_name("pets/bad\udcff.png").encode("utf-8")  # what Arrow needs
