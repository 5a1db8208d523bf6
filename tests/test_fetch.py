"""Image URLs to bytes (g3.serve.fetch): data: and file: URLs, and http(s) against real servers on 127.0.0.1.

Host names ending in ``.test`` are answered by a fake resolver patched into the event loop, so that DNS
rebinding and mixed public/private answers can be staged without any network.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from g3.errors import G3Error
from g3.errors import ImageFetchError as FetchError
from g3.media import image_format as sniff_image_type
from g3.serve import fetch as fetch_module
from g3.serve.fetch import (
    FetchPolicy,
    decode_data_url,
    fetch_image,
    host_allowed,
    is_public_address,
)


def _encode(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), (200, 40, 10)).save(buffer, format=fmt)
    return buffer.getvalue()


PNG = _encode("PNG")
JPEG = _encode("JPEG")


def fetch(url: str, policy: FetchPolicy) -> bytes:
    return asyncio.run(fetch_image(url, policy))


def refused(url: str, policy: FetchPolicy) -> FetchError:
    with pytest.raises(FetchError) as info:
        fetch(url, policy)
    return info.value


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


# --- a real HTTP server ---------------------------------------------------------------------------

Route = Callable[[BaseHTTPRequestHandler], None]


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 answering ``routes``; records each request's path and Host header."""

    def __init__(self, routes: dict[str, Route], tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[tuple[str, str]] = []
        self.release = threading.Event()  # set at teardown: slow handlers stop waiting
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Host", "")))
                route = routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    route(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def send(
    status: int, body: bytes = b"", content_type: str | None = "image/png", **headers: str
) -> Callable[[BaseHTTPRequestHandler], None]:
    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        if content_type is not None:
            handler.send_header("Content-Type", content_type)
        headers.setdefault("Content_Length", str(len(body)))
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.end_headers()
        handler.wfile.write(body)

    return route


def redirect(location: str, status: int = 302) -> Route:
    return send(status, content_type=None, Location=location)


def endless_body(handler: BaseHTTPRequestHandler) -> None:
    """image/png with no Content-Length (HTTP/1.0: the body ends when the connection closes), 50 MB of it."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/png")
    handler.end_headers()
    chunk = PNG + b"\x00" * (65536 - len(PNG))
    for _ in range(800):
        handler.wfile.write(chunk)


def lying_length(announced: int, body: bytes) -> Route:
    return send(200, body, Content_Length=str(announced))


@pytest.fixture()
def server() -> Iterator[Server]:
    routes: dict[str, Route] = {
        "/img.png": send(200, PNG),
        "/img.jpg": send(200, JPEG, "image/jpeg; charset=binary"),
        "/octet.jpg": send(200, JPEG, "application/octet-stream"),
        "/untyped.jpg": send(200, JPEG, None),
        "/octet.txt": send(200, b"just some text", "application/octet-stream"),
        "/page.html": send(200, b"<html></html>", "text/html; charset=utf-8"),
        "/drawing.svg": send(200, b"<svg/>", "image/svg+xml"),
        "/gzip.png": send(200, PNG, "image/png", Content_Encoding="gzip"),
        "/empty.png": send(200, b""),
        "/broken": send(500, b"oops", "text/plain"),
        "/r1": redirect("/r2", 301),
        "/r2": redirect("/r3", 307),
        "/r3": redirect("img.png", 308),
        "/loop": redirect("/loop"),
        "/no-location": send(302, content_type=None),
        "/to-data": redirect(data_url(PNG)),
        "/to-file": redirect("file:///etc/passwd"),
        "/huge": endless_body,
        "/announced-huge": lying_length(10**9, PNG),
        "/announced-short": lying_length(len(PNG), PNG + b"\x00" * 500_000),
        "/truncated": lying_length(100_000, PNG),
    }
    srv = Server(routes)
    routes["/away"] = redirect(f"http://elsewhere.test:{srv.port}/img.png")
    routes["/to-b"] = redirect(f"http://b.test:{srv.port}/img.png")

    def slow(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "image/png")
        handler.end_headers()
        handler.wfile.write(PNG[:10])
        handler.wfile.flush()
        srv.release.wait(10)

    def slow_headers(handler: BaseHTTPRequestHandler) -> None:
        srv.release.wait(10)

    routes["/slow"] = slow
    routes["/slow-headers"] = slow_headers
    yield srv
    srv.close()


LOCAL = FetchPolicy(allowed_hosts=("127.0.0.1",), allow_private_networks=True)


class FakeDNS:
    """Answers for ``*.test`` names: each lookup pops the next answer (the last one repeats); records lookups."""

    def __init__(self) -> None:
        self.answers: dict[str, list[list[str]]] = {}
        self.lookups: list[str] = []

    def set(self, host: str, *answers: list[str]) -> None:
        self.answers[host] = list(answers)


@pytest.fixture()
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    dns = FakeDNS()
    original = asyncio.base_events.BaseEventLoop.getaddrinfo

    async def getaddrinfo(self: Any, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if not name.endswith(".test"):
            return await original(self, host, port, *args, **kwargs)
        dns.lookups.append(name)
        answers = dns.answers.get(name)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        ips = answers.pop(0) if len(answers) > 1 else answers[0]
        infos: list[tuple[Any, ...]] = []
        for ip in ips:
            if ipaddress.ip_address(ip).version == 4:
                infos.append((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, int(port))))
            else:
                infos.append((socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, int(port), 0, 0)))
        return infos

    monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "getaddrinfo", getaddrinfo)
    return dns


# --- data: URLs -----------------------------------------------------------------------------------


def test_data_urls_decode() -> None:
    policy = FetchPolicy()
    assert fetch(data_url(PNG), policy) == PNG
    assert fetch(data_url(JPEG, "image/jpeg"), policy) == JPEG
    encoded = base64.b64encode(JPEG).decode()
    wrapped = "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    assert decode_data_url(f"DATA:IMAGE/JPEG;BASE64,\r\n{wrapped}\n") == JPEG
    assert decode_data_url("data:image/png;name=x.png;base64," + encoded.rstrip("=")) == JPEG  # padding dropped
    assert decode_data_url("data:image/png;base64," + base64.urlsafe_b64encode(JPEG).decode()) == JPEG


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        ("data:image/png;base64,iVBOR*w0K", 400, "bad_data_url"),
        ("data:image/png;base64,A", 400, "bad_data_url"),
        ("data:image/png;base64,", 400, "bad_data_url"),
        ("data:image/png;base64", 400, "bad_data_url"),
        ("data:image/png,%89PNG", 400, "bad_data_url"),
        ("data:text/plain;base64,aGVsbG8=", 415, "unsupported_media_type"),
        ("data:;base64,aGVsbG8=", 415, "unsupported_media_type"),
        ("data:image/svg+xml;base64,PHN2Zy8+", 415, "unsupported_media_type"),
        ("data:application/octet-stream;base64,aGVsbG8=", 415, "unsupported_media_type"),
    ],
)
def test_bad_data_urls(url: str, status: int, code: str) -> None:
    error = refused(url, FetchPolicy())
    assert (error.status, error.code) == (status, code), str(error)
    assert isinstance(error, G3Error)


def test_data_url_size_is_checked_before_decoding() -> None:
    assert decode_data_url(data_url(b"\xff" * 3000), max_bytes=3000) == b"\xff" * 3000
    with pytest.raises(FetchError) as info:
        decode_data_url(data_url(b"\xff" * 3001), max_bytes=3000)
    assert (info.value.status, info.value.code) == (413, "image_too_large")
    # Invalid base64, but too long to be worth decoding: the size refusal comes first.
    with pytest.raises(FetchError) as info:
        decode_data_url("data:image/png;base64," + "!" * 4004, max_bytes=3000)
    assert info.value.status == 413
    with pytest.raises(FetchError) as info:
        decode_data_url("data:image/png;base64," + " " * 10**6, max_bytes=3000)
    assert info.value.status == 413


def test_fetch_error_pickles() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(FetchError(413, "image_too_large", "too big")))
    assert (error.status, error.code, str(error)) == (413, "image_too_large", "too big")


# --- file: URLs -----------------------------------------------------------------------------------


@pytest.fixture()
def file_tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "img.png").write_bytes(PNG)
    (root / "sub" / "my photo.jpg").write_bytes(JPEG)
    (tmp_path / "secret.png").write_bytes(b"secret")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "x.png").write_bytes(b"secret")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    (root / "linkdir").symlink_to(tmp_path / "outside")
    (root / "inner-link.png").symlink_to(root / "img.png")
    return root


def test_file_urls_inside_the_root(file_tree: Path) -> None:
    policy = FetchPolicy(file_root=file_tree)
    assert fetch(f"file://{file_tree}/img.png", policy) == PNG
    assert fetch(f"file://localhost{file_tree}/sub/my%20photo.jpg", policy) == JPEG
    assert fetch(f"file://{file_tree}/sub/../img.png", policy) == PNG
    assert fetch(f"file://{file_tree}/inner-link.png", policy) == PNG  # a symlink that stays inside


@pytest.mark.parametrize("path", ["/../secret.png", "/sub/../../secret.png", "/link.png", "/linkdir/x.png"])
def test_file_urls_outside_the_root_are_refused(file_tree: Path, path: str) -> None:
    error = refused(f"file://{file_tree}{path}", FetchPolicy(file_root=file_tree))
    assert (error.status, error.code) == (403, "file_outside_root")
    assert "secret" not in str(error).replace("secret.png", "")  # the message never shows file contents


def test_file_urls_refused_without_a_root_and_when_wrong(file_tree: Path) -> None:
    error = refused(f"file://{file_tree}/img.png", FetchPolicy())
    assert (error.status, error.code) == (403, "file_urls_disabled")
    policy = FetchPolicy(file_root=file_tree, max_bytes=len(PNG) - 1)
    assert refused(f"file://{file_tree}/img.png", policy).code == "image_too_large"
    policy = FetchPolicy(file_root=file_tree)
    assert refused(f"file://{file_tree}/nope.png", policy).code == "file_not_found"
    assert refused(f"file://{file_tree}/sub", policy).code == "file_not_found"
    assert refused(f"file://otherhost{file_tree}/img.png", policy).code == "bad_url"
    assert refused("file:img.png", policy).code == "bad_url"


# --- http(s): policy checks before any connection -------------------------------------------------


def test_http_off_by_default(server: Server) -> None:
    error = refused(server.url("/img.png"), FetchPolicy())
    assert (error.status, error.code) == (400, "url_not_allowed")
    assert server.requests == []


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/img.png", "gopher://x/", "javascript:alert(1)", "img.png"])
def test_other_schemes_are_refused(url: str) -> None:
    error = refused(url, LOCAL)
    assert (error.status, error.code) == (400, "url_not_allowed")


def test_host_not_in_allowlist_makes_no_connection(server: Server, fake_dns: FakeDNS) -> None:
    policy = FetchPolicy(allowed_hosts=("images.example.org", "*.example.org"), allow_private_networks=True)
    for url in (server.url("/img.png"), server.url("/img.png", host="localhost"), "http://evil.test/x.png"):
        error = refused(url, policy)
        assert (error.status, error.code) == (400, "host_not_allowed")
    assert server.requests == []
    assert fake_dns.lookups == []  # refused before resolving


def test_loopback_is_refused_by_default_even_when_allowlisted(server: Server) -> None:
    for host in ("127.0.0.1", "localhost"):
        error = refused(server.url("/img.png", host=host), FetchPolicy(allowed_hosts=(host,)))
        assert (error.status, error.code) == (403, "private_address"), str(error)
    assert server.requests == []


def test_any_private_address_refuses_the_host(fake_dns: FakeDNS) -> None:
    fake_dns.set("mixed.test", ["8.8.8.8", "10.0.0.1"])
    fake_dns.set("mapped.test", ["2001:4860:4860::8888", "::ffff:127.0.0.1"])
    policy = FetchPolicy(allowed_hosts=("*.test",))
    for host in ("mixed.test", "mapped.test"):
        error = refused(f"https://{host}/img.png", policy)
        assert (error.status, error.code) == (403, "private_address")
    error = refused("https://unknown.test/img.png", policy)
    assert (error.status, error.code) == (502, "upstream_error")


def test_credentials_in_urls_are_refused() -> None:
    assert refused("http://user:pw@127.0.0.1/img.png", LOCAL).code == "bad_url"


# --- http(s): real fetches ------------------------------------------------------------------------


def test_fetches_an_image(server: Server) -> None:
    assert fetch(server.url("/img.png"), LOCAL) == PNG
    assert fetch(server.url("/img.jpg"), LOCAL) == JPEG
    assert server.requests == [("/img.png", f"127.0.0.1:{server.port}"), ("/img.jpg", f"127.0.0.1:{server.port}")]


def test_octet_stream_is_sniffed(server: Server) -> None:
    assert fetch(server.url("/octet.jpg"), LOCAL) == JPEG
    assert fetch(server.url("/untyped.jpg"), LOCAL) == JPEG
    error = refused(server.url("/octet.txt"), LOCAL)
    assert (error.status, error.code) == (415, "unsupported_media_type")


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/page.html", 415, "unsupported_media_type"),
        ("/drawing.svg", 415, "unsupported_media_type"),
        ("/missing.png", 502, "upstream_status"),
        ("/broken", 502, "upstream_status"),
        ("/gzip.png", 502, "upstream_error"),
        ("/empty.png", 502, "upstream_error"),
        ("/no-location", 502, "bad_redirect"),
        ("/truncated", 502, "upstream_error"),  # Content-Length promises more than arrives
    ],
)
def test_upstream_failures(server: Server, path: str, status: int, code: str) -> None:
    error = refused(server.url(path), LOCAL)
    assert (error.status, error.code) == (status, code), str(error)


def test_404_names_the_status(server: Server) -> None:
    assert "HTTP 404" in str(refused(server.url("/missing.png"), LOCAL))


def test_follows_a_redirect_chain(server: Server) -> None:
    assert fetch(server.url("/r1"), LOCAL) == PNG
    assert server.paths == ["/r1", "/r2", "/r3", "/img.png"]


def test_redirect_limit(server: Server) -> None:
    policy = FetchPolicy(allowed_hosts=("127.0.0.1",), allow_private_networks=True, max_redirects=2)
    error = refused(server.url("/r1"), policy)
    assert (error.status, error.code) == (502, "too_many_redirects")
    assert server.paths == ["/r1", "/r2", "/r3"]
    server.requests.clear()
    error = refused(server.url("/loop"), LOCAL)
    assert (error.status, error.code) == (502, "too_many_redirects")
    assert server.paths == ["/loop"] * 4  # the first request and max_redirects=3 more
    server.requests.clear()
    policy = FetchPolicy(allowed_hosts=("127.0.0.1",), allow_private_networks=True, max_redirects=0)
    assert refused(server.url("/r3"), policy).code == "too_many_redirects"


def test_redirect_to_a_host_not_allowed(server: Server, fake_dns: FakeDNS) -> None:
    fake_dns.set("elsewhere.test", ["127.0.0.1"])
    error = refused(server.url("/away"), LOCAL)
    assert (error.status, error.code) == (400, "host_not_allowed")
    assert "redirect" in str(error)
    assert server.paths == ["/away"]
    assert fake_dns.lookups == []


@pytest.mark.parametrize("path", ["/to-data", "/to-file"])
def test_redirect_to_another_scheme(server: Server, path: str) -> None:
    error = refused(server.url(path), LOCAL)
    assert (error.status, error.code) == (400, "url_not_allowed")


def test_every_hop_is_vetted(server: Server, fake_dns: FakeDNS, monkeypatch: pytest.MonkeyPatch) -> None:
    """a.test (treated as public) redirects to b.test, which resolves to a private address: refused."""
    real = fetch_module.is_public_address
    monkeypatch.setattr(fetch_module, "is_public_address", lambda ip: str(ip) == "127.0.0.1" or real(ip))
    fake_dns.set("a.test", ["127.0.0.1"])
    fake_dns.set("b.test", ["127.0.0.2"])
    policy = FetchPolicy(allowed_hosts=("a.test", "b.test"))
    error = refused(server.url("/to-b", host="a.test"), policy)
    assert (error.status, error.code) == (403, "private_address")
    assert "127.0.0.2" in str(error)
    assert server.paths == ["/to-b"]
    assert fake_dns.lookups == ["a.test", "b.test"]


def test_connects_to_the_vetted_address_only(server: Server, fake_dns: FakeDNS) -> None:
    """DNS rebinding: the name is resolved once, and the connection goes to that answer, not a later one."""
    fake_dns.set("rebind.test", ["127.0.0.1"], ["203.0.113.9"])
    policy = FetchPolicy(allowed_hosts=("rebind.test",), allow_private_networks=True, timeout_s=5)
    assert fetch(server.url("/img.png", host="Rebind.Test"), policy) == PNG
    assert fake_dns.lookups == ["rebind.test"]
    assert server.requests == [("/img.png", f"rebind.test:{server.port}")]  # the Host header keeps the name


def test_body_cap(server: Server) -> None:
    policy = FetchPolicy(allowed_hosts=("127.0.0.1",), allow_private_networks=True, max_bytes=100_000)
    start = time.monotonic()
    error = refused(server.url("/huge"), policy)
    assert (error.status, error.code) == (413, "image_too_large")
    assert "more than 100,000 bytes" in str(error)  # stopped while streaming, no Content-Length to go by
    assert time.monotonic() - start < 5
    error = refused(server.url("/announced-huge"), policy)
    assert (error.status, error.code) == (413, "image_too_large")
    assert "announced" in str(error)
    # A Content-Length smaller than what the server sends: only the announced bytes are read.
    assert fetch(server.url("/announced-short"), policy) == PNG
    assert (
        fetch(
            server.url("/img.png"),
            FetchPolicy(allowed_hosts=("127.0.0.1",), allow_private_networks=True, max_bytes=len(PNG)),
        )
        == PNG
    )


@pytest.mark.parametrize("path", ["/slow", "/slow-headers"])
def test_timeout_covers_the_whole_fetch(server: Server, path: str) -> None:
    policy = FetchPolicy(allowed_hosts=("127.0.0.1",), allow_private_networks=True, timeout_s=0.5)
    start = time.monotonic()
    error = refused(server.url(path), policy)
    assert (error.status, error.code) == (504, "fetch_timeout")
    assert time.monotonic() - start < 3


def test_connection_refused_is_502() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = refused(f"http://127.0.0.1:{port}/img.png", LOCAL)
    assert (error.status, error.code) == (502, "upstream_error")


# --- https: pinned address, certificate checked against the name ----------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=pinned.test",
         "-addext", "subjectAltName=DNS:pinned.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture()
def tls_server(certificate: tuple[Path, Path]) -> Iterator[Server]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    srv = Server({"/img.png": send(200, PNG)}, tls=context)
    yield srv
    srv.close()


def test_https_is_pinned_and_checks_the_certificate(
    tls_server: Server, certificate: tuple[Path, Path], fake_dns: FakeDNS, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    fake_dns.set("pinned.test", ["127.0.0.1"], ["203.0.113.9"])
    fake_dns.set("other.test", ["127.0.0.1"])
    policy = FetchPolicy(allowed_hosts=("*.test",), allow_private_networks=True, timeout_s=5)
    assert fetch(tls_server.url("/img.png", host="pinned.test", scheme="https"), policy) == PNG
    assert fake_dns.lookups == ["pinned.test"]
    # Same address, but the certificate is not for this name: the TLS check still applies.
    error = refused(tls_server.url("/img.png", host="other.test", scheme="https"), policy)
    assert (error.status, error.code) == (502, "upstream_error")
    assert "certificate" in str(error).lower()
    assert tls_server.requests == [("/img.png", f"pinned.test:{tls_server.port}")]


def test_https_with_an_unknown_ca_fails(tls_server: Server, fake_dns: FakeDNS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    fake_dns.set("pinned.test", ["127.0.0.1"])
    policy = FetchPolicy(allowed_hosts=("pinned.test",), allow_private_networks=True, timeout_s=5)
    error = refused(tls_server.url("/img.png", host="pinned.test", scheme="https"), policy)
    assert (error.status, error.code) == (502, "upstream_error")
    assert tls_server.requests == []


# --- the classifiers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("2001:4860:4860::8888", True),
        ("::ffff:8.8.8.8", True),  # IPv4-mapped: judged by the IPv4 address
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("172.31.255.255", False),
        ("172.32.0.1", True),
        ("192.168.1.1", False),
        ("127.0.0.1", False),
        ("127.255.0.9", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # shared address space (CGNAT, cloud-internal services): refused
        ("100.100.100.200", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("239.255.255.250", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("192.0.2.1", False),
        ("198.18.0.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("fd12:3456::1", False),
        ("fec0::1", False),
        ("ff02::1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("2002:0a00:0001::1", False),  # 6to4 of 10.0.0.1
        ("2002:0808:0808::1", True),  # 6to4 of 8.8.8.8
        ("64:ff9b::10.0.0.1", False),  # NAT64 of a private address
        ("64:ff9b::8.8.8.8", True),
        ("2001:db8::1", False),  # documentation
        ("2001:0000:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
    ],
)
def test_address_classifier(address: str, public: bool) -> None:
    assert is_public_address(address) is public
    if "%" not in address:
        assert is_public_address(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    ("host", "patterns", "allowed"),
    [
        ("images.example.org", ("images.example.org",), True),
        ("IMAGES.Example.ORG", ("images.example.org",), True),
        ("images.example.org.", ("images.example.org",), True),
        ("images.example.org", ("Images.Example.Org.",), True),
        ("other.example.org", ("images.example.org",), False),
        ("a.example.org", ("*.example.org",), True),
        ("a.b.example.org", ("*.example.org",), True),
        ("A.Example.Org.", ("*.EXAMPLE.org",), True),
        ("example.org", ("*.example.org",), False),  # the apex is not a subdomain: list it too
        ("evilexample.org", ("*.example.org",), False),
        ("example.org.evil.com", ("*.example.org",), False),
        ("evilexample.org", ("example.org",), False),
        ("anything.net", ("*",), True),
        ("anything.net", ("*.",), False),
        ("127.0.0.1", ("127.0.0.1",), True),
        ("::1", ("[::1]",), True),
        ("", ("*",), False),
        ("example.org", (), False),
    ],
)
def test_allowlist_matcher(host: str, patterns: tuple[str, ...], allowed: bool) -> None:
    assert host_allowed(host, patterns) is allowed


@pytest.mark.parametrize("pattern", ["evil*.org", "*.", "", "exa mple.org", "*.10.0.0.1", "http://x.org", "bücher.de"])
def test_bad_allowlist_patterns(pattern: str) -> None:
    with pytest.raises(ValueError, match="allowed_hosts"):
        FetchPolicy(allowed_hosts=(pattern,))


def test_policy_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tuple"):
        FetchPolicy(allowed_hosts="example.org")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_bytes"):
        FetchPolicy(max_bytes=0)
    with pytest.raises(ValueError, match="timeout_s"):
        FetchPolicy(timeout_s=0)
    with pytest.raises(ValueError, match="max_redirects"):
        FetchPolicy(max_redirects=-1)
    assert FetchPolicy(file_root=str(tmp_path)).file_root == tmp_path  # type: ignore[arg-type]
    assert FetchPolicy(allowed_hosts=["a.org"]).allowed_hosts == ("a.org",)  # type: ignore[arg-type]


def test_sniffing() -> None:
    assert sniff_image_type(PNG) == "png"
    assert sniff_image_type(JPEG) == "jpeg"
    assert sniff_image_type(_encode("GIF")) == "gif"
    assert sniff_image_type(_encode("BMP")) == "bmp"
    assert sniff_image_type(_encode("TIFF")) == "tiff"
    assert sniff_image_type(_encode("WEBP")) == "webp"
    assert sniff_image_type(b"<html>") is None
