"""`illustfeed check`: every row has its file, every file its row, the database its integrity; `repair` fixes.

As git's fsck and restic's check: by default one stat per file (sizes against the rows); `read_data` also
hashes every blob against its name and runs SQLite's full `integrity_check` instead of `quick_check`.
Repair removes only what is provably garbage (orphans, temp files, bytes that are not what their name says),
marks damaged media so the next import or crawl meeting the same bytes writes them again (as hydrus'
file maintenance does), and regenerates derived files (overlays, thumbnails) through callbacks the caller
supplies, since those need the model or the feed's thumbnail spec.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from storage.blobs import EXT_PATTERN, SHA256_PATTERN
from storage.errors import StorageFault
from storage.store import CLASSIFY_REJECT_PREFIX, Store, restorable_rejection, utc_now

# Problem kinds.
MISSING_FILE = "missing file"  # a media row whose blob is gone
WRONG_SIZE = "wrong size"  # a blob whose size differs from its row (truncated, replaced)
WRONG_HASH = "wrong sha256"  # a blob (media or derived) whose bytes do not hash to its name (read_data only)
ORPHAN = "orphan file"  # a blob-named file no row refers to
STRAY = "unexpected file"  # a file in a blob folder whose name is not a blob name: reported, never removed
TEMP = "temporary file"  # left in a .tmp folder by a process that died or ran out of space
MISSING_OVERLAY = "missing overlay"  # a pending review item without its Grad-CAM overlay
MISSING_THUMBNAIL = "missing thumbnail"  # a thumbnails row whose file is gone
RESTORED_FILE = "rejected, file back"  # rejected by classify because its file was missing; the file is back
STALE_MARK = "marked damaged, intact"  # marked damaged earlier; its file is intact now
DATABASE = "database"  # PRAGMA integrity_check / quick_check did not answer ok

DAMAGED_KINDS = (MISSING_FILE, WRONG_SIZE, WRONG_HASH)

# Files younger than this may belong to a write in progress (blob first, row second; temp file, then rename).
DEFAULT_GRACE_S = 300.0
HASH_CHUNK = 1 << 20
OVERLAY_EXTS = ("png", "gif")  # a still's overlay, an animation's


@dataclass(frozen=True)
class Problem:
    kind: str
    path: str | None = None
    media_id: int | None = None
    sha256: str | None = None
    detail: str = ""

    def __str__(self) -> str:
        if self.media_id is not None:
            who = f"media {self.media_id} ({self.sha256[:12]})" if self.sha256 else f"media {self.media_id}"
        else:
            who = ""
        parts = [part for part in (who, self.detail, self.path) if part]
        return f"{self.kind}: " + ", ".join(parts)


@dataclass
class CheckReport:
    read_data: bool = False
    media_checked: int = 0  # media rows whose file was looked at
    files_seen: int = 0  # files under media/ and derived/
    bytes_hashed: int = 0
    database: str = "ok"
    damaged_marked: int = 0  # damaged_media rows
    problems: list[Problem] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def count(self, kind: str) -> int:
        return sum(problem.kind == kind for problem in self.problems)

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "read_data": self.read_data,
            "media_checked": self.media_checked,
            "files_seen": self.files_seen,
            "bytes_hashed": self.bytes_hashed,
            "database": self.database,
            "damaged_marked": self.damaged_marked,
            "seconds": round(self.seconds, 3),
            "problems": [dict(asdict(problem), text=str(problem)) for problem in self.problems],
            "repaired": self.repaired,
        }


def _blob_files(root: Path) -> Iterator[os.DirEntry]:
    """Files under `root`'s two levels of fan-out folders (`ab/cd/`), and anything misplaced above them."""
    if not root.is_dir():
        return
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if not (depth == 0 and entry.name == ".tmp"):
                        stack.append((Path(entry.path), depth + 1))
                else:
                    yield entry


def _in_place(root: Path, entry: os.DirEntry, sha256: str) -> bool:
    return Path(entry.path).parent == root / sha256[:2] / sha256[2:4]


def _split_name(name: str) -> tuple[str, str] | None:
    sha256, dot, ext = name.partition(".")
    if dot and SHA256_PATTERN.match(sha256) and EXT_PATTERN.match(ext):
        return sha256, ext
    return None


def file_sha256(path: str | Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _report_unreferenced(report, entry, parts, nobody: str, grace_s: float, now: float) -> None:
    """A blob-folder file nothing refers to: an orphan when it is named like a blob, else a stray file. Files
    younger than the grace period are left alone (a write may still be going on)."""
    if not _young(entry, grace_s, now):
        report.problems.append(
            Problem(
                ORPHAN if parts else STRAY,
                entry.path,
                sha256=parts and parts[0],
                detail=nobody if parts else "not a blob name",
            )
        )


def _young(entry: os.DirEntry, grace_s: float, now: float) -> bool:
    try:
        return now - entry.stat(follow_symlinks=False).st_mtime < grace_s
    except FileNotFoundError:
        return True  # gone meanwhile: someone is working on it


def check_store(
    store: Store, *, read_data: bool = False, expect_overlays: bool = True, grace_s: float = DEFAULT_GRACE_S
) -> CheckReport:
    """Look at every media row, blob file, derived file and temp file; change nothing."""
    started = time.monotonic()
    now = time.time()
    report = CheckReport(read_data=read_data)
    pragma = "integrity_check" if read_data else "quick_check"
    answers = [row[0] for row in store.conn.execute(f"PRAGMA {pragma}")]
    if answers != ["ok"]:
        report.database = "; ".join(answers[:5])
        report.problems.append(Problem(DATABASE, str(store.db_path), detail=f"{pragma}: {report.database}"))

    damaged = {row["media_id"]: row["problem"] for row in store.query("SELECT media_id, problem FROM damaged_media")}
    report.damaged_marked = len(damaged)
    # Media with a stored file: accepted ones, and those classify rejected later (ingest rejections store none).
    rows = {
        f"{row['sha256']}.{row['ext']}": row
        for row in store.query(
            "SELECT id, sha256, ext, bytes, status, reject_reason FROM media WHERE ext IS NOT NULL AND sha256 IS NOT NULL"
        )
    }
    seen: set[str] = set()
    intact: set[int] = set()
    root = store.blobs.root
    for entry in _blob_files(root):
        report.files_seen += 1
        row = rows.get(entry.name)
        parts = _split_name(entry.name)
        if row is None or not _in_place(root, entry, row["sha256"]):
            _report_unreferenced(report, entry, parts, "no media row refers to it", grace_s, now)
            continue
        seen.add(entry.name)
        size = entry.stat(follow_symlinks=False).st_size
        if row["bytes"] is not None and size != row["bytes"]:
            report.problems.append(
                Problem(WRONG_SIZE, entry.path, row["id"], row["sha256"], f"{size} bytes, the row says {row['bytes']}")
            )
            continue
        if read_data:
            digest, hashed = file_sha256(entry.path)
            report.bytes_hashed += hashed
            if digest != row["sha256"]:
                report.problems.append(
                    Problem(WRONG_HASH, entry.path, row["id"], row["sha256"], f"its bytes hash to {digest[:12]}")
                )
                continue
        intact.add(row["id"])
    report.media_checked = len(rows)
    for name, row in rows.items():
        if name in seen:
            continue
        if row["status"] == "ok" or restorable_rejection(row["reject_reason"]):
            note = "marked damaged: import or crawl the original again" if row["id"] in damaged else "its file is gone"
            report.problems.append(
                Problem(MISSING_FILE, str(store.blobs.path(row["sha256"], row["ext"])), row["id"], row["sha256"], note)
            )
    for row in rows.values():
        if row["id"] not in intact:
            continue
        if row["status"] == "rejected" and "No such file" in (row["reject_reason"] or ""):
            report.problems.append(Problem(RESTORED_FILE, None, row["id"], row["sha256"], row["reject_reason"]))
        if row["id"] in damaged:
            report.problems.append(Problem(STALE_MARK, None, row["id"], row["sha256"], damaged[row["id"]]))

    _check_derived(store, report, read_data, expect_overlays, grace_s, now)
    for blob_store in (store.blobs, store.derived):
        if blob_store.temp_dir.is_dir():
            for entry in os.scandir(blob_store.temp_dir):
                report.files_seen += 1
                if not _young(entry, grace_s, now):
                    report.problems.append(Problem(TEMP, entry.path, detail="left by an interrupted write"))
    report.seconds = time.monotonic() - started
    return report


def missing_overlays(store: Store, model_version: str | None = None) -> list[int]:
    """Media queued for review whose borderline prediction (by `model_version`, if given) has no overlay file:
    one never made (a full disk when classify ran) or one deleted since."""
    missing = []
    for row in _overlay_candidates(store):
        if not row["borderline"] or (model_version is not None and row["model_version"] != model_version):
            continue
        digest = row["overlay_sha256"]
        if digest is None or not any(store.derived.exists(digest, ext) for ext in OVERLAY_EXTS):
            missing.append(row["media_id"])
    return missing


def _overlay_candidates(store: Store) -> list[dict]:
    """Pending review items and their latest prediction (which decided the borderline call)."""
    return store.query(
        "SELECT q.media_id, m.sha256, p.model_version, p.overlay_sha256, p.borderline FROM review_queue q"
        " JOIN media m ON m.id = q.media_id AND m.status = 'ok'"
        " JOIN predictions p ON p.id = (SELECT MAX(id) FROM predictions WHERE media_id = q.media_id)"
        " WHERE q.state = 'pending' ORDER BY q.media_id"
    )


def _check_derived(
    store: Store, report: CheckReport, read_data: bool, expect_overlays: bool, grace_s: float, now: float
) -> None:
    thumbnails = store.query(
        "SELECT t.media_id, t.spec, t.sha256, t.ext, m.sha256 AS media_sha256 FROM thumbnails t"
        " JOIN media m ON m.id = t.media_id"
    )
    overlays = {
        row["overlay_sha256"]
        for row in store.query("SELECT DISTINCT overlay_sha256 FROM predictions WHERE overlay_sha256 IS NOT NULL")
    }
    referenced = overlays | {row["sha256"] for row in thumbnails}
    present: set[str] = set()
    root = store.derived.root
    for entry in _blob_files(root):
        report.files_seen += 1
        parts = _split_name(entry.name)
        if parts is None or parts[0] not in referenced or not _in_place(root, entry, parts[0]):
            _report_unreferenced(report, entry, parts, "no thumbnail or overlay refers to it", grace_s, now)
            continue
        if read_data:
            digest, hashed = file_sha256(entry.path)
            report.bytes_hashed += hashed
            if digest != parts[0]:
                report.problems.append(
                    Problem(WRONG_HASH, entry.path, detail=f"derived file; its bytes hash to {digest[:12]}")
                )
                continue
        present.add(parts[0])
    for row in thumbnails:
        if row["sha256"] not in present:
            report.problems.append(
                Problem(
                    MISSING_THUMBNAIL,
                    str(store.derived.path(row["sha256"], row["ext"])),
                    row["media_id"],
                    row["media_sha256"],
                    f"thumbnail {row['spec']}",
                )
            )
    for row in _overlay_candidates(store):
        if not row["borderline"]:
            continue
        if row["overlay_sha256"] is None and not expect_overlays:
            continue
        if row["overlay_sha256"] is None or row["overlay_sha256"] not in present:
            report.problems.append(
                Problem(
                    MISSING_OVERLAY,
                    None,
                    row["media_id"],
                    row["sha256"],
                    "queued for review without its Grad-CAM overlay",
                )
            )


# (store, media id) -> (encoded overlay, extension) for the media's latest prediction.
OverlayMaker = Callable[[Store, int], tuple[bytes, str]]
# (store, media id, thumbnail spec key) -> None: renders and records the thumbnail again.
ThumbnailMaker = Callable[[Store, int, str], None]


def mark_damaged(store: Store, media_id: int, problem: str) -> None:
    """Remember that a media's file is missing or wrong, so the next import or crawl that meets it rewrites it."""
    store.execute(
        "INSERT INTO damaged_media (media_id, problem, found_at) VALUES (?, ?, ?) "
        "ON CONFLICT (media_id) DO UPDATE SET problem = excluded.problem, found_at = excluded.found_at",
        (media_id, problem, utc_now()),
    )


def repair_store(
    store: Store,
    report: CheckReport,
    *,
    make_overlay: OverlayMaker | None = None,
    make_thumbnail: ThumbnailMaker | None = None,
) -> list[str]:
    """Fix what `report` found, as far as it can be fixed here; returns one line per action.

    Never removes a stored original that matches its row: only orphans, temp files, and bytes that are not
    what their name says (kept, they would stop the next import from writing the right ones).
    """
    actions: list[str] = []
    for problem in report.problems:
        if problem.kind in (ORPHAN, TEMP):
            Path(problem.path).unlink(missing_ok=True)
            actions.append(f"removed {problem.kind} {problem.path}")
        elif problem.kind in DAMAGED_KINDS and problem.media_id is not None:
            with store.transaction():
                if problem.kind != MISSING_FILE:
                    Path(problem.path).unlink(missing_ok=True)
                store.execute(
                    "UPDATE media SET status = 'ok', reject_reason = NULL WHERE id = ? AND status = "
                    "'rejected' AND reject_reason LIKE ?",
                    (problem.media_id, CLASSIFY_REJECT_PREFIX + "%"),
                )
                mark_damaged(store, problem.media_id, f"{problem.kind}: {problem.detail}")
            actions.append(
                f"marked media {problem.media_id} ({problem.sha256[:12]}) damaged ({problem.kind}); "
                "importing or crawling the original again restores it"
            )
        elif problem.kind == WRONG_HASH:  # a derived file: remove it, its thumbnail or overlay is made again
            Path(problem.path).unlink(missing_ok=True)
            actions.append(f"removed damaged derived file {problem.path}")
        elif problem.kind == RESTORED_FILE:
            store.execute("UPDATE media SET status = 'ok', reject_reason = NULL WHERE id = ?", (problem.media_id,))
            actions.append(f"un-rejected media {problem.media_id}: its file is back; the next classify scores it")
        elif problem.kind == STALE_MARK:
            store.execute("DELETE FROM damaged_media WHERE media_id = ?", (problem.media_id,))
            actions.append(f"media {problem.media_id} is intact again")
    # Derived files last: a thumbnail or overlay is rendered from an original that must be intact.
    bad_derived = {
        Path(p.path).name.partition(".")[0]
        for p in report.problems
        if p.kind == MISSING_THUMBNAIL or (p.kind == WRONG_HASH and p.media_id is None)
    }
    for row in _thumbnails_of(store, bad_derived):
        store.execute("DELETE FROM thumbnails WHERE media_id = ? AND spec = ?", (row["media_id"], row["spec"]))
        if make_thumbnail is not None and store.blobs.intact(*_blob_of(store, row["media_id"])):
            make_thumbnail(store, row["media_id"], row["spec"])
            actions.append(f"made thumbnail {row['spec']} of media {row['media_id']} again")
        else:
            actions.append(
                f"forgot thumbnail {row['spec']} of media {row['media_id']} "
                "(the feed server makes it again on first view)"
            )
    overlay_media = {p.media_id for p in report.problems if p.kind == MISSING_OVERLAY}
    overlay_media |= _overlays_lost_with(store, report)
    for media_id in sorted(overlay_media):
        if make_overlay is None:
            continue
        if not store.blobs.intact(*_blob_of(store, media_id)):
            actions.append(f"overlay of media {media_id} waits for its original to be restored")
            continue
        try:
            regenerate_overlay(store, media_id, make_overlay)
        except (StorageFault, sqlite3.Error):
            raise  # the disk: stop and say so
        except Exception as error:  # the model or the image: this overlay stays missing, the others go on
            actions.append(f"overlay of media {media_id} not made: {type(error).__name__}: {error}")
            continue
        actions.append(f"made the overlay of media {media_id} again")
    return actions


def _thumbnails_of(store: Store, sha256s: set[str]) -> list[dict]:
    rows = store.query("SELECT media_id, spec, sha256 FROM thumbnails")
    return [row for row in rows if row["sha256"] in sha256s]


def _blob_of(store: Store, media_id: int) -> tuple[str, str, int]:
    row = store.query_one("SELECT sha256, ext, bytes FROM media WHERE id = ?", (media_id,))
    return row["sha256"], row["ext"], row["bytes"]


def _overlays_lost_with(store: Store, report: CheckReport) -> set[int]:
    """Pending items whose overlay was one of the damaged derived files removed above."""
    removed = {
        Path(p.path).name.partition(".")[0] for p in report.problems if p.kind == WRONG_HASH and p.media_id is None
    }
    if not removed:
        return set()
    return {row["media_id"] for row in _overlay_candidates(store) if row["overlay_sha256"] in removed}


def regenerate_overlay(store: Store, media_id: int, make_overlay: OverlayMaker) -> str:
    """Render the overlay of a media's latest prediction again and record it; returns its sha256."""
    data, ext = make_overlay(store, media_id)
    digest = store.derived.put(data, ext)
    with store.transaction():
        store.execute(
            "UPDATE predictions SET overlay_sha256 = ? WHERE id = (SELECT MAX(id) FROM predictions WHERE media_id = ?)",
            (digest, media_id),
        )
    return digest


def check_and_repair(
    store: Store,
    *,
    read_data: bool = False,
    expect_overlays: bool = True,
    make_overlay: OverlayMaker | None = None,
    make_thumbnail: ThumbnailMaker | None = None,
    grace_s: float = DEFAULT_GRACE_S,
) -> CheckReport:
    """Check, repair what was found, and check again: the report holds what remains and what was done."""
    started = time.monotonic()
    first = check_store(store, read_data=read_data, expect_overlays=expect_overlays, grace_s=grace_s)
    actions = repair_store(store, first, make_overlay=make_overlay, make_thumbnail=make_thumbnail)
    # The second pass need not hash again: repair only removed files or rewrote derived ones it just hashed.
    final = check_store(store, read_data=False, expect_overlays=expect_overlays, grace_s=grace_s)
    final.read_data, final.bytes_hashed, final.repaired = read_data, first.bytes_hashed, actions
    final.problems.extend(p for p in first.problems if p.kind == DATABASE and p not in final.problems)
    final.database = first.database
    final.seconds = time.monotonic() - started
    return final
