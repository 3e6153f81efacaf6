"""`illustfeed classify | train | eval | model | bench`: thin shells over the classifier's library functions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bot import app
from bot.cli import CommandError, open_store
from bot.config import Config


# Where `illustfeed bench` takes its images when --data is not given (a labelled folder of the user's).
BENCH_DATA_ENV = "ILLUSTFEED_BENCH_DATA"


def _classifier_errors_as_command_errors(handler):
    """The classifier's own exceptions become `illustfeed: error: ...` lines, not tracebacks."""

    def run(args: argparse.Namespace, config: Config) -> int:
        from classifier.data import DatasetError
        from classifier.model import ModelFileError
        from classifier.versions import ModelVersionError
        from classifier.weights import WeightsError

        try:
            return handler(args, config)
        except (DatasetError, ModelFileError, ModelVersionError, WeightsError) as error:
            raise CommandError(f"{args.command}: {error}") from error

    return run


def cmd_classify(args: argparse.Namespace, config: Config) -> int:
    settings = config.classifier
    with open_store(config) as store:
        model = app.load_model(store, config, args.model)
        summary = app.classify(store, config, model, limit=args.limit, progress=settings.progress and not args.json)
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        print(
            f"model {summary.model_version} ({summary.precision}): {summary.classified} classified "
            f"({summary.from_cached_features} from cached features), {summary.borderline} borderline, "
            f"{summary.queued_for_review} queued for review, {summary.overlays} overlays, {summary.failed} failed"
        )
        for problem in summary.problems:
            print(f"  {problem}")
    return 1 if summary.failed and not summary.classified else 0


def cmd_train(args: argparse.Namespace, config: Config) -> int:
    from classifier.data import scan_folders, store_labelled
    from classifier.runtime import apply_threads, train_and_register
    from classifier.train import TrainOptions

    apply_threads(config.classifier)
    defaults = TrainOptions()
    options = TrainOptions(
        mode=args.mode,
        epochs=args.epochs or (defaults.epochs if args.mode == "head" else 15),
        patience=args.patience or (defaults.patience if args.mode == "head" else 4),
        seed=args.seed,
        progress=config.classifier.progress and not args.json,
        policy_targets=config.classifier.policy_targets(),
    )
    with open_store(config) as store:
        problems: list[str] = []
        if args.data:
            items, problems = scan_folders(args.data)
            source = "folder:" + ",".join(str(Path(folder).resolve()) for folder in args.data)
        else:
            items, source = store_labelled(store), "store-labels"
        if not items:
            raise CommandError("train: no labelled images (give --data DIR or label media first)")
        report = train_and_register(store, config, items, options, source=source, problems=problems)
    if args.json:
        print(json.dumps(report))
        return 0
    from classifier.evaluate import format_per_origin, format_report

    state = "activated" if report["activated"] else "kept inactive"
    print(f"model {report['version']} {state} ({report['promotion']})")
    print(f"  file: {report['path']}")
    print(format_report(report["metrics"]))
    if report["metrics"].get("feed") is not None:
        from classifier.policy import format_feed_figures

        print("validation under the fitted review policy: " + format_feed_figures(report["metrics"]["feed"]))
    print("validation by origin (the split keeps each origin on one side):")
    print(format_per_origin(report["metrics"]["per_origin"]))
    skipped = report["data_summary"]["skipped"]
    if skipped["count"]:
        print(f"{skipped['count']} inputs skipped:")
        for line in skipped["inputs"]:
            print(f"  {line}")
    return 0


def cmd_eval(args: argparse.Namespace, config: Config) -> int:
    from classifier.data import scan_folder
    from classifier.evaluate import (
        evaluate_model,
        format_per_origin,
        format_report,
        per_origin_results,
        save_confusion_png,
    )

    items = scan_folder(args.data)
    with open_store(config) as store:
        model = app.load_model(store, config, args.model)
    metrics, scored = evaluate_model(
        model,
        items,
        runner=app.make_runner(model, config.classifier, config.data_path),
        batch_size=config.classifier.batch_size,
        max_frames=config.classifier.max_frames,
    )
    skipped = metrics.pop("skipped")
    decoded = [image for image in scored if image.predicted is not None]
    # Per origin only when a manifest groups the images (otherwise each image is its own origin).
    grouped = len({image.item.group for image in decoded}) < len(decoded)
    metrics["per_origin"] = (
        per_origin_results(
            [image.item.label for image in decoded],
            [image.predicted for image in decoded],
            [image.item.group for image in decoded],
            model.labels,
        )
        if grouped
        else None
    )
    png = Path(args.png) if args.png else config.data_path / "reports" / f"confusion-{model.version}.png"
    save_confusion_png(metrics, png, title=f"{model.version} on {Path(args.data).name}")
    if args.errors:
        from classifier.errors import write_errors

        errors = write_errors(
            scored,
            model.labels,
            args.errors,
            root=Path(args.data),
            title=f"{model.version} on {args.data}: misclassified, worst first",
        )
        shown = "" if errors.on_sheet == errors.mistakes else f" (the {errors.on_sheet} worst on the sheet)"
        print(
            f"{errors.mistakes} misclassified images: {errors.csv_path}, {errors.sheet_path}{shown}",
            file=sys.stderr if args.json else sys.stdout,
        )
    if args.json:
        print(json.dumps(metrics))
        print(
            f"confusion matrix: {png}" + (f"; {skipped} undecodable images skipped" if skipped else ""), file=sys.stderr
        )
    else:
        from classifier.policy import format_feed_figures

        print(f"model {model.version} on {args.data} ({len(items) - skipped} images)")
        print(format_report(metrics))
        print(
            "under the model's review policy: " + format_feed_figures(metrics["feed"])
            if metrics["feed"]
            else "this model has no review policy: the borderline rule of [classifier] decides review"
        )
        if metrics["per_origin"]:
            print("by origin (manifest.csv):")
            print(format_per_origin(metrics["per_origin"]))
        print(f"confusion matrix: {png}")
        if skipped:
            print(f"{skipped} undecodable images skipped")
    return 0


def cmd_model(args: argparse.Namespace, config: Config) -> int:
    from classifier.versions import activate, list_models, rollback

    with open_store(config) as store:
        if args.action == "list":
            rows = list_models(store)
            if args.json:
                print(json.dumps(rows))
                return 0
            if not rows:
                print("no trained models (the shipped default model is used)")
            for row in rows:
                metrics = row["metrics"]
                recall = metrics.get("per_class", {}).get("illustration", {}).get("recall")
                scores = (
                    f"illustration recall {recall:.3f}, macro-F1 {metrics['macro_f1']:.3f}"
                    if recall is not None
                    else "no metrics"
                )
                marker = "*" if row["active"] else " "
                print(f"{marker} {row['version']}  {scores}  parent {row['parent'] or '-'}  {row['created_at']}")
            return 0
        if args.action == "activate":
            if not args.version:
                raise CommandError("model activate needs a VERSION")
            row = activate(store, args.version)
        else:
            row = rollback(store)
    print(json.dumps({"active": row["version"]}) if args.json else f"active model: {row['version']}")
    return 0


def cmd_bench(args: argparse.Namespace, config: Config) -> int:
    from classifier.bench import benchmark
    from classifier.data import scan_folder
    from classifier.runtime import apply_threads

    data = args.data or os.environ.get(BENCH_DATA_ENV)
    if not data:
        raise CommandError(
            f"bench: give --data DIR (a labelled folder: DIR/illustration, DIR/screenshot, "
            f"DIR/photo) or set {BENCH_DATA_ENV}"
        )
    apply_threads(config.classifier)
    sources = [item.source for item in scan_folder(data)]
    sources = sources[:: max(1, len(sources) // args.limit)][: args.limit]
    with open_store(config) as store:
        model = app.load_model(store, config, args.model)
    result = benchmark(
        model,
        sources,
        precision=args.precision or config.classifier.precision,
        batch_size=config.classifier.batch_size,
        max_frames=config.classifier.max_frames,
    )
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


def register(subparsers) -> None:
    classify = subparsers.add_parser("classify", help="classify media that have no prediction from the model")
    classify.add_argument("--model", metavar="VERSION_OR_PATH", help="default: the active model")
    classify.add_argument("--limit", type=int, help="classify at most this many media")
    classify.add_argument("--json", action="store_true", help="print the summary as JSON")
    classify.set_defaults(handler=_classifier_errors_as_command_errors(cmd_classify))

    train = subparsers.add_parser("train", help="train a model version (activated if not worse)")
    train.add_argument(
        "--data",
        metavar="DIR",
        action="append",
        help="DIR/illustration, DIR/screenshot, DIR/photo, grouped by origin through DIR/manifest.csv "
        "when present; repeat to train on several folders (default: the store's human labels)",
    )
    train.add_argument(
        "--mode",
        choices=("head", "last_block", "full"),
        default="head",
        help="head: linear head on cached features (default); last_block/full: fine-tune conv layers",
    )
    train.add_argument("--epochs", type=int, help="maximum epochs (early stopping may end sooner)")
    train.add_argument("--patience", type=int, help="epochs without validation improvement before stopping")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--json", action="store_true", help="print the report as JSON")
    train.set_defaults(handler=_classifier_errors_as_command_errors(cmd_train))

    evaluate = subparsers.add_parser("eval", help="score a model on a labelled folder")
    evaluate.add_argument("--data", metavar="DIR", required=True, help="DIR/illustration, DIR/screenshot, DIR/photo")
    evaluate.add_argument(
        "--model", metavar="VERSION_OR_PATH", help="default: the active model, else the shipped default model"
    )
    evaluate.add_argument("--png", metavar="PATH", help="confusion matrix image (default: <data_dir>/reports/)")
    evaluate.add_argument(
        "--errors",
        metavar="DIR",
        help="write every misclassified file with true/predicted "
        "labels and probabilities to DIR/errors.csv, and a contact sheet DIR/errors.png",
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.set_defaults(handler=_classifier_errors_as_command_errors(cmd_eval))

    model = subparsers.add_parser("model", help="list, activate or roll back model versions")
    model.add_argument("action", choices=("list", "activate", "rollback"))
    model.add_argument("version", nargs="?", help="for activate")
    model.add_argument("--json", action="store_true")
    model.set_defaults(handler=_classifier_errors_as_command_errors(cmd_model))

    bench = subparsers.add_parser("bench", help="naive vs optimised classification speed on the same images")
    bench.add_argument(
        "--data", metavar="DIR", help=f"labelled folder to take images from (default: ${BENCH_DATA_ENV})"
    )
    bench.add_argument("--limit", type=int, default=64, help="number of images")
    bench.add_argument("--model", metavar="VERSION_OR_PATH")
    bench.add_argument("--precision", choices=("auto", "fp32", "bf16", "int8"), help="default: from config")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(handler=_classifier_errors_as_command_errors(cmd_bench))
