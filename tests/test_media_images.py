"""Images: decoding, validation, mode conversion, orientation, resizing, and every way a part can hold one."""

import base64
import importlib.util
import io
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps, PngImagePlugin

from vlmdata.errors import RowError
from vlmdata.media import MediaLoader, MediaOptions, Resize


def encode(image: Image.Image, format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def decode(stored: dict) -> Image.Image:
    image = Image.open(io.BytesIO(stored["bytes"]))
    image.load()
    return image


def load(data_or_part, **options) -> Image.Image:
    part = data_or_part if isinstance(data_or_part, dict) else {"image": {"bytes": data_or_part, "path": None}}
    return decode(MediaLoader(MediaOptions(**options)).load_image(part, None))


def photo(size=(64, 48)) -> Image.Image:
    """A picture with structure in both axes, so a wrong rotation or scaling shows."""
    x = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :].repeat(size[1], axis=0)
    y = np.linspace(0, 255, size[1], dtype=np.uint8)[:, None].repeat(size[0], axis=1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 90)], axis=-1), "RGB")


# --- bytes kept or re-encoded ---------------------------------------------------------------------------------


@pytest.mark.parametrize("format", ["JPEG", "PNG", "WEBP"])
def test_rgb_image_needing_no_change_keeps_its_original_bytes(format):
    original = encode(photo(), format)
    stored = MediaLoader(MediaOptions()).load_image({"image": {"bytes": original, "path": "a.img"}}, None)
    assert stored["bytes"] == original
    assert stored["path"] == "a.img"


def png_with_a_text_chunk() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "an ancillary chunk")
    return encode(photo(), "PNG", pnginfo=info)


def png_with_a_wrong_crc(chunk_type: bytes) -> bytes:
    """`png_with_a_text_chunk()` with the CRC of its `chunk_type` chunk flipped."""
    data = bytearray(png_with_a_text_chunk())
    position = 8
    while data[position + 4:position + 8] != chunk_type:
        position += 12 + struct.unpack_from(">I", data, position)[0]
    crc = position + 8 + struct.unpack_from(">I", data, position)[0]
    data[crc:crc + 4] = bytes(byte ^ 0xFF for byte in data[crc:crc + 4])
    return bytes(data)


def decoded_by_libpng(tmp_path, images: list[bytes]) -> list[np.ndarray]:
    """The pixels torchvision's `decode_png` (libpng) reads from each PNG, in a child process: a PNG that libpng
    refuses can crash the process that decodes it."""
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    paths = [str(tmp_path / f"{number}.png") for number in range(len(images))]
    for path, data in zip(paths, images):
        Path(path).write_bytes(data)
    code = ("import sys, numpy, torchvision.io as io\n"
            "for path in sys.argv[1:]:\n"
            "    numpy.save(path + '.npy', io.decode_png(io.read_file(path)).permute(1, 2, 0).numpy())\n")
    result = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return [np.load(path + ".npy") for path in paths]


def test_a_png_is_kept_only_when_every_crc_is_right_and_libpng_decodes_what_is_stored(tmp_path):
    # Pillow reads pixel data (IDAT) whose CRC is wrong, where libpng stops; Pillow refuses a wrong CRC in a
    # text chunk, where libpng only drops the chunk. Either way the pixels are intact: they are encoded anew.
    damaged = {chunk_type: png_with_a_wrong_crc(chunk_type) for chunk_type in (b"IDAT", b"tEXt", b"IEND")}
    intact = [encode(photo(), "PNG"), png_with_a_text_chunk()]
    loader = MediaLoader(MediaOptions())

    stored = {name: loader.load_image({"image": {"bytes": data, "path": "a.png"}}, None)["bytes"]
              for name, data in [*damaged.items(), ("intact", intact[0]), ("intact with text", intact[1])]}

    assert [stored["intact"], stored["intact with text"]] == intact
    assert all(stored[chunk_type] != damaged[chunk_type] and stored[chunk_type].startswith(b"\x89PNG")
               for chunk_type in damaged)
    for name, pixels in zip(stored, decoded_by_libpng(tmp_path, list(stored.values()))):
        np.testing.assert_array_equal(pixels, np.asarray(photo()), err_msg=str(name))
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(stored[name]))), pixels, err_msg=str(name))


def test_a_png_whose_header_crc_is_wrong_is_rejected():
    with pytest.raises(RowError, match="cannot decode image"):
        load(png_with_a_wrong_crc(b"IHDR"))


def test_image_already_at_the_letterbox_size_keeps_its_bytes():
    original = encode(photo((32, 32)), "JPEG")
    assert load(original, resize=Resize(32, 32)).size == (32, 32)
    stored = MediaLoader(MediaOptions(resize=Resize(32, 32))).load_image({"image": {"bytes": original}}, None)
    assert stored["bytes"] == original


def test_converted_images_are_reencoded_deterministically_as_png_or_jpeg():
    loader = MediaLoader(MediaOptions(resize=Resize(20, 20)))
    jpeg = encode(photo(), "JPEG")
    first = loader.load_image({"base64": base64.b64encode(jpeg).decode()}, None)["bytes"]
    again = loader.load_image({"base64": base64.b64encode(jpeg).decode()}, None)["bytes"]
    assert first == again and first != jpeg
    assert decode({"bytes": first}).format == "JPEG"
    gif = encode(photo().convert("P"), "GIF")
    assert decode(loader.load_image({"image": {"bytes": gif}}, None)).format == "PNG"


# --- modes ------------------------------------------------------------------------------------------------------


def test_palette_transparency_becomes_white():
    image = Image.new("P", (2, 1))
    image.putpalette([200, 10, 10, 0, 0, 0])
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 1
    result = load(encode(image, "PNG"))
    assert result.mode == "RGB"
    assert result.getpixel((0, 0)) == (200, 10, 10)
    assert result.getpixel((1, 0)) == (255, 255, 255)


def test_rgba_and_la_are_composited_on_white():
    rgba = Image.new("RGBA", (3, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 0))
    rgba.putpixel((2, 0), (0, 0, 0, 128))
    result = load(encode(rgba, "PNG"))
    assert result.getpixel((0, 0)) == (255, 0, 0)
    assert result.getpixel((1, 0)) == (255, 255, 255)
    assert all(126 <= channel <= 128 for channel in result.getpixel((2, 0)))

    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (30, 255))
    la.putpixel((1, 0), (30, 0))
    result = load(encode(la, "PNG"))
    assert [result.getpixel((x, 0)) for x in range(2)] == [(30, 30, 30), (255, 255, 255)]


def test_rgb_colour_key_transparency_becomes_white():
    image = Image.new("RGB", (2, 1), (0, 255, 0))
    image.putpixel((1, 0), (9, 9, 9))
    result = load(encode(image, "PNG", transparency=(0, 255, 0)))
    assert [result.getpixel((x, 0)) for x in range(2)] == [(255, 255, 255), (9, 9, 9)]


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in ink
    result = load(encode(cmyk, "JPEG", quality=100))
    red, green, blue = result.getpixel((8, 8))
    assert result.mode == "RGB" and red > 240 and green < 15 and blue < 15


def test_16_bit_grey_is_scaled_not_clipped():
    image = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert image.mode == "I;16"
    result = load(encode(image, "PNG"))
    assert [result.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_float_image_in_unit_range_is_scaled_to_8_bit():
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    result = load(encode(image, "TIFF"))
    assert [result.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grey_and_bilevel_images_become_rgb(mode):
    image = Image.new(mode, (2, 1), 0)
    image.putpixel((1, 0), 255)
    result = load(encode(image, "PNG"))
    assert result.mode == "RGB"
    assert [result.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), (255, 255, 255)]


# --- orientation and frames -------------------------------------------------------------------------------------


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 10))  # a red mark in the top-left corner as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer turns the stored picture 90 degrees clockwise
    result = load(encode(image, "JPEG", quality=100, exif=exif))
    assert result.size == (20, 40)
    assert result.getpixel((15, 5))[0] > 200  # the mark is now top-right
    assert result.getpixel((5, 5))[2] > 200


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), color) for color in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    result = load(gif.getvalue())
    assert result.format == "PNG"
    red, green, blue = result.getpixel((4, 4))
    assert red > 240 and green < 15 and blue < 15
    assert getattr(result, "n_frames", 1) == 1


# --- broken images ----------------------------------------------------------------------------------------------


def test_truncated_jpeg_is_rejected_with_the_reason(tmp_path):
    jpeg = encode(photo((256, 256)), "JPEG")
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    with pytest.raises(RowError, match=r"cannot decode image 'cut\.jpg': .*truncated"):
        MediaLoader(MediaOptions()).load_image({"path": "cut.jpg"}, str(tmp_path))


def test_truncated_images_stay_errors_even_if_another_library_allows_them(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    jpeg = encode(photo((256, 256)), "JPEG")
    with pytest.raises(RowError, match="truncated"):
        load(jpeg[: len(jpeg) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


@pytest.mark.parametrize("content, reason", [(b"", "empty"), (b"this is not an image", "not a recognised")])
def test_empty_and_garbage_files_are_rejected(tmp_path, content, reason):
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(RowError, match=f"bad.png'.*{reason}"):
        MediaLoader(MediaOptions()).load_image({"path": str(tmp_path / "bad.png")}, None)


def test_images_over_max_image_pixels_are_refused():
    data = encode(photo((20, 20)), "PNG")
    # Pillow only warns a little over its limit and fails at twice it: both must be refusals.
    with pytest.raises(RowError, match=r"too large to decode safely: 400 pixels, over the limit of 399"):
        load(data, max_image_pixels=399)
    with pytest.raises(RowError, match=r"400 pixels, over the limit of 150"):
        load(data, max_image_pixels=150)
    assert load(data, max_image_pixels=400).size == (20, 20)


def test_the_pixel_limit_is_the_runs_whatever_another_library_set(monkeypatch):
    data = encode(photo((20, 20)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert MediaLoader(MediaOptions()).load_image({"image": {"bytes": data}}, None)["bytes"] == data
    with pytest.raises(RowError, match="over the limit of 300"):
        MediaLoader(MediaOptions(max_image_pixels=300)).load_image({"image": {"bytes": data}}, None)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_pil_images_over_the_limit_are_refused():
    with pytest.raises(RowError, match="400 pixels, over the limit of 300"):
        MediaLoader(MediaOptions(max_image_pixels=300)).load_image({"image": photo((20, 20))}, None)


# --- resizing ---------------------------------------------------------------------------------------------------


def test_letterbox_fits_inside_and_pads_with_black_centred():
    result = load(encode(Image.new("RGB", (200, 100), (255, 255, 255)), "PNG"), resize=Resize(50, 50))
    assert result.size == (50, 50)
    assert result.getpixel((25, 5)) == (0, 0, 0)  # band above
    assert result.getpixel((25, 44)) == (0, 0, 0)  # band below
    assert result.getpixel((25, 25)) == (255, 255, 255)
    column = [result.getpixel((25, y)) for y in range(50)]
    assert column.index((255, 255, 255)) == 12 and column.count((255, 255, 255)) == 25


@pytest.mark.parametrize("size", [(200, 120), (90, 200), (37, 53)])
def test_letterbox_gives_the_same_pixels_as_axolotl_image_size(size):
    # axolotl's `image_size: N` is ImageOps.pad(image, (N, N), method=bilinear, color=black)
    source = photo(size)
    expected = ImageOps.pad(source, (64, 64), method=Image.Resampling.BILINEAR, color=(0, 0, 0))
    result = load(encode(source, "PNG"), resize=Resize(64, 64))
    assert np.array_equal(np.asarray(result), np.asarray(expected))


def test_letterbox_enlarges_small_images_like_axolotl():
    assert load(encode(photo((10, 5)), "PNG"), resize=Resize(40, 40)).size == (40, 40)


def test_exact_stretches_to_the_size():
    assert load(encode(photo((64, 48)), "PNG"), resize=Resize(30, 70, "exact")).size == (30, 70)


def test_fit_shrinks_the_longest_side_and_never_enlarges():
    assert load(encode(photo((200, 100)), "PNG"), resize=Resize(50, 40, "fit")).size == (50, 25)
    small = encode(photo((20, 10)), "PNG")
    stored = MediaLoader(MediaOptions(resize=Resize(50, 50, "fit"))).load_image({"image": {"bytes": small}}, None)
    assert stored["bytes"] == small


@pytest.mark.parametrize("algorithm", ["bilinear", "bicubic", "lanczos", "nearest"])
def test_every_resize_algorithm_works(algorithm):
    assert load(encode(photo(), "PNG"), resize=Resize(16, 16, "exact", algorithm)).size == (16, 16)


def test_large_jpeg_decoded_in_draft_mode_still_gets_the_exact_size():
    big = encode(photo((1600, 1200)), "JPEG")
    for mode, expected in [("letterbox", (100, 100)), ("exact", (100, 100)), ("fit", (100, 75))]:
        result = load(big, resize=Resize(100, 100, mode))
        assert result.size == expected
    letterboxed = load(big, resize=Resize(100, 100))
    assert letterboxed.getpixel((50, 5)) == (0, 0, 0)
    # the gradient survives the reduced-scale decode: left is dark, right is bright
    assert letterboxed.getpixel((5, 50))[0] < 40 and letterboxed.getpixel((94, 50))[0] > 215


def test_rotated_jpeg_is_resized_after_turning_upright():
    exif = Image.Exif()
    exif[0x0112] = 6
    big = encode(photo((1600, 800)), "JPEG", exif=exif)
    assert load(big, resize=Resize(100, 100, "fit")).size == (50, 100)


# --- payload kinds ----------------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_base_dir_then_media_root(tmp_path):
    (tmp_path / "rows").mkdir()
    (tmp_path / "media").mkdir()
    (tmp_path / "rows" / "cat.png").write_bytes(encode(Image.new("RGB", (3, 3), (10, 0, 0)), "PNG"))
    (tmp_path / "media" / "cat.png").write_bytes(encode(Image.new("RGB", (3, 3), (0, 10, 0)), "PNG"))
    from_base = MediaLoader(MediaOptions()).load_image({"path": "cat.png"}, str(tmp_path / "rows"))
    assert from_base["path"] == "cat.png" and decode(from_base).getpixel((1, 1)) == (10, 0, 0)
    rooted = MediaLoader(MediaOptions(media_root=str(tmp_path / "media")))
    assert decode(rooted.load_image({"path": "cat.png"}, str(tmp_path / "rows"))).getpixel((1, 1)) == (0, 10, 0)
    assert decode(rooted.load_image({"path": f"file://{tmp_path}/media/cat.png"}, None)).getpixel((1, 1)) == (0, 10, 0)
    file_uri = f"file://{tmp_path}/rows/cat.png"
    assert decode(MediaLoader(MediaOptions()).load_image({"path": file_uri}, None)).getpixel((1, 1)) == (10, 0, 0)
    with pytest.raises(RowError, match="leads outside the media root"):
        rooted.load_image({"path": file_uri}, None)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(RowError, match="image file not found: 'nope.jpg'"):
        MediaLoader(MediaOptions()).load_image({"path": "nope.jpg"}, str(tmp_path))


def test_base64_raw_and_data_uri():
    png = encode(Image.new("RGB", (4, 4), (1, 2, 3)), "PNG")
    raw = base64.b64encode(png).decode()
    loader = MediaLoader(MediaOptions())
    assert loader.load_image({"base64": raw}, None) == {"bytes": png, "path": None}
    assert loader.load_image({"base64": f"data:image/png;base64,{raw}"}, None)["bytes"] == png
    assert loader.load_image({"url": f"data:image/png;base64,{raw}"}, None)["bytes"] == png


def test_invalid_base64_is_rejected():
    with pytest.raises(RowError, match="invalid base64"):
        MediaLoader(MediaOptions()).load_image({"base64": "not base64 at all!"}, None)


def test_bytes_path_dict_with_bytes_missing_reads_the_path(tmp_path):
    png = encode(photo(), "PNG")
    (tmp_path / "p.png").write_bytes(png)
    stored = MediaLoader(MediaOptions()).load_image({"image": {"bytes": None, "path": "p.png"}}, str(tmp_path))
    assert stored == {"bytes": png, "path": "p.png"}


def test_pil_image_input_is_encoded_and_converted():
    stored = MediaLoader(MediaOptions()).load_image({"image": Image.new("RGBA", (5, 5), (0, 0, 0, 0))}, None)
    result = decode(stored)
    assert result.format == "PNG" and result.getpixel((2, 2)) == (255, 255, 255)
    resized = MediaLoader(MediaOptions(resize=Resize(8, 8))).load_image({"image": photo()}, None)
    assert decode(resized).size == (8, 8)


@pytest.mark.parametrize(
    "part, reason",
    [({"type": "image"}, "no payload"), ({"path": "a.png", "url": "http://x/a.png"}, "several payloads")],
)
def test_parts_with_zero_or_several_payloads_are_rejected(part, reason):
    with pytest.raises(RowError, match=reason):
        MediaLoader(MediaOptions()).load_image(part, None)


def test_loader_survives_pickling():
    loader = pickle.loads(pickle.dumps(MediaLoader(MediaOptions(resize=Resize(8, 8)))))
    assert decode(loader.load_image({"image": {"bytes": encode(photo(), "PNG")}}, None)).size == (8, 8)
