"""The SQLite schema as an ordered list of migrations; `PRAGMA user_version` records how many ran."""

from __future__ import annotations

import sqlite3

from storage.errors import storage_fault

LABEL_CHECK = "label IN ('illustration', 'screenshot', 'photo')"

SCHEMA_V1 = f"""
CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    handle TEXT NOT NULL,
    external_id TEXT,
    display_name TEXT,
    followed INTEGER NOT NULL DEFAULT 1,
    cursor TEXT,
    last_crawl_at TEXT,
    last_error TEXT,
    created_at TEXT NOT NULL,
    UNIQUE (source, handle)
);
CREATE TABLE posts (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    source TEXT NOT NULL,
    external_id TEXT NOT NULL,
    url TEXT,
    text TEXT,
    created_at TEXT,
    fetched_at TEXT NOT NULL,
    UNIQUE (source, external_id)
);
CREATE TABLE media (
    id INTEGER PRIMARY KEY,
    sha256 TEXT UNIQUE,
    phash TEXT,
    mime TEXT,
    ext TEXT,
    width INTEGER,
    height INTEGER,
    frames INTEGER,
    bytes INTEGER,
    status TEXT NOT NULL CHECK (status IN ('ok', 'rejected', 'removed')),
    reject_reason TEXT,
    source_url TEXT,
    first_seen_at TEXT NOT NULL
);
CREATE INDEX media_status ON media(status);
CREATE TABLE post_media (
    post_id INTEGER NOT NULL REFERENCES posts(id),
    media_id INTEGER NOT NULL REFERENCES media(id),
    position INTEGER NOT NULL DEFAULT 0,
    alt_text TEXT,
    source_url TEXT,
    PRIMARY KEY (post_id, media_id)
);
CREATE INDEX post_media_media ON post_media(media_id);
CREATE TABLE predictions (
    id INTEGER PRIMARY KEY,
    media_id INTEGER NOT NULL REFERENCES media(id),
    model_version TEXT NOT NULL,
    prob_illustration REAL NOT NULL,
    prob_screenshot REAL NOT NULL,
    prob_photo REAL NOT NULL,
    label TEXT NOT NULL CHECK ({LABEL_CHECK}),
    confidence REAL NOT NULL,
    margin REAL NOT NULL,
    borderline INTEGER NOT NULL,
    overlay_sha256 TEXT,
    created_at TEXT NOT NULL,
    UNIQUE (media_id, model_version)
);
CREATE TABLE labels (
    id INTEGER PRIMARY KEY,
    media_id INTEGER NOT NULL REFERENCES media(id),
    label TEXT NOT NULL CHECK ({LABEL_CHECK}),
    "by" TEXT NOT NULL,
    via TEXT NOT NULL,
    at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE INDEX labels_media ON labels(media_id);
CREATE TABLE review_queue (
    media_id INTEGER PRIMARY KEY REFERENCES media(id),
    reason TEXT NOT NULL,
    priority REAL NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'skipped')),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX review_queue_pending ON review_queue(state, priority);
CREATE TABLE models (
    version TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    backbone TEXT NOT NULL,
    metrics TEXT,
    data_summary TEXT,
    parent TEXT,
    active INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE TABLE features (
    media_id INTEGER NOT NULL REFERENCES media(id),
    backbone TEXT NOT NULL,
    vector BLOB NOT NULL,
    dim INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (media_id, backbone)
);
CREATE VIEW current_label AS
    SELECT media_id, label, "by", via, at FROM labels
    WHERE id IN (SELECT MAX(id) FROM labels WHERE revoked_at IS NULL GROUP BY media_id);
CREATE VIEW latest_prediction AS
    SELECT * FROM predictions WHERE id IN (SELECT MAX(id) FROM predictions GROUP BY media_id);
"""

# Network sources (bot/ingest/crawl.py): media downloads that failed and are retried on later runs, API reads per
# day (paid APIs have a daily budget), and how an account came to be followed (NULL: it only appeared as the
# author of crawled or imported posts; 'command': `illustfeed follow` or chat).
SOURCES_V2 = """
CREATE TABLE fetch_failures (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    post_external_id TEXT NOT NULL,
    url TEXT NOT NULL,
    post_json TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    given_up INTEGER NOT NULL DEFAULT 0,
    first_failed_at TEXT NOT NULL,
    last_failed_at TEXT NOT NULL,
    resolved_at TEXT,
    UNIQUE (source, post_external_id, url)
);
CREATE INDEX fetch_failures_open ON fetch_failures(source, resolved_at, given_up);
CREATE TABLE api_usage (
    source TEXT NOT NULL,
    day TEXT NOT NULL,
    reads INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (source, day)
);
ALTER TABLE accounts ADD COLUMN followed_via TEXT;
"""

# Feed (issue 7). The views answer "final label of one media" but not "newest media whose final label is X"
# without a GROUP BY over whole tables. media_verdict holds each media's latest human label and latest
# prediction, kept current by triggers on every write to labels and predictions, so a feed page is one
# index range. thumbnails maps a media to its derived thumbnail blob per spec ("webp-480").
FEED_V3 = """
CREATE INDEX predictions_media ON predictions(media_id);
CREATE TABLE media_verdict (
    media_id INTEGER PRIMARY KEY REFERENCES media(id),
    human_label TEXT,
    model_label TEXT,
    model_borderline INTEGER,
    final_label TEXT GENERATED ALWAYS AS (
        COALESCE(human_label, CASE WHEN model_borderline = 0 THEN model_label END)) VIRTUAL,
    any_label TEXT GENERATED ALWAYS AS (COALESCE(human_label, model_label)) VIRTUAL
);
CREATE INDEX media_verdict_final ON media_verdict(final_label, media_id);
CREATE INDEX media_verdict_human ON media_verdict(human_label, media_id);
CREATE INDEX media_verdict_any ON media_verdict(any_label, media_id);
INSERT INTO media_verdict (media_id, human_label, model_label, model_borderline)
    SELECT m.id, cl.label, lp.label, lp.borderline FROM media m
    LEFT JOIN current_label cl ON cl.media_id = m.id
    LEFT JOIN latest_prediction lp ON lp.media_id = m.id
    WHERE cl.label IS NOT NULL OR lp.label IS NOT NULL;

CREATE TRIGGER media_verdict_label_insert AFTER INSERT ON labels BEGIN
    INSERT OR IGNORE INTO media_verdict (media_id) VALUES (NEW.media_id);
    UPDATE media_verdict SET human_label = (SELECT label FROM labels WHERE media_id = NEW.media_id
        AND revoked_at IS NULL ORDER BY id DESC LIMIT 1) WHERE media_id = NEW.media_id;
END;
CREATE TRIGGER media_verdict_label_update AFTER UPDATE ON labels BEGIN
    INSERT OR IGNORE INTO media_verdict (media_id) VALUES (NEW.media_id);
    UPDATE media_verdict SET human_label = (SELECT label FROM labels WHERE media_id = media_verdict.media_id
        AND revoked_at IS NULL ORDER BY id DESC LIMIT 1) WHERE media_id IN (OLD.media_id, NEW.media_id);
END;
CREATE TRIGGER media_verdict_label_delete AFTER DELETE ON labels BEGIN
    UPDATE media_verdict SET human_label = (SELECT label FROM labels WHERE media_id = OLD.media_id
        AND revoked_at IS NULL ORDER BY id DESC LIMIT 1) WHERE media_id = OLD.media_id;
END;
CREATE TRIGGER media_verdict_prediction_insert AFTER INSERT ON predictions BEGIN
    INSERT OR IGNORE INTO media_verdict (media_id) VALUES (NEW.media_id);
    UPDATE media_verdict SET (model_label, model_borderline) = (SELECT label, borderline FROM predictions
        WHERE media_id = NEW.media_id ORDER BY id DESC LIMIT 1) WHERE media_id = NEW.media_id;
END;
CREATE TRIGGER media_verdict_prediction_update AFTER UPDATE ON predictions BEGIN
    INSERT OR IGNORE INTO media_verdict (media_id) VALUES (NEW.media_id);
    UPDATE media_verdict SET (model_label, model_borderline) = (SELECT label, borderline FROM predictions
        WHERE media_id = media_verdict.media_id ORDER BY id DESC LIMIT 1) WHERE media_id IN (OLD.media_id, NEW.media_id);
END;
CREATE TRIGGER media_verdict_prediction_delete AFTER DELETE ON predictions BEGIN
    UPDATE media_verdict SET (model_label, model_borderline) = (SELECT label, borderline FROM predictions
        WHERE media_id = OLD.media_id ORDER BY id DESC LIMIT 1) WHERE media_id = OLD.media_id;
END;

CREATE TABLE thumbnails (
    media_id INTEGER NOT NULL REFERENCES media(id),
    spec TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    ext TEXT NOT NULL,
    mime TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (media_id, spec)
);
"""

# Chat (issue 8): retrain requests the runner honours, and which media went to which feed channel.
CHAT_V4 = """
CREATE TABLE retrain_requests (
    id INTEGER PRIMARY KEY,
    requested_by TEXT NOT NULL,
    via TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    result TEXT
);
CREATE INDEX retrain_requests_open ON retrain_requests(finished_at, started_at);
CREATE TABLE feed_posts (
    media_id INTEGER NOT NULL REFERENCES media(id),
    channel TEXT NOT NULL,
    message_id TEXT,
    posted_at TEXT NOT NULL,
    PRIMARY KEY (media_id, channel)
);
"""

# Issue 16: a video's length (`frames` holds its decoded frame count); Bluesky accounts are found by DID.
VIDEO_AND_DIDS_V5 = """
ALTER TABLE media ADD COLUMN duration_s REAL;
CREATE INDEX accounts_external_id ON accounts(source, external_id);
CREATE TABLE account_former_handles (
    source TEXT NOT NULL,
    handle TEXT NOT NULL,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    renamed_at TEXT NOT NULL,
    PRIMARY KEY (source, handle)
);
"""

# Storage (issue 17): media whose stored file was found missing or not matching its row (`illustfeed check`,
# the feed server). The next import or crawl that meets the same bytes writes the file again and clears the row.
STORAGE_V6 = """
CREATE TABLE damaged_media (
    media_id INTEGER PRIMARY KEY REFERENCES media(id),
    problem TEXT NOT NULL,
    found_at TEXT NOT NULL
);
"""

# Append new migrations; never edit one that has shipped.
MIGRATIONS: tuple[str, ...] = (SCHEMA_V1, SOURCES_V2, FEED_V3, CHAT_V4, VIDEO_AND_DIDS_V5, STORAGE_V6)
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer illustfeed than this one."""


def split_statements(script: str) -> list[str]:
    """SQL statements of a script, split where sqlite3 says a statement is complete."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip():
        raise ValueError(f"incomplete SQL statement in migration: {pending.strip()[:80]!r}")
    return statements


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to SCHEMA_VERSION; returns the version it was at before.

    Each migration runs in a BEGIN IMMEDIATE transaction that re-reads the version, so two processes
    opening a new database at once cannot both apply it. `conn` must be in autocommit mode.
    """
    # Up to date (every open but the first after an upgrade): no write lock needed, so a reader opening the
    # store never waits behind another process's long write.
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current == SCHEMA_VERSION:
        return current
    before = None
    while True:
        conn.execute("BEGIN IMMEDIATE")
        current = None
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            before = current if before is None else before
            if current > SCHEMA_VERSION:
                raise SchemaTooNewError(
                    f"database schema version {current} is newer than this program's {SCHEMA_VERSION}; "
                    "upgrade illustfeed"
                )
            if current == SCHEMA_VERSION:
                conn.execute("COMMIT")
                return before
            for statement in split_statements(MIGRATIONS[current]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {current + 1}")
            conn.execute("COMMIT")
        except BaseException as error:
            # SQLite rolls back by itself on a full disk or an I/O error; a second ROLLBACK would replace the
            # real cause with "cannot rollback - no transaction is active".
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            step = "" if current is None else f" from version {current} to {current + 1} of {SCHEMA_VERSION}"
            fault = storage_fault(error, during=f"migrating the database schema{step} (it resumes on the next start)")
            if fault is not None and fault is not error:
                raise fault from error
            raise
