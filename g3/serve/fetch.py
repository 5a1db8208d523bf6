"""Image bytes from the ``image_url`` of a chat request: ``data:``, ``file:`` and ``http(s):`` URLs, fetched safely.

`fetch_image` refuses everything a `FetchPolicy` does not allow. By default only ``data:`` URLs work; ``file:``
needs ``file_root`` and ``http(s):`` needs ``allowed_hosts``. Every refusal is a `ImageFetchError` carrying the HTTP
status the server should answer and a short machine ``code``:

====  ==================================================================================================
400   ``bad_url``, ``url_not_allowed`` (scheme off or unknown), ``host_not_allowed``, ``bad_data_url``,
      ``file_not_found``
403   ``private_address``, ``file_outside_root``, ``file_urls_disabled``
413   ``image_too_large``
415   ``unsupported_media_type``
502   ``upstream_status`` (non-2xx answer), ``upstream_error`` (DNS, connection, TLS, protocol),
      ``bad_redirect``, ``too_many_redirects``
504   ``fetch_timeout``
====  ==================================================================================================

Server-side request forgery defences for ``http(s):``:

* the host must match ``allowed_hosts`` (exact names, ``*.suffix`` patterns, or ``*`` for any host);
* the host is resolved once per hop and refused when ANY of its addresses is not public (see
  `is_public_address`; shared address space 100.64.0.0/10 counts as not public), unless
  ``allow_private_networks``;
* the connection then goes to one of exactly those vetted addresses: a custom httpcore network backend
  maps the host name to them and never resolves again, so DNS rebinding between the check and the connect
  is impossible. The request URL keeps the host name, so the ``Host`` header, TLS SNI and certificate
  validation are those of the name (https is pinned too, with no loss of certificate checking);
* redirects are followed by hand (at most ``max_redirects``), each hop re-checked: scheme, allowlist, addresses;
* the body is streamed with a byte cap (413 as soon as it is passed, or up front when ``Content-Length``
  announces more), ``Accept-Encoding: identity`` is asked and compressed answers refused (no decompression
  bombs), and one deadline of ``timeout_s`` covers resolution, connection, redirects and body;
* proxies from the environment are never used (a proxy would connect to addresses we did not vet).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import ipaddress
import os
import re
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpcore
import httpx

from g3.errors import ImageFetchError
from g3.media import HEAD_BYTES, sniff_image_type

#: Default cap on an image's size in bytes (20 MiB).
DEFAULT_MAX_BYTES = 20 * 2**20
#: Longest accepted http(s) or file URL, in characters (data: URLs are bounded by ``max_bytes`` instead).
MAX_URL_CHARS = 8192

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_REQUEST_HEADERS = [
    (b"Accept", b"image/*, application/octet-stream;q=0.5"),
    (b"Accept-Encoding", b"identity"),
    (b"User-Agent", b"g3-image-fetch/1"),
]
#: Media types that are images but not raster images G3 can decode (SVG is XML that can reference other URLs).
_REFUSED_IMAGE_TYPES = frozenset({"image/svg+xml"})
_HOST_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")
_WHITESPACE = re.compile(r"\s+")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class FetchPolicy:
    """What `fetch_image` may fetch.

    ``allowed_hosts``: host names (``"images.example.org"``), suffix patterns (``"*.example.org"``: any
    subdomain, not the apex) or ``"*"`` (any host; addresses are still vetted). Case-insensitive, a trailing dot
    ignored, non-ASCII names written in punycode. Empty: http(s) fetching is off.
    ``allow_private_networks``: also fetch from loopback, private, link-local, … addresses; only for tests and
    trusted setups. ``file_root``: ``file:`` URLs may read files under this folder (after resolving symlinks and
    ``..``); None: ``file:`` URLs are off. ``max_bytes``: the largest image accepted. ``timeout_s``: one deadline
    for a whole http(s) fetch, redirects included. ``max_redirects``: redirects followed before giving up.
    """

    allowed_hosts: tuple[str, ...] = ()
    allow_private_networks: bool = False
    file_root: Path | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = 10.0
    max_redirects: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.allowed_hosts, str):
            raise ValueError(
                f"allowed_hosts must be a tuple of host patterns, got the string {self.allowed_hosts!r}; "
                f"write ({self.allowed_hosts!r},)"
            )
        hosts = tuple(self.allowed_hosts)
        for pattern in hosts:
            _check_pattern(pattern)
        object.__setattr__(self, "allowed_hosts", hosts)
        if self.file_root is not None and not isinstance(self.file_root, Path):
            object.__setattr__(self, "file_root", Path(self.file_root))
        if isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, got {self.max_bytes!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s!r}")
        if isinstance(self.max_redirects, bool) or not isinstance(self.max_redirects, int) or self.max_redirects < 0:
            raise ValueError(f"max_redirects must be a non-negative integer, got {self.max_redirects!r}")


async def fetch_image(url: str, policy: FetchPolicy) -> bytes:
    """The bytes of the image at ``url`` (``data:``, ``file:``, ``http:`` or ``https:``), as ``policy`` allows.

    Raises `ImageFetchError` (with ``status`` and ``code``) for anything refused or failed. The bytes are not decoded
    here: pass them to `g3.data.query_image.load_query_image`.
    """
    if not isinstance(url, str) or not url.strip():
        raise ImageFetchError(400, "bad_url", "the image URL is empty; send a data:, https: or file: URL")
    url = url.strip()
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    if scheme == "data":
        return decode_data_url(url, max_bytes=policy.max_bytes)
    if len(url) > MAX_URL_CHARS:
        raise ImageFetchError(
            400, "bad_url", f"the image URL is {len(url):,} characters long; at most {MAX_URL_CHARS:,}"
        )
    if scheme == "file":
        return await asyncio.to_thread(_read_file_url, url, policy)
    if scheme in ("http", "https"):
        return await _fetch_http(url, policy)
    shown = f"{scheme}:" if scheme else "a URL without a scheme"
    raise ImageFetchError(
        400, "url_not_allowed", f"image URLs with {shown} are not supported; send a data:, https: or file: URL"
    )


# --- data: URLs -----------------------------------------------------------------------------------


def decode_data_url(url: str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a ``data:image/<type>;base64,<payload>`` URL.

    Scheme, media type and ``base64`` are case-insensitive; whitespace and line breaks in the payload, missing
    ``=`` padding, the URL-safe alphabet and percent-encoding are tolerated. The decoded size is checked against
    ``max_bytes`` from the payload's length before anything is decoded.
    """
    if url[:5].lower() != "data:":
        raise ImageFetchError(400, "bad_data_url", f"{_shorten(url)!r} is not a data: URL")
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise ImageFetchError(
            400, "bad_data_url", "the data: URL has no ',' before its payload; use data:image/png;base64,…"
        )
    params = [p.strip().lower() for p in header.split(";")]
    media_type = params[0] or "text/plain"  # RFC 2397's default
    if not media_type.startswith("image/") or media_type in _REFUSED_IMAGE_TYPES:
        raise ImageFetchError(
            415,
            "unsupported_media_type",
            f"the data: URL holds {media_type!r}, not a raster image; send image/jpeg, image/png, image/webp, …",
        )
    if "base64" not in params[1:]:
        raise ImageFetchError(
            400, "bad_data_url", f"the data: URL is not base64; send data:{media_type};base64,<base64 of the file>"
        )
    # Whitespace can at most double a sane payload's length: refuse longer ones before touching them.
    if len(payload) > 2 * _base64_length(max_bytes) + 1024:
        raise _too_large(f"the data: URL's payload ({len(payload):,} characters)", max_bytes)
    if "%" in payload:
        payload = unquote(payload)
    text = _WHITESPACE.sub("", payload).translate(_URLSAFE).rstrip("=")
    decoded_size = len(text) * 3 // 4
    if decoded_size > max_bytes:
        raise _too_large(f"the data: URL's image ({decoded_size:,} bytes)", max_bytes)
    if not text:
        raise ImageFetchError(
            400, "bad_data_url", "the data: URL's payload is empty; put the base64 of the image after ','"
        )
    if len(text) % 4 == 1:
        raise ImageFetchError(
            400, "bad_data_url", "the data: URL's payload is not valid base64 (its length is impossible)"
        )
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageFetchError(400, "bad_data_url", f"the data: URL's payload is not valid base64 ({exc})") from exc


_URLSAFE = str.maketrans("-_", "+/")


def _base64_length(size: int) -> int:
    return 4 * -(-size // 3)


# --- file: URLs -----------------------------------------------------------------------------------


def _read_file_url(url: str, policy: FetchPolicy) -> bytes:
    """The bytes of a ``file:`` URL whose real path (symlinks and ``..`` resolved) lies under ``file_root``.

    Residual risk: someone who can write inside ``file_root`` could swap a folder for a symlink between the check
    and the open; the last component is opened with ``O_NOFOLLOW``, and only regular files are read.
    """
    if policy.file_root is None:
        raise ImageFetchError(
            403, "file_urls_disabled", "file: URLs are off on this server; send the image as a data: URL instead"
        )
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ImageFetchError(
            400, "bad_url", f"file URL {url!r} names host {parts.netloc!r}; only local files: file:///path"
        )
    raw_path = unquote(parts.path)
    if not raw_path.startswith("/"):
        raise ImageFetchError(400, "bad_url", f"file URL {url!r} is not absolute; write file:///absolute/path")
    if "\x00" in raw_path:
        raise ImageFetchError(400, "bad_url", f"file URL {url!r} contains a NUL character")
    root = policy.file_root.expanduser().resolve()
    try:
        path = Path(raw_path).resolve()
    except (OSError, RuntimeError) as exc:  # symlink loops, over-long names
        raise ImageFetchError(400, "bad_url", f"file URL {url!r} cannot be resolved ({exc})") from exc
    if not path.is_relative_to(root):
        raise ImageFetchError(
            403, "file_outside_root", f"file URL {url!r} points outside the folder this server may read images from"
        )
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise ImageFetchError(400, "file_not_found", f"file URL {url!r}: no such file; check the path") from exc
    except OSError as exc:
        raise ImageFetchError(400, "file_not_found", f"file URL {url!r} cannot be opened ({exc.strerror})") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageFetchError(
                400, "file_not_found", f"file URL {url!r} is not a regular file; point it at an image"
            )
        if info.st_size > policy.max_bytes:
            raise _too_large(f"file {url!r} ({info.st_size:,} bytes)", policy.max_bytes)
        with open(fd, "rb", closefd=False) as handle:
            data = handle.read(policy.max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > policy.max_bytes:
        raise _too_large(f"file {url!r} (more than {policy.max_bytes:,} bytes)", policy.max_bytes)
    return data


# --- http(s): URLs --------------------------------------------------------------------------------


def is_public_address(address: str | IPAddress) -> bool:
    """Whether an IP address may be fetched from without ``allow_private_networks``.

    Not public: private, loopback, link-local, multicast, reserved, unspecified and every other range Python's
    ``ipaddress`` does not call global, including shared address space 100.64.0.0/10 (carrier-grade NAT, also
    used for cloud-internal services) and documentation/benchmark ranges. IPv4 embedded in IPv6 (IPv4-mapped
    ``::ffff:a.b.c.d``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``) is judged by its IPv4 address.
    """
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip in _NAT64:
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None and not is_public_address(ip.sixtofour):
            return False
        if ip.is_site_local:
            return False
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified
    )


def host_allowed(host: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """Whether ``host`` matches one of ``patterns``: exact names, ``*.suffix`` (subdomains only) or ``*``.

    Case-insensitive; a trailing dot on either side is ignored. ``*.example.org`` matches ``a.example.org`` and
    ``a.b.example.org``, but neither ``example.org`` nor ``evilexample.org``.
    """
    name = _normalize_host(host)
    if not name:
        return False
    for pattern in patterns:
        raw = pattern.strip()
        if raw == "*":
            return True
        wanted = _normalize_host(raw)
        if raw.startswith("*."):
            suffix = wanted[1:]  # ".example.org"
            if len(suffix) > 1 and name.endswith(suffix) and len(name) > len(suffix):
                return True
        elif name == wanted:
            return True
    return False


def _normalize_host(host: str) -> str:
    host = host.strip().lower()
    host = host[:-1] if host.endswith(".") else host
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_pattern(pattern: str) -> None:
    if not isinstance(pattern, str):
        raise ValueError(f"allowed_hosts entries must be strings, got {pattern!r}")
    if pattern.strip() == "*":
        return
    name = _normalize_host(pattern)
    if _is_ip(name):
        return
    body = name[2:] if pattern.strip().startswith("*.") else name
    if _is_ip(body):
        raise ValueError(f"allowed_hosts pattern {pattern!r}: '*.' cannot prefix an IP address; list the address")
    if not body or not all(_HOST_LABEL.match(label) for label in body.split(".")):
        raise ValueError(
            f"allowed_hosts pattern {pattern!r} is not a host name, '*.suffix' or '*'; "
            "e.g. 'images.example.org' or '*.example.org' (non-ASCII names in punycode)"
        )


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the vetted addresses of a host name, never to anything resolved later or elsewhere."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()
        self.pins: dict[str, tuple[str, ...]] = {}

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = self.pins.get(host)
        if not addresses:
            raise httpcore.ConnectError(f"refusing to connect to {host!r}: its addresses were not vetted")
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("image fetching never uses unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def _fetch_http(url: str, policy: FetchPolicy) -> bytes:
    if not policy.allowed_hosts:
        raise ImageFetchError(
            400,
            "url_not_allowed",
            "this server does not download http(s) image URLs; send the image as a data: URL "
            "(or start the server with allowed hosts)",
        )
    backend = _PinnedBackend()
    target = _parse_http_url(url, redirected_from=None)
    try:
        async with (
            asyncio.timeout(policy.timeout_s),
            httpcore.AsyncConnectionPool(
                ssl_context=_ssl_context(), network_backend=backend, retries=0, max_connections=2
            ) as pool,
        ):
            for hop in range(policy.max_redirects + 1):
                await _vet(target, policy, backend, redirected=hop > 0)
                body, location = await _get(pool, target, policy)
                if body is not None:
                    return body
                assert location is not None
                target = _parse_http_url(location, redirected_from=target)
            raise ImageFetchError(
                502,
                "too_many_redirects",
                f"{_shorten(url)!r} redirects more than max_redirects={policy.max_redirects} times; "
                "send the final image URL",
            )
    except (TimeoutError, httpcore.TimeoutException) as exc:
        raise ImageFetchError(
            504, "fetch_timeout", f"fetching {_shorten(url)!r} took longer than {policy.timeout_s:g} s; try again"
        ) from exc


def _parse_http_url(url: str, *, redirected_from: httpx.URL | None) -> httpx.URL:
    where = f" (redirected from {_shorten(str(redirected_from))!r})" if redirected_from is not None else ""
    if len(url) > MAX_URL_CHARS:
        raise ImageFetchError(400, "bad_url", f"the image URL{where} is longer than {MAX_URL_CHARS:,} characters")
    try:
        parsed = httpx.URL(url) if redirected_from is None else redirected_from.join(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise ImageFetchError(400, "bad_url", f"{_shorten(url)!r}{where} is not a valid URL ({exc})") from exc
    if parsed.scheme not in ("http", "https"):
        raise ImageFetchError(
            400,
            "url_not_allowed",
            f"{_shorten(str(parsed))!r}{where}: only http and https are fetched, not {parsed.scheme}:",
        )
    if not parsed.raw_host:
        raise ImageFetchError(400, "bad_url", f"{_shorten(str(parsed))!r}{where} has no host")
    if parsed.userinfo:
        raise ImageFetchError(
            400, "bad_url", f"the image URL{where} contains credentials (user:password@); remove them"
        )
    return parsed


async def _vet(target: httpx.URL, policy: FetchPolicy, backend: _PinnedBackend, *, redirected: bool) -> None:
    """Check ``target``'s host against the allowlist, resolve it, vet every address and pin them."""
    host = target.raw_host.decode("ascii")
    where = " (after a redirect)" if redirected else ""
    if not host_allowed(host, policy.allowed_hosts):
        raise ImageFetchError(
            400,
            "host_not_allowed",
            f"host {target.host!r}{where} is not among the hosts this server downloads images from; "
            "send the image as a data: URL",
        )
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ImageFetchError(502, "upstream_error", f"host {target.host!r}{where} cannot be resolved ({exc})") from exc
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)))
    if not addresses:
        raise ImageFetchError(502, "upstream_error", f"host {target.host!r}{where} has no IPv4 or IPv6 address")
    if not policy.allow_private_networks:
        refused = [a for a in addresses if not is_public_address(a)]
        if refused:
            raise ImageFetchError(
                403,
                "private_address",
                f"host {target.host!r}{where} resolves to a non-public address ({refused[0]}); "
                "this server only downloads images from public addresses",
            )
    backend.pins[host] = addresses


async def _get(
    pool: httpcore.AsyncConnectionPool, target: httpx.URL, policy: FetchPolicy
) -> tuple[bytes | None, str | None]:
    """One GET: ``(body, None)`` for an image, ``(None, location)`` for a redirect; ImageFetchError otherwise."""
    shown = _shorten(str(target))
    request_url = httpcore.URL(scheme=target.raw_scheme, host=target.raw_host, port=target.port, target=target.raw_path)
    timeouts = {
        "connect": policy.timeout_s,
        "read": policy.timeout_s,
        "write": policy.timeout_s,
        "pool": policy.timeout_s,
    }
    try:
        async with pool.stream(
            "GET", request_url, headers=[(b"Host", target.netloc), *_REQUEST_HEADERS], extensions={"timeout": timeouts}
        ) as response:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1").strip() for k, v in response.headers}
            status = response.status
            if status in _REDIRECT_STATUSES:
                location = headers.get("location")
                if not location:
                    raise ImageFetchError(502, "bad_redirect", f"{shown!r} answered {status} without a Location header")
                return None, location
            if not 200 <= status < 300:
                raise ImageFetchError(
                    502,
                    "upstream_status",
                    f"{shown!r} answered HTTP {status}; check the URL (the image server refused)",
                )
            encoding = headers.get("content-encoding", "identity").lower()
            if encoding not in ("", "identity"):
                raise ImageFetchError(
                    502, "upstream_error", f"{shown!r} answered compressed ({encoding}) although identity was asked"
                )
            media_type = headers.get("content-type", "").split(";")[0].strip().lower()
            sniff = media_type in ("", "application/octet-stream")
            if not sniff and (not media_type.startswith("image/") or media_type in _REFUSED_IMAGE_TYPES):
                raise ImageFetchError(
                    415, "unsupported_media_type", f"{shown!r} is {media_type!r}, not an image; link the image itself"
                )
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > policy.max_bytes:
                raise _too_large(f"{shown!r} ({int(length):,} bytes announced)", policy.max_bytes)
            body = bytearray()
            async for chunk in response.aiter_stream():
                body += chunk
                if len(body) > policy.max_bytes:
                    raise _too_large(f"{shown!r} (more than {policy.max_bytes:,} bytes)", policy.max_bytes)
    except (TimeoutError, httpcore.TimeoutException):
        raise  # a 504, not a 502 (TimeoutError is an OSError)
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, OSError) as exc:
        raise ImageFetchError(502, "upstream_error", f"fetching {shown!r} failed: {_describe(exc)}") from exc
    if not body:
        raise ImageFetchError(502, "upstream_error", f"{shown!r} answered HTTP {status} with an empty body")
    if sniff and sniff_image_type(bytes(body[:HEAD_BYTES])) is None:
        raise ImageFetchError(
            415,
            "unsupported_media_type",
            f"{shown!r} is {media_type or 'untyped'} and its bytes are not JPEG, PNG, WebP, GIF, BMP or TIFF",
        )
    return bytes(body), None


def _ssl_context() -> ssl.SSLContext:
    """Certificate-checking TLS context: certifi's CAs, or $SSL_CERT_FILE / $SSL_CERT_DIR when set."""
    return _cached_ssl_context(os.environ.get("SSL_CERT_FILE", ""), os.environ.get("SSL_CERT_DIR", ""))


@functools.lru_cache(maxsize=4)
def _cached_ssl_context(cert_file: str, cert_dir: str) -> ssl.SSLContext:
    del cert_file, cert_dir  # the cache key; httpx reads the same variables
    return httpx.create_ssl_context()


# --- messages -------------------------------------------------------------------------------------


def _too_large(what: str, max_bytes: int) -> ImageFetchError:
    return ImageFetchError(
        413,
        "image_too_large",
        f"{what} is larger than this server's limit of {max_bytes:,} bytes; send a smaller image",
    )


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    detail = str(exc) or (str(cause) if cause else "") or type(exc).__name__
    return f"{type(exc).__name__}: {detail}"
