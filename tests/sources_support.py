"""What the network source tests share: distinct JPEGs, a fake clock, crawl configs and a served fake network."""
from __future__ import annotations

import hashlib
import io
from typing import Callable

import numpy as np
import pytest
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
    return parse_config({
        "data_dir": str(tmp_path / "data"),
        "ingest": {"progress": False, **(ingest or {})},
        "sources": {"folder": {"enabled": False}, "x": {"enabled": False}, "http": dict(HTTP_SETTINGS), **sources},
    }, environ={})


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
