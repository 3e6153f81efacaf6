"""Classification speed: the naive tutorial path vs the project's path on the same images, in one run.

Usage: python benchmarks/bench_classify.py [--data DIR] [--limit 64] [--model VERSION_OR_PATH] [--config PATH]
Prints the JSON object `illustfeed bench --json` prints (same function: classifier.bench.benchmark).
Target on a 2-core CPU, full-width VGG16 at 224 px: speedup >= 2.5 with label agreement >= 0.99.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "--json", *sys.argv[1:]]))
