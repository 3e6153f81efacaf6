"""Markdown tables for the model card from research/out/cv15.json (research.cv15's results).

python -m research.report15 [--per-origin NAME]
"""

from __future__ import annotations

import argparse
import json

from research.extract import OUT_DIR


def feed_cell(figures: dict | None) -> str:
    if not figures:
        return "-"
    precision = figures["feed_precision"]
    lost = figures["illustrations_lost"]
    return (
        f"{precision:.3f} / {lost} of {figures['illustrations']} ({lost / figures['illustrations']:.1%}) / "
        f"{figures['review_rate']:.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-origin", help="a result name: its per-origin rows with misses")
    parser.add_argument("--file", default=str(OUT_DIR / "cv15.json"))
    args = parser.parse_args()
    results = json.loads(open(args.file).read())
    print(
        "| variant | accuracy | macro-F1 | illustration recall | screenshot recall | photo recall | T | dev acc. | train acc. "
        "| feed, fitted policy (nested): precision / lost / review | feed, borderline rule: precision / lost / review |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, result in results.items():
        recall = result["recall"]
        corpus = result["by_corpus"]
        print(
            f"| {name} | {result['accuracy']:.3f} | {result['macro_f1']:.3f} | {recall['illustration']:.3f} | "
            f"{recall['screenshot']:.3f} | {recall['photo']:.3f} | {result['temperature']:.2f} | "
            f"{corpus.get('dev', {}).get('accuracy', float('nan')):.3f} | "
            f"{corpus.get('train', {}).get('accuracy', float('nan')):.3f} | "
            f"{feed_cell(result['feed_nested'])} | {feed_cell(result['feed_borderline_rule'])} |"
        )
    if args.per_origin:
        rows = results[args.per_origin]["per_origin"]
        missed = [row for row in rows if row["recall"] < 1.0]
        print(f"\n{len(rows)} (class, origin) groups, {len(rows) - len(missed)} without a miss; the others:\n")
        print("| class | held-out origin | n | recall | predicted as |")
        print("|---|---|---|---|---|")
        for row in missed:
            wrong = ", ".join(f"{label} {count}" for label, count in row["predicted_as"].items())
            print(f"| {row['label']} | {row['origin']} | {row['images']} | {row['recall']:.2f} | {wrong} |")


if __name__ == "__main__":
    main()
