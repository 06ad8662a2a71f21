"""Which network addresses a dataset's URLs may reach when private addresses are blocked.

A dataset's URL can point at the machine running the conversion (127.0.0.1, a cloud metadata service at
169.254.169.254, a database on the private network): fetching it would copy what answers into the output.
With `--block-private-urls`, a URL's host is resolved and refused when any of its addresses is not public;
the check runs again at every redirect, and once more on the address the socket actually connected to, so a
name that resolves to a public address for the check and a private one for the connection is caught too.

Example:
    >>> is_public_address("93.184.215.14"), is_public_address("10.0.0.7"), is_public_address("::1")
    (True, False, False)
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from vlmdata.errors import RowError


class PrivateAddressError(RowError):
    """A connection reached an address that is not public."""


def is_public_address(text: str) -> bool:
    """Whether an IP address is globally reachable: not loopback, private, link-local, shared, reserved or
    multicast. IPv4 addresses carried inside IPv6 ones (::ffff:127.0.0.1, 6to4) are judged as IPv4."""
    address = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") is not part of it
    if isinstance(address, ipaddress.IPv6Address):
        address = address.ipv4_mapped or address.sixtofour or address
    return address.is_global and not address.is_multicast


def check_public_url(url: str) -> None:
    """Resolves a URL's host and refuses it unless every address it resolves to is public.

    Raises:
        RowError: the host does not resolve, or one of its addresses is not public.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise RowError(f"cannot fetch {url!r}: the host {host!r} does not resolve ({exc})") from exc
    for info in infos:
        address = info[4][0]
        if not is_public_address(address):
            raise RowError(f"cannot fetch {url!r}: {host} is at {address}, not a public address")


class PublicOnlyAdapter(HTTPAdapter):
    """A requests adapter whose connections refuse, before sending anything, a peer that is not public."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _PublicHTTPPool, "https": _PublicHTTPSPool}


def _check_peer(sock: socket.socket, host: str) -> None:
    address = sock.getpeername()[0]
    if not is_public_address(address):
        sock.close()
        raise PrivateAddressError(f"{host} connected to {address}, not a public address")


class _PublicHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _check_peer(sock, self.host)
        return sock


class _PublicHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _check_peer(sock, self.host)
        return sock


class _PublicHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection
