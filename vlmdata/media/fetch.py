"""Downloading media over HTTP(S): retries, limits, and a cache so each URL is fetched once per run.

Limits, so that no server can hold a run or fill its memory:
    - `timeout` bounds the wait for a connection and for each next piece of the answer, per attempt;
    - `download_deadline` bounds the whole download of a URL, every attempt, pause and redirect included
      (a server sending one byte a second never trips a per-read timeout);
    - `max_download_bytes` bounds the body, whether or not the server announces its length;
    - at most MAX_REDIRECTS redirects, each target checked again (http/https only, and public with
      `block_private_urls`).

Caching rules:
    - Successful downloads are kept in memory (least recently used first out, up to MEMORY_CACHE_BYTES) and,
      when `MediaOptions.cache_dir` is set, on disk, where every worker process of the run finds them.
    - A URL that failed (after its retries) is remembered in memory for the rest of the process, and later
      rows using it fail at once with the same reason: a thousand rows pointing at a dead server then cost one
      timeout, not a thousand. Failures are not written to disk, so each worker process tries once itself.

Example:
    >>> fetcher = Fetcher(MediaOptions(timeout=5, retries=2))  # doctest: +SKIP
    >>> data = fetcher.fetch("https://example.com/cat.jpg")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from collections import OrderedDict
from urllib.parse import urljoin, urlparse

import requests
import urllib3

from vlmdata import __version__
from vlmdata.errors import RowError
from vlmdata.media.addresses import PrivateAddressError, PublicOnlyAdapter, check_public_url
from vlmdata.media.options import MediaOptions

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
BACKOFF_SECONDS = 0.2
CHUNK_BYTES = 64 * 1024
MEMORY_CACHE_BYTES = 256 * 1024 * 1024
# Some hosts (Wikimedia among them) refuse clients that do not say who they are.
USER_AGENT = f"vlmdata/{__version__} python-requests/{requests.__version__}"
# NUL, line breaks and the other control characters: never part of a URL, and a way to forge a request line.
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


class _RetryableFailure(Exception):
    """A failure that may go away on its own: a 5xx answer, a timeout, a dropped connection."""


class Fetcher:
    """Fetches URLs for one process of a run; cheap to build and to pickle (caches start empty after unpickling).

    Not meant to be shared between threads.
    """

    def __init__(self, options: MediaOptions):
        self.timeout = options.timeout
        self.retries = max(0, options.retries)
        self.deadline = options.download_deadline
        self.max_bytes = options.max_download_bytes
        self.public_only = options.block_private_urls
        self.cache_dir = options.cache_dir
        self._reset_state()

    def _reset_state(self) -> None:
        self._session: requests.Session | None = None
        self._memory = _ByteBudgetCache(MEMORY_CACHE_BYTES)
        self._failures: dict[str, str] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for name in ("_session", "_memory", "_failures"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset_state()

    def fetch(self, url: str) -> bytes:
        """Returns the body of `url`, from a cache when this run already fetched it.

        Raises:
            RowError: the URL is not http(s), is refused, or could not be fetched; the message names the URL and
                the cause, e.g. "GET http://host/cat.jpg failed: 404 Not Found".
        """
        check_http_url(url)
        if url in self._failures:
            raise RowError(self._failures[url])
        data = self._memory.get(url)
        if data is None:
            data = self._read_disk_cache(url)
        if data is None:
            try:
                data = self._download(url)
            except RowError as exc:
                self._failures[url] = str(exc)
                raise
            self._write_disk_cache(url, data)
        self._memory.put(url, data)
        return data

    def _download(self, url: str) -> bytes:
        deadline = time.monotonic() + self.deadline
        attempts = 0
        while True:
            attempts += 1
            try:
                return self._get_following_redirects(url, deadline)
            except _RetryableFailure as exc:
                cause = str(exc)
            if attempts > self.retries:
                break
            pause = BACKOFF_SECONDS * 2 ** (attempts - 1)
            if time.monotonic() + pause >= deadline:
                cause += f"; no time left for another attempt within the download deadline of {self.deadline:g}s"
                break
            time.sleep(pause)
        suffix = f" (after {attempts} attempts)" if attempts > 1 else ""
        raise RowError(f"GET {url} failed: {cause}{suffix}")

    def _get_following_redirects(self, url: str, deadline: float) -> bytes:
        """One attempt: follows redirects one by one, so that every target passes the same checks as `url`."""
        target = url
        for _ in range(MAX_REDIRECTS + 1):
            if target != url:
                _check_redirect(url, target, self.public_only)
            elif self.public_only:
                check_public_url(url)
            answer = self._get_once(url, target, deadline)
            if answer is None:
                raise RowError(f"GET {url} failed: not complete within the download deadline of {self.deadline:g}s")
            if isinstance(answer, bytes):
                return answer
            target = urljoin(target, answer)
        raise RowError(f"GET {url} failed: more than {MAX_REDIRECTS} redirects")

    def _get_once(self, url: str, target: str, deadline: float) -> bytes | str | None:
        """GETs `target`: its body, the location it redirects to, or None when the deadline has passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        timeout = min(self.timeout, remaining)
        try:
            with self._get_session().get(target, timeout=timeout, stream=True, allow_redirects=False) as response:
                if response.is_redirect:
                    return response.headers["Location"]
                status = f"{response.status_code} {response.reason or ''}".strip()
                if response.status_code >= 500:
                    raise _RetryableFailure(status)
                if response.status_code >= 400:
                    raise RowError(f"GET {url} failed: {status}")
                return self._read_capped(url, response, deadline)
        except PrivateAddressError as exc:
            raise RowError(f"GET {url} failed: {exc}") from exc
        except (requests.Timeout, urllib3.exceptions.TimeoutError) as exc:
            raise _RetryableFailure(f"no answer within {timeout:g}s") from exc
        except (
            requests.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.ProtocolError,
        ) as exc:
            raise _RetryableFailure(f"connection failed ({_short_cause(exc)})") from exc
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise RowError(f"GET {url} failed: {_short_cause(exc)}") from exc
        except ValueError as exc:  # requests parses a redirect's Location itself, and a bracket left open fails
            raise RowError(f"GET {url} failed: {exc}") from exc

    def _read_capped(self, url: str, response: requests.Response, deadline: float) -> bytes | None:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise RowError(f"GET {url} failed: the body is {declared} bytes, over the limit of {self.max_bytes}")
        # read1 returns as soon as any data has arrived, so the deadline is checked however slowly bytes come;
        # urllib3 before 2.1 has no read1, and then a slow server is only bounded piece by piece.
        read = getattr(response.raw, "read1", response.raw.read)
        chunks, total = [], 0
        while chunk := read(CHUNK_BYTES, decode_content=True):
            total += len(chunk)
            if total > self.max_bytes:
                raise RowError(f"GET {url} failed: the body is over the limit of {self.max_bytes} bytes")
            if time.monotonic() > deadline:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _get_session(self) -> requests.Session:
        if self._session is None:
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            if self.public_only:
                for prefix in ("http://", "https://"):
                    session.mount(prefix, PublicOnlyAdapter())
            self._session = session
        return self._session

    def _cache_path(self, url: str) -> str:
        return os.path.join(self.cache_dir, hashlib.sha256(url.encode("utf-8")).hexdigest())

    def _read_disk_cache(self, url: str) -> bytes | None:
        if not self.cache_dir:
            return None
        try:
            with open(self._cache_path(url), "rb") as file:
                return file.read()
        except FileNotFoundError:
            return None

    def _write_disk_cache(self, url: str, data: bytes) -> None:
        if not self.cache_dir:
            return
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
            # Written aside then renamed, so another process never reads half a file.
            handle, temp_path = tempfile.mkstemp(dir=self.cache_dir, prefix=".partial-")
            try:
                with os.fdopen(handle, "wb") as file:
                    file.write(data)
                os.replace(temp_path, self._cache_path(url))
            except BaseException:
                os.unlink(temp_path)
                raise
        except OSError as exc:
            # The cache only saves time; a full disk must not fail the row whose download succeeded.
            log.warning("cannot write the download cache in %s: %s", self.cache_dir, exc)


def check_http_url(url: str) -> None:
    """Raises RowError unless `url` is an http or https URL with a host, written in valid text."""
    if _CONTROL_CHARACTER.search(url):
        raise RowError(f"cannot fetch {url!r}: a URL cannot hold control characters")
    try:
        url.encode("utf-8")  # JSON can spell a lone surrogate, which no URL holds and Arrow cannot store
        parsed = urlparse(url)
    except UnicodeEncodeError as exc:
        raise RowError(f"cannot fetch {url!r}: the URL is not valid Unicode text ({exc.reason})") from exc
    except ValueError as exc:  # "Invalid IPv6 URL": a bracket left open
        raise RowError(f"cannot fetch {url!r}: not a valid URL ({exc})") from exc
    if parsed.scheme.lower() not in ("http", "https"):
        scheme = parsed.scheme or "none"
        raise RowError(f"cannot fetch {url!r}: scheme {scheme!r} is not supported (only http and https)")
    if not parsed.netloc:
        raise RowError(f"cannot fetch {url!r}: the URL has no host")


def _check_redirect(url: str, target: str, public_only: bool) -> None:
    try:
        check_http_url(target)
        if public_only:
            check_public_url(target)
    except RowError as exc:
        raise RowError(f"GET {url} failed: redirected to {target}, which is refused: {exc}") from exc


def _short_cause(exc: Exception) -> str:
    """The useful end of requests' long exception text, e.g. "[Errno 111] Connection refused"."""
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    if errno:
        return errno.group(0).strip()
    return text[:200] or type(exc).__name__


class _ByteBudgetCache:
    """An LRU mapping of URL to bytes that holds at most `budget` bytes in total."""

    def __init__(self, budget: int):
        self.budget = budget
        self.size = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: bytes) -> None:
        if key in self._items:
            self._items.move_to_end(key)
            return
        if len(value) > self.budget:
            return
        self._items[key] = value
        self.size += len(value)
        while self.size > self.budget:
            _, evicted = self._items.popitem(last=False)
            self.size -= len(evicted)
