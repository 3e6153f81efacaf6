"""`illustfeed explain`: render where the classifier looked in a file or a stored media item.

The methods and the options each takes come from the torch-free registry `explain.METHODS`; torch and the
maps are loaded inside the handler, since every `illustfeed` command builds this parser.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from bot import app
from bot.cli import CommandError, open_store
from bot.config import Config
from classifier import LABELS
from explain import DEFAULT_METHOD, METHOD_NAMES, METHODS
from storage.files import atomic_write_bytes

if TYPE_CHECKING:
    from torch import nn

    from storage import Store


def register(subparsers: argparse._SubParsersAction) -> None:
    titles = ", ".join(info.title for info in METHODS.values())
    parser = subparsers.add_parser("explain", help=f"show where the classifier looked ({titles})")
    parser.add_argument(
        "media", metavar="PATH_OR_MEDIA_ID", help="an image or video file, or a media id / sha256 prefix"
    )
    parser.add_argument("--method", choices=METHOD_NAMES, default=DEFAULT_METHOD)
    parser.add_argument("--target", choices=LABELS, help="class to explain (default: the predicted one)")
    parser.add_argument(
        "--out", required=True, type=Path, help="overlay file (.png; animated media and videos: .gif or .mp4)"
    )
    parser.add_argument("--samples", type=int, default=1000, help="LIME: perturbed samples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="LIME: random seed of the samples (default 0)")
    parser.add_argument("--model", metavar="VERSION_OR_PATH", help="default: the active model")
    parser.set_defaults(handler=cmd_explain)


def resolve_source(reference: str, store: Store) -> Path:
    """An existing file path as given, else the stored blob of a media id or sha256 prefix."""
    path = Path(reference)
    if path.is_file():
        return path
    if path.suffix or os.sep in reference:
        raise CommandError(f"no such file: {reference}")
    return store.media_path(store.resolve_media(reference))


def method_options(method: str, samples: int, seed: int) -> dict:
    """The CLI flags a method declares it takes (`explain.METHODS[method].options`)."""
    offered = {"num_samples": samples, "seed": seed}
    return {name: offered[name] for name in METHODS[method].options}


def explain_to_file(
    model: nn.Module,
    source: Path,
    out: Path,
    method: str,
    target_label: str | None,
    lime_samples: int,
    lime_seed: int,
    max_frames: int,
) -> Path:
    """Render the explanation of `source` to `out` (suffix corrected to .gif/.mp4 for animated media); the path."""
    from explain import ExplainError

    labels = tuple(getattr(model, "labels", LABELS))
    if target_label is not None and target_label not in labels:
        raise CommandError(f"--target {target_label!r} is not one of the model's labels {labels}")
    try:
        overlay = app.explain_media(
            model,
            source,
            method,
            target=None if target_label is None else labels.index(target_label),
            options=method_options(method, lime_samples, lime_seed),
            max_frames=max_frames,
        )
    except ExplainError as error:
        raise CommandError(f"explain {source}: {error}") from error
    written = out if out.suffix.lower() == f".{overlay.ext}" else out.with_suffix(f".{overlay.ext}")
    atomic_write_bytes(written, overlay.data)
    return written


def cmd_explain(args: argparse.Namespace, config: Config) -> int:
    from classifier.model import ModelFileError
    from classifier.weights import WeightsError

    if args.samples < 2:
        raise CommandError(f"--samples must be at least 2, got {args.samples}")
    with open_store(config) as store:
        source = resolve_source(args.media, store)
        try:
            model = app.load_model(store, config, args.model)
        except (ModelFileError, WeightsError) as error:
            raise CommandError(f"explain: {error}") from error
        written = explain_to_file(
            model,
            source,
            args.out,
            args.method,
            args.target,
            args.samples,
            args.seed,
            max_frames=config.classifier.max_frames,
        )
    note = f" (a {written.suffix[1:].upper()} overlay, so the suffix was changed)" if written != args.out else ""
    print(f"wrote {written}{note}")
    return 0
