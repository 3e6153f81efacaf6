"""Crawl throughput: media per second through fetch + validate + store, for N generated images served by `responses`.

One X account with N photo tweets (100 per API page) on a fake X API; the whole crawl path runs (API pages,
downloads with the byte limit and content-type check, Pillow validation, pHash, near-duplicate lookup,
blob write, one SQLite transaction per post). Network time is zero, so this measures our own cost.

    python benchmarks/bench_crawl.py [--images 1000] [--size 512]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import responses

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.config import parse_config  # noqa: E402
from bot.ingest.crawl import crawl_once  # noqa: E402
from bot.sources.x import XSource  # noqa: E402
from storage import Store  # noqa: E402
from tests.test_sources_x import FakeClock, FakeX, http_for, make_jpeg  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=512, help="image width in pixels (height is 3/4 of it)")
    args = parser.parse_args()

    clock = FakeClock()
    x = FakeX(clock)
    x.add_user("101", "alice")
    started = time.perf_counter()
    for index in range(args.images):
        x.tweet("101", str(10_000 + index), [x.photo(make_jpeg(index, (args.size, args.size * 3 // 4)))])
    generated_s = time.perf_counter() - started
    total_bytes = sum(len(body) for _status, _type, body in x.files.values()) // 3  # 3 size names per photo

    fetch_seconds = 0.0
    original_fetch = XSource.fetch

    def timed_fetch(self, ref):
        nonlocal fetch_seconds
        begin = time.perf_counter()
        try:
            return original_fetch(self, ref)
        finally:
            fetch_seconds += time.perf_counter() - begin

    XSource.fetch = timed_fetch
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config(
            {
                "data_dir": f"{tmp}/data",
                "ingest": {"progress": False},
                "sources": {
                    "folder": {"enabled": False},
                    "x": {
                        "bearer_token": "bench",
                        "accounts": ["alice"],
                        "backfill_tweets": args.images,
                        "page_size": 100,
                        "daily_read_budget": 0,
                    },
                },
            },
            environ={},
        )
        with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
            x.install(mock)
            with Store.open(config.data_path) as store:
                begin, begin_cpu = time.perf_counter(), time.process_time()
                summary = crawl_once(store, config, http=http_for(clock))
                crawl_s, crawl_cpu_s = time.perf_counter() - begin, time.process_time() - begin_cpu
                stored = store.scalar("SELECT COUNT(*) FROM media WHERE status = 'ok'")
    assert stored == args.images, summary.text()
    print(
        f"generated {args.images} JPEGs of {args.size}x{args.size * 3 // 4} "
        f"({total_bytes / args.images / 1024:.0f} KiB each) in {generated_s:.1f} s"
    )
    print(summary.text())
    print(
        f"crawl: {stored} media in {crawl_s:.2f} s = {stored / crawl_s:.1f} media/s "
        f"({total_bytes / crawl_s / 1e6:.1f} MB/s); {stored / crawl_cpu_s:.1f} media per CPU second "
        f"(wall/CPU {crawl_s / crawl_cpu_s:.2f}: above 1 means waiting on disk sync or a busy machine)"
    )
    print(
        f"share of crawl time in fetch (HTTP through responses, streaming, limits): {fetch_seconds / crawl_s:.1%}; "
        f"validate + dedupe + store: {1 - fetch_seconds / crawl_s:.1%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
