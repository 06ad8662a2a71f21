"""Downloads: statuses, retries, redirects, timeouts, size caps and caching, against a real local server."""

import io
import os
import re
import time

import pytest
from httpserver import Reply, redirect, serve
from PIL import Image

from vlmdata.errors import RowError
from vlmdata.media import MediaLoader, MediaOptions, addresses, fetch
from vlmdata.media.addresses import is_public_address
from vlmdata.media.fetch import Fetcher


def png_bytes(color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (6, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = png_bytes()


def options(**overrides) -> MediaOptions:
    settings = {"timeout": 2.0, "retries": 2}
    settings.update(overrides)
    return MediaOptions(**settings)


def test_image_url_is_downloaded_and_named_by_its_url():
    with serve({"/cat.png": PNG}) as server:
        stored = MediaLoader(options()).load_image({"url": server.url("/cat.png")}, None)
    assert stored == {"bytes": PNG, "path": server.url("/cat.png")}


def test_a_path_holding_a_url_is_downloaded_too():
    with serve({"/cat.png": PNG}) as server:
        stored = MediaLoader(options()).load_image({"path": server.url("/cat.png")}, None)
    assert stored["bytes"] == PNG


def test_404_fails_at_once_naming_url_and_status():
    with serve() as server:
        url = server.url("/missing.png")
        with pytest.raises(RowError, match=f"GET {url} failed: 404 Not Found"):
            MediaLoader(options()).load_image({"url": url}, None)
        assert server.hits["/missing.png"] == 1


def test_server_error_then_success_is_retried():
    with serve({"/flaky.png": [Reply(status=500), PNG]}) as server:
        stored = MediaLoader(options()).load_image({"url": server.url("/flaky.png")}, None)
        assert stored["bytes"] == PNG
        assert server.hits["/flaky.png"] == 2


def test_persistent_server_error_gives_up_after_all_retries():
    with serve({"/down.png": Reply(status=503)}) as server:
        with pytest.raises(RowError, match=r"503 Service Unavailable \(after 3 attempts\)"):
            MediaLoader(options(retries=2)).load_image({"url": server.url("/down.png")}, None)
        assert server.hits["/down.png"] == 3


def test_a_failed_url_is_remembered_so_later_rows_fail_at_once():
    with serve({"/down.png": Reply(status=500)}) as server:
        loader = MediaLoader(options(retries=1))
        for _ in range(3):
            with pytest.raises(RowError, match="500"):
                loader.load_image({"url": server.url("/down.png")}, None)
        assert server.hits["/down.png"] == 2


def test_redirects_are_followed():
    with serve({"/old.png": redirect("/new.png"), "/new.png": PNG}) as server:
        assert MediaLoader(options()).load_image({"url": server.url("/old.png")}, None)["bytes"] == PNG
        assert server.hits["/new.png"] == 1


def test_redirect_loop_is_rejected():
    with serve({"/loop": redirect("/loop")}) as server:
        with pytest.raises(RowError, match="redirects"):
            MediaLoader(options()).load_image({"url": server.url("/loop")}, None)
        assert server.hits["/loop"] == 6  # the first request and five redirects


def test_slow_server_times_out():
    with serve({"/slow.png": Reply(body=PNG, delay=1.5)}) as server:
        with pytest.raises(RowError, match=r"no answer within 0.3s \(after 2 attempts\)"):
            MediaLoader(options(timeout=0.3, retries=1)).load_image({"url": server.url("/slow.png")}, None)
        assert server.hits["/slow.png"] == 2


def test_unreachable_host_is_a_connection_error():
    with serve() as server:
        url = server.url("/x.png")
    with pytest.raises(RowError, match="connection failed"):
        Fetcher(options(retries=0)).fetch(url)  # the server is gone: nothing listens on its port


@pytest.mark.parametrize("content_length", [True, False])
def test_oversized_body_is_refused(content_length):
    body = b"x" * 5000
    with serve({"/big": Reply(body=body, content_length=content_length)}) as server:
        with pytest.raises(RowError, match="over the limit of 1000"):
            Fetcher(options(max_download_bytes=1000)).fetch(server.url("/big"))
        assert server.hits["/big"] == 1


def test_body_without_content_length_is_read_to_the_end():
    with serve({"/stream.png": Reply(body=PNG, content_length=False)}) as server:
        assert Fetcher(options()).fetch(server.url("/stream.png")) == PNG


def test_same_url_is_downloaded_once_per_loader():
    with serve({"/cat.png": PNG}) as server:
        loader = MediaLoader(options())
        for _ in range(3):
            loader.load_image({"url": server.url("/cat.png")}, None)
        assert server.hits["/cat.png"] == 1


def test_disk_cache_is_shared_by_separate_loaders(tmp_path):
    cache_dir = str(tmp_path / "cache")
    with serve({"/cat.png": PNG}) as server:
        MediaLoader(options(cache_dir=cache_dir)).load_image({"url": server.url("/cat.png")}, None)
        stored = MediaLoader(options(cache_dir=cache_dir)).load_image({"url": server.url("/cat.png")}, None)
        assert stored["bytes"] == PNG
        assert server.hits["/cat.png"] == 1
    cached = os.listdir(cache_dir)
    assert len(cached) == 1 and len(cached[0]) == 64  # one file, named by the URL's sha256, no leftovers


def test_pickled_loader_starts_with_empty_memory_but_reuses_disk(tmp_path):
    import pickle

    with serve({"/cat.png": PNG}) as server:
        loader = MediaLoader(options(cache_dir=str(tmp_path)))
        loader.load_image({"url": server.url("/cat.png")}, None)
        copy = pickle.loads(pickle.dumps(loader))
        assert copy.load_image({"url": server.url("/cat.png")}, None)["bytes"] == PNG
        assert server.hits["/cat.png"] == 1


@pytest.mark.parametrize("url", ["ftp://example.com/cat.png", "s3://bucket/cat.png", "http:///no-host.png"])
def test_only_http_urls_are_fetched(url):
    with pytest.raises(RowError, match="cannot fetch"):
        MediaLoader(options()).load_image({"url": url}, None)


def test_downloaded_garbage_is_an_image_error_naming_the_url():
    with serve({"/fake.png": b"<html>login page</html>"}) as server:
        with pytest.raises(RowError, match=f"cannot decode image '{server.url('/fake.png')}'"):
            MediaLoader(options()).load_image({"url": server.url("/fake.png")}, None)


# --- misbehaving servers ----------------------------------------------------------------------------------------


def test_a_slow_drip_is_cut_at_the_download_deadline():
    # One byte every 50 ms: each read is well within the timeout, the whole body (~70 bytes) is not.
    with serve({"/drip.png": Reply(body=PNG, drip=0.05)}) as server:
        started = time.monotonic()
        with pytest.raises(RowError, match=r"not complete within the download deadline of 0.5s"):
            Fetcher(options(timeout=1.0, download_deadline=0.5)).fetch(server.url("/drip.png"))
        assert time.monotonic() - started < 1.5


def test_the_deadline_also_bounds_retries():
    with serve({"/down.png": Reply(status=503)}) as server:
        started = time.monotonic()
        with pytest.raises(RowError, match=r"503 .*no time left for another attempt"):
            Fetcher(options(retries=50, download_deadline=0.5)).fetch(server.url("/down.png"))
        assert time.monotonic() - started < 1.0
        assert 1 < server.hits["/down.png"] < 50


def test_an_endless_body_is_cut_at_the_size_cap():
    with serve({"/endless": Reply(body=b"x" * 4096, endless=True, piece_bytes=4096)}) as server:
        with pytest.raises(RowError, match="over the limit of 100000 bytes"):
            Fetcher(options(max_download_bytes=100_000)).fetch(server.url("/endless"))


def test_the_content_type_header_is_not_trusted_either_way():
    routes = {
        "/png-as-html": Reply(body=PNG, headers={"Content-Type": "text/html"}),
        "/html-as-png": Reply(body=b"<html>sign in</html>", headers={"Content-Type": "image/png"}),
    }
    with serve(routes) as server:
        loader = MediaLoader(options())
        assert loader.load_image({"url": server.url("/png-as-html")}, None)["bytes"] == PNG
        with pytest.raises(RowError, match="not a recognised image format"):
            loader.load_image({"url": server.url("/html-as-png")}, None)


@pytest.mark.parametrize("location", ["file:///etc/passwd", "ftp://example.com/cat.png", "gopher://x/"])
def test_a_redirect_to_another_scheme_is_refused(location):
    with serve({"/jump": redirect(location)}) as server:
        with pytest.raises(RowError, match=f"redirected to {location}, which is refused: .*only http and https"):
            Fetcher(options()).fetch(server.url("/jump"))


# --- private addresses ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, public",
    [
        ("93.184.215.14", True), ("2606:4700::6810:84e5", True),
        ("127.0.0.1", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
        ("169.254.169.254", False), ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False),
        ("::1", False), ("fe80::1%eth0", False), ("fc00::1", False), ("::ffff:127.0.0.1", False),
        ("2002:7f00:1::", False),  # 6to4 wrapping 127.0.0.1
    ],
)
def test_public_addresses(address, public):
    assert is_public_address(address) is public


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_blocking_private_urls_refuses_loopback_before_connecting(host):
    with serve({"/cat.png": PNG}) as server:
        url = server.url("/cat.png").replace("127.0.0.1", host)
        with pytest.raises(RowError, match="not a public address"):
            Fetcher(options(block_private_urls=True)).fetch(url)
        assert server.hits["/cat.png"] == 0
        assert Fetcher(options()).fetch(url) == PNG  # off by default


def test_every_redirect_target_is_checked_again(monkeypatch):
    # Here 127.0.0.1 plays a public server, and every other address a private one.
    monkeypatch.setattr(addresses, "is_public_address", lambda text: text == "127.0.0.1")
    with serve({"/cat.png": PNG}) as server:
        inside = f"http://127.0.0.2:{server.port}/cat.png"
        server.routes["/public"] = redirect(server.url("/cat.png"))
        server.routes["/to-private"] = redirect(inside)
        fetcher = Fetcher(options(block_private_urls=True))
        assert fetcher.fetch(server.url("/public")) == PNG
        with pytest.raises(RowError, match=r"redirected to http://127\.0\.0\.2:\d+/cat\.png, which is refused"):
            fetcher.fetch(server.url("/to-private"))
        assert server.hits["/cat.png"] == 1


def test_the_connected_address_is_checked_even_when_the_name_check_was_fooled(monkeypatch):
    # A host name can resolve to a public address when checked and to a private one when connecting.
    monkeypatch.setattr(fetch, "check_public_url", lambda url: None)
    with serve({"/cat.png": PNG}) as server:
        with pytest.raises(RowError, match="connected to 127.0.0.1, not a public address"):
            Fetcher(options(block_private_urls=True, retries=0)).fetch(server.url("/cat.png"))
        assert server.hits["/cat.png"] == 0


@pytest.mark.parametrize("url, reason", [
    ("http://[::1/cat.png", "not a valid URL (Invalid IPv6 URL)"),
    ("http://127.0.0.1/c\x00at.png", "a URL cannot hold control characters"),
    ("http://127.0.0.1/cat.png\r\nHost: elsewhere", "a URL cannot hold control characters"),
    ("http://127.0.0.1/c\udcffat.png", "the URL is not valid Unicode text (surrogates not allowed)"),
])
def test_a_url_that_is_no_url_is_a_bad_row_with_its_reason(url, reason):
    with pytest.raises(RowError, match=re.escape(f"cannot fetch {url!r}: {reason}")):
        MediaLoader(options()).load_image({"url": url}, None)


def test_a_redirect_to_something_that_is_no_url_is_a_bad_row():
    with serve({"/jump": redirect("http://[::1/cat.png")}) as server:
        with pytest.raises(RowError, match=re.escape(f"GET {server.url('/jump')} failed: Invalid IPv6 URL")):
            Fetcher(options()).fetch(server.url("/jump"))
