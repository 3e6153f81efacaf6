"""Review page latency on a store of 100,000 media with ~10,000 waiting for review: GET /review over real HTTP,
p50/p95 against the same page on a store with one waiting item (target p95 < 50 ms).

Usage: python benchmarks/bench_review.py [--media 100000] [--requests 200]

The store is filled as bench_feed.py fills it; every borderline prediction is queued with a priority spread as
the classifier's 1 - margin spreads, and 10% of the queue is skipped. The page reads the queue's head, its prediction,
credit and overlay, which is what must stay fast as the queue grows.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_feed import TARGET_P95_MS, fill, percentiles  # noqa: E402
from bot.chat.web import COOKIE, EXTENSIONS, session_value  # noqa: E402
from bot.config import Config, FeedConfig  # noqa: E402
from bot.feed import server_url, start_feed_server  # noqa: E402
from storage import Store  # noqa: E402

TOKEN = "bench-review-token"


def queue_borderline(store: Store) -> int:
    with store.transaction():
        store.execute(
            "INSERT OR IGNORE INTO review_queue (media_id, reason, priority, state, created_at, updated_at) "
            "SELECT media_id, 'bench', 0.85 + (abs(random()) % 1000) / 10000.0, "
            "CASE WHEN media_id % 10 = 0 THEN 'skipped' ELSE 'pending' END, "
            "printf('2026-01-01T00:00:%05d', media_id), 't' FROM predictions WHERE borderline = 1"
        )
    store.execute("ANALYZE")
    return store.scalar("SELECT COUNT(*) FROM review_queue")


async def measure(url: str, requests: int) -> list[float]:
    timings = []
    async with aiohttp.ClientSession(cookies={COOKIE: session_value(TOKEN)}) as session:
        for _ in range(requests):
            started = time.perf_counter()
            async with session.get(f"{url}/review") as response:
                body = await response.text()
                assert response.status == 200 and "waiting for review" in body, response.status
            timings.append((time.perf_counter() - started) * 1000)
    return timings


async def page_timings(data_dir: Path, requests: int) -> tuple[float, float]:
    config = Config(data_dir=str(data_dir), feed=FeedConfig(review_token=TOKEN))
    runner = await start_feed_server(config, host="127.0.0.1", port=0, extensions=EXTENSIONS)
    try:
        url = server_url(runner)
        await measure(url, 5)
        return percentiles(await measure(url, requests))
    finally:
        await runner.cleanup()


async def run(root: Path, media_count: int, requests: int) -> None:
    big, small = root / "big", root / "small"
    with Store.open(big) as store:
        started = time.perf_counter()
        fill(store, media_count)
        queued = queue_borderline(store)
        print(f"filled {media_count} media, {queued} queued for review, in {time.perf_counter() - started:.1f} s")
    with Store.open(small) as store:
        fill(store, 10)
        store.execute("DELETE FROM predictions WHERE media_id != 1")
        store.execute("UPDATE predictions SET borderline = 1")
        queue_borderline(store)
    big_p50, big_p95 = await page_timings(big, requests)
    small_p50, small_p95 = await page_timings(small, requests)
    print(f"\n{'store':34} {'p50 ms':>8} {'p95 ms':>8}")
    print(f"{f'{media_count} media, {queued} queued':34} {big_p50:8.2f} {big_p95:8.2f}")
    print(f"{'10 media, 1 queued':34} {small_p50:8.2f} {small_p95:8.2f}")
    print(
        f"\np95 ratio big/small {big_p95 / small_p95:.2f}; p95 vs target {TARGET_P95_MS:.0f} ms: "
        f"{'OK' if big_p95 < TARGET_P95_MS else 'MISSED'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--media", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-review-") as temp:
        asyncio.run(run(Path(temp), args.media, args.requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
