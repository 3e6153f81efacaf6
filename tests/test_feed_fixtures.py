"""Shared set-up for the feed tests: real images ingested into a real store, predictions and labels by SQL."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Awaitable, Callable, TypeVar

from aiohttp.test_utils import TestClient, TestServer
from PIL import Image, ImageDraw

from bot.config import FeedConfig, IngestConfig
from bot.feed import create_app
from bot.ingest.ingest import NEW, ingest_post
from bot.sources.records import MediaRef, Post
from storage import Store
from tests import imagegen

T = TypeVar("T")
# Distinct, saturated colours: each generated image is mostly one of them, so a screenshot shows which loaded.
COLOURS = [(230, 40, 40), (40, 170, 60), (40, 80, 230), (240, 200, 20), (160, 40, 200), (20, 200, 210)]


def make_image(index: int, size: tuple[int, int] = (320, 240), fmt: str = "PNG") -> bytes:
    """A picture filled with COLOURS[index % 6] and a seeded scatter of dark shapes (distinct per index)."""
    colour = COLOURS[index % len(COLOURS)]
    image = Image.new("RGB", size, colour)
    draw = ImageDraw.Draw(image)
    rng = random.Random(index)
    for _ in range(6):
        x, y = rng.randrange(size[0] - 40), rng.randrange(size[1] - 40)
        w, h = rng.randrange(10, 40), rng.randrange(10, 40)
        shade = rng.randrange(0, 80)
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + w, y + h), fill=(shade,) * 3)
    return imagegen.encode(image, fmt)


def add_post(
    store: Store,
    index: int,
    account: str = "artist",
    text: str | None = None,
    display_name: str | None = None,
    alt: str | None = None,
    url: str | None = None,
    created_at: str | None = None,
    image: bytes | None = None,
) -> int:
    """Ingest one post with one generated image through bot.ingest.ingest; returns the media id."""
    data = image if image is not None else make_image(index)
    ref = MediaRef(url=f"https://img.example.org/{index}.png", alt=alt)
    post = Post(
        source="x",
        account=account,
        post_id=f"p{index}",
        url=url or f"https://x.example.org/{account}/{index}",
        text=text if text is not None else f"drawing number {index}",
        created_at=created_at or f"2026-01-01T00:{index // 60 % 60:02d}:{index % 60:02d}+00:00",
        media=(ref,),
        display_name=display_name,
    )
    _, outcomes = ingest_post(store, post, lambda _ref: data, IngestConfig(progress=False))
    assert outcomes[0].status == NEW, outcomes
    return outcomes[0].media_id


def predict(store: Store, media_id: int, label: str, borderline: bool = False, version: str = "v1") -> None:
    probs = {"illustration": 0.1, "screenshot": 0.1, "photo": 0.1}
    probs[label] = 0.55 if borderline else 0.8
    store.execute(
        "INSERT INTO predictions (media_id, model_version, prob_illustration, prob_screenshot, prob_photo, label, "
        "confidence, margin, borderline, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, datetime('now'))",
        (
            media_id,
            version,
            probs["illustration"],
            probs["screenshot"],
            probs["photo"],
            label,
            probs[label],
            probs[label] - 0.1,
            int(borderline),
        ),
    )


def illustrations(store: Store, count: int, start: int = 0) -> list[int]:
    """`count` ingested media the model calls illustration confidently, oldest first."""
    ids = []
    for index in range(start, start + count):
        media_id = add_post(store, index)
        predict(store, media_id, "illustration")
        ids.append(media_id)
    return ids


def with_client(
    data_dir: Path, scenario: Callable[[TestClient], Awaitable[T]], settings: FeedConfig | None = None
) -> T:
    """Run `scenario` against the feed app (its own Store on `data_dir`) through aiohttp's test client."""

    async def main() -> T:
        app = create_app(settings or FeedConfig(), lambda: Store.open(data_dir))
        async with TestClient(TestServer(app)) as client:
            return await scenario(client)

    return asyncio.run(main())
