"""`illustfeed check [--read-data] [--repair] [--json]`: a thin shell over storage.check, plus the model and
thumbnail renderers that repair needs (they live above storage)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from bot import app
from bot.cli import open_store
from bot.config import Config
from bot.run.lock import DataDirLock, DataDirLocked
from storage import Store
from storage.check import OverlayMaker, ThumbnailMaker, check_and_repair, check_store
from storage.errors import EXIT_DAMAGED, EXIT_LOCKED


def overlay_maker(config: Config) -> OverlayMaker | None:
    """Renders a media's overlay for its latest prediction with the model version that made it (loaded once)."""
    render = app.overlay_renderer(config.classifier)
    if render is None:
        return None
    models: dict[str, object] = {}

    def make(store: Store, media_id: int) -> tuple[bytes, str]:
        prediction = store.query_one(
            "SELECT model_version, prob_illustration, prob_screenshot, prob_photo FROM predictions"
            " WHERE media_id = ? ORDER BY id DESC LIMIT 1",
            (media_id,),
        )
        version = prediction["model_version"]
        if version not in models:
            models[version] = _model_of_version(store, config, version)
        model = models[version]
        probabilities = [prediction[f"prob_{label}"] for label in model.labels]
        return render(model, store.media_path(media_id), probabilities)

    return make


def _model_of_version(store: Store, config: Config, version: str):
    """The model that made a prediction: a registered version, or the active/shipped one when it is that version.
    Another model's map would explain a call it did not make, so none is drawn then."""
    from classifier.model import ModelFileError
    from classifier.versions import ModelVersionError

    try:
        return app.load_model(store, config, version)
    except (ModelVersionError, ModelFileError):
        model = app.load_model(store, config)
        if model.version != version:
            raise ModelFileError(f"model version {version} that made the prediction is no longer available") from None
        return model


def thumbnail_maker(config: Config) -> ThumbnailMaker:
    from bot.feed.thumbnails import FORMATS, ThumbnailSpec, record_thumbnail, render_thumbnail

    def make(store: Store, media_id: int, spec_key: str) -> None:
        fmt, _, size = spec_key.partition("-")
        spec = (
            ThumbnailSpec(int(size), fmt)
            if fmt in FORMATS and size.isdigit()
            else ThumbnailSpec(config.feed.thumbnail_size, config.feed.thumbnail_format)
        )
        data, width, height = render_thumbnail(store.media_path(media_id), spec)
        record_thumbnail(store, media_id, spec, data, width, height)

    return make


def cmd_check(args: argparse.Namespace, config: Config) -> int:
    if args.repair:
        # Repair removes files no row names yet: a running bot's import between writing a blob and committing
        # its row looks exactly like that. The bot's own lock keeps the two apart.
        try:
            with DataDirLock(config.data_path):
                report = _repair(args, config)
        except DataDirLocked as error:
            print(f"illustfeed: error: check --repair changes the data dir: {error}", file=sys.stderr)
            return EXIT_LOCKED
    else:
        # Checking alone changes nothing, so it also runs on a read-only data dir and beside a running bot.
        with open_store(config, read_only=None) as store:
            report = check_store(store, read_data=args.read_data, expect_overlays=config.classifier.overlays)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        _print_report(report, print)
    return 0 if report.ok else EXIT_DAMAGED


def _repair(args: argparse.Namespace, config: Config):
    with open_store(config, read_only=False) as store:
        return check_and_repair(
            store,
            read_data=args.read_data,
            expect_overlays=config.classifier.overlays,
            make_overlay=overlay_maker(config),
            make_thumbnail=thumbnail_maker(config),
        )


def _print_report(report, say: Callable[[str], None]) -> None:
    for action in report.repaired:
        say(f"repaired: {action}")
    for problem in report.problems:
        say(f"problem: {problem}")
    hashed = f", {report.bytes_hashed / 1e6:.1f} MB hashed" if report.read_data else ""
    verdict = "no problems" if report.ok else f"{len(report.problems)} problems remain"
    hint = "" if report.ok or report.repaired else "; `illustfeed check --repair` fixes what it can"
    say(
        f"checked {report.media_checked} media, {report.files_seen} files{hashed}, database {report.database} "
        f"in {report.seconds:.1f} s: {verdict}{hint}"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    check = subparsers.add_parser("check", help="verify stored files against the database; --repair fixes")
    check.add_argument(
        "--read-data",
        action="store_true",
        help="also hash every file against its sha256 name, and run SQLite's full integrity_check",
    )
    check.add_argument(
        "--repair",
        action="store_true",
        help="remove orphans and temp files, remake overlays and thumbnails, mark damaged media "
        "so the next import or crawl restores them",
    )
    check.add_argument("--json", action="store_true", help="one JSON object")
    check.set_defaults(handler=cmd_check)
