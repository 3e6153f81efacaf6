"""What the network source tests share: distinct JPEGs, a fake clock, crawl configs and a served fake network."""

from __future__ import annotations

import hashlib
import io
import re
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest
import requests
import responses
from PIL import Image

from bot.config import Config, SourceHttpConfig, parse_config
from bot.ingest.fetch import Http

# Both the crawl config and `http_for` use these, so a test's Http behaves as `crawl_once` would build it.
HTTP_SETTINGS = {"max_rate_limit_wait_s": 60.0, "max_retries": 2}


def make_jpeg(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    """A distinct real JPEG: a random 12x8 block pattern scaled up (no two seeds look alike to pHash)."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    image = Image.fromarray(blocks).resize(size, Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FakeClock:
    """A clock that moves only when the code under test sleeps."""

    def __init__(self, start: float = 1_800_000_000.0):
        self.now = start
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def http_for(clock: FakeClock) -> Http:
    return Http(SourceHttpConfig(**HTTP_SETTINGS), sleep=clock.sleep, clock=clock.time, jitter=lambda: 0.5)


def crawl_config(tmp_path, sources: dict, ingest: dict | None = None) -> Config:
    """A config with its data dir under `tmp_path`, only the network sections in `sources` doing anything.

    The folder and X are off unless `sources` names them (X alone would otherwise need credentials).
    """
    return parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "ingest": {"progress": False, **(ingest or {})},
            "sources": {"folder": {"enabled": False}, "x": {"enabled": False}, "http": dict(HTTP_SETTINGS), **sources},
        },
        environ={},
    )


def served_world(build: Callable):
    """(fake network, its images, clock) with the network installed in `responses`."""
    clock = FakeClock()
    fake, images = build(clock)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        fake.install(mock)
        yield fake, images, clock


def world_fixture(build: Callable):
    """A `world` fixture serving the fake network that `build(clock)` returns."""

    @pytest.fixture
    def world():
        yield from served_world(build)

    return world


class _Request:
    """What the fakes' callbacks read of a request: the URL it was sent to, its method and headers."""

    def __init__(self, url: str, method: str, headers):
        self.url, self.method, self.headers = url, method, headers


class LocalNetwork:
    """The fake networks served over real HTTP on 127.0.0.1: one threaded server answers every host.

    Fakes register their callbacks as they do with `responses` (`fake.install(network)`); `route(http)` mounts
    an adapter on an Http's session that sends each request to the server, the original host in `Host`, so
    the code under test runs its real HTTP stack (streaming, headers, redirects) against a socket.
    """

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.routes: list[tuple[re.Pattern, Callable]] = []
        network = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                scheme = self.headers.get("X-Original-Scheme", "https")
                url = f"{scheme}://{self.headers['Host']}{self.path}"
                status, headers, body = network.answer(_Request(url, "GET", self.headers))
                body = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def add_callback(self, method: str, url: re.Pattern, callback: Callable, content_type=None) -> None:
        self.routes.append((url, callback))

    def answer(self, request: _Request) -> tuple[int, dict, bytes | str]:
        for pattern, callback in self.routes:
            if pattern.match(request.url):
                return callback(request)
        return 404, {"content-type": "text/plain"}, f"no fake serves {request.url}"

    def route(self, http: Http) -> Http:
        port = self.port

        class ToLocal(requests.adapters.HTTPAdapter):
            def send(self, request, **kwargs):
                parts = urlsplit(request.url)
                request.headers["Host"] = parts.netloc
                request.headers["X-Original-Scheme"] = parts.scheme
                request.url = urlunsplit(("http", f"127.0.0.1:{port}", parts.path, parts.query, ""))
                response = super().send(request, **kwargs)
                response.url = urlunsplit(parts)  # redirects resolve against the address the code asked for
                return response

        http.session.mount("https://", ToLocal())
        http.session.mount("http://", ToLocal())
        return http

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
