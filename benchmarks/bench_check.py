"""`illustfeed check` speed: sizes only on 100,000 media, and `--read-data` (every blob hashed) on 10,000.

Rows and small blob files (a few KB of random bytes, named by their sha256) are generated straight into a
store, then `check_store` runs on each; the 100k store also gets a few faults, which must all be found.
Prints media/s and MB/s for each run, measured in this one run, the ratio between them, and the CPU flags
that matter for hashing (sha_ni).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage import Store, sha256_hex, utc_now  # noqa: E402
from storage.check import MISSING_FILE, ORPHAN, WRONG_SIZE, check_store  # noqa: E402


def fill_store(data_dir: Path, media: int, blob_bytes: int) -> Store:
    """`media` rows with their blob files, written without fsync (a benchmark fixture, not the store's path)."""
    store = Store.open(data_dir)
    now = utc_now()
    rows = []
    made_dirs: set[Path] = set()
    for index in range(media):
        data = os.urandom(blob_bytes - 8) + index.to_bytes(8, "little")
        digest = sha256_hex(data)
        path = store.blobs.path(digest, "png")
        if path.parent not in made_dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            made_dirs.add(path.parent)
        path.write_bytes(data)
        rows.append((digest, "png", "image/png", len(data), "ok", now))
    with store.transaction():
        store.conn.executemany(
            "INSERT INTO media (sha256, ext, mime, bytes, status, first_seen_at) VALUES (?, ?, ?, ?, ?, ?)", rows
        )
    return store


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(flag for flag in flags if flag in ("sha_ni", "avx2", "avx512f"))


def timed_check(store: Store, read_data: bool) -> tuple[float, object]:
    started = time.perf_counter()
    report = check_store(store, read_data=read_data, grace_s=0)
    return time.perf_counter() - started, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--media", type=int, default=100_000, help="media for the sizes-only check")
    parser.add_argument("--read-data-media", type=int, default=10_000, help="media for the --read-data check")
    parser.add_argument("--blob-bytes", type=int, default=4096)
    parser.add_argument(
        "--dir",
        help="where to build the stores (default: the system temp folder); "
        "/dev/shm measures check itself, a disk folder adds the disk's speed",
    )
    args = parser.parse_args()
    result: dict = {
        "cpu_flags": cpu_flags(),
        "cpus": os.cpu_count(),
        "blob_bytes": args.blob_bytes,
        "dir": args.dir or tempfile.gettempdir(),
    }
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        started = time.perf_counter()
        with fill_store(Path(tmp) / "big", args.media, args.blob_bytes) as store:
            result["generate_s"] = round(time.perf_counter() - started, 1)
            rows = store.query("SELECT id, sha256, ext FROM media ORDER BY id LIMIT 2")
            store.blobs.path(rows[0]["sha256"], "png").unlink()
            store.blobs.path(rows[1]["sha256"], "png").write_bytes(b"short")
            (store.blobs.root / "00" / "00").mkdir(parents=True, exist_ok=True)
            (store.blobs.root / "00" / "00" / ("0000" + "1" * 60 + ".png")).write_bytes(b"orphan")
            seconds, report = timed_check(store, read_data=False)
            found = sorted(problem.kind for problem in report.problems)
            assert found == sorted([MISSING_FILE, WRONG_SIZE, ORPHAN]), found
            result["sizes_only"] = {
                "media": args.media,
                "seconds": round(seconds, 2),
                "media_per_s": round(args.media / seconds),
            }
        with fill_store(Path(tmp) / "small", args.read_data_media, args.blob_bytes) as store:
            seconds, report = timed_check(store, read_data=False)
            assert report.ok, report.problems
            sizes_rate = args.read_data_media / seconds
            seconds, report = timed_check(store, read_data=True)
            assert report.ok and report.bytes_hashed == args.read_data_media * args.blob_bytes, report.problems
            result["read_data"] = {
                "media": args.read_data_media,
                "seconds": round(seconds, 2),
                "media_per_s": round(args.read_data_media / seconds),
                "mb_per_s": round(report.bytes_hashed / seconds / 1e6, 1),
                "sizes_only_media_per_s_same_store": round(sizes_rate),
                "read_data_cost_ratio": round(sizes_rate / (args.read_data_media / seconds), 1),
            }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
