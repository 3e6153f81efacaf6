"""Import throughput: 1,000 generated images (PNG and JPEG, 640x480) through fetch + validate + dedupe + store.

Prints images/s for a fresh import and for a re-import of the same folder (which must skip every file),
both measured in this one run, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.config import IngestConfig  # noqa: E402
from bot.ingest.ingest import ingest_source  # noqa: E402
from bot.sources.folder import FolderSource  # noqa: E402
from storage import Store  # noqa: E402
from tests import imagegen  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        inbox = Path(tmp) / "inbox"
        for index in range(args.images):
            account = inbox / f"account{index % 10}"
            account.mkdir(parents=True, exist_ok=True)
            if index % 2:
                (account / f"{index}.jpg").write_bytes(imagegen.jpeg(index, size=(640, 480)))
            else:
                (account / f"{index}.png").write_bytes(imagegen.png(index, size=(640, 480)))
        settings = IngestConfig(progress=False)
        with Store.open(Path(tmp) / "data") as store:
            started = time.perf_counter()
            summary = ingest_source(store, FolderSource(inbox), settings)
            first = time.perf_counter() - started
            started = time.perf_counter()
            again = ingest_source(store, FolderSource(inbox), settings)
            second = time.perf_counter() - started
    result = {
        "images": args.images,
        "stored": summary.media_new,
        "import_images_per_s": round(args.images / first, 1),
        "reimport_images_per_s": round(args.images / second, 1),
        "reimport_speedup": round(first / second, 1),
        "reimport_new": again.media_new,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
