"""Retrain time for 10,000 human-labelled media whose VGG16 features are cached (target: under 60 s).

Builds a store the way months of use would leave it: media rows from 200 accounts, a human label on each,
and a cached feature vector per media under the active model's feature key (ImageNet VGG16 + the shipped
model's FeatureSpec, so the shipped base vectors fit and join the training set as in a real retrain). The
vectors are drawn from three overlapping class clusters, so training has real work to do; no image is
decoded because none needs to be: that is the point of the cache. Then it times `run_retrain` (load the
base set, train on base + labels, score both models on one validation set, register, promote, re-score all
media from the cache) and prints the figures, phase by phase.

    python benchmarks/bench_retrain.py [--items 10000] [--weights /path/vgg16_features_imagenet.pth]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
TARGET_SECONDS = 60.0


def default_weights() -> Path:
    shared = Path(os.environ.get("ILLUSTFEED_SHARED", REPO_ROOT.parent / "shared"))
    return shared / "weights" / "vgg16_features_imagenet.pth"


def build_store(data_dir: Path, config, items: int, accounts: int, seed: int) -> tuple[str, int]:
    """Media, posts, labels and cached vectors for `items` media; an untrained active model. Returns
    (feature key, vector dim)."""
    from classifier import LABELS
    from classifier.model import new_classifier, read_model_file
    from classifier.runtime import trunk_weights_loader
    from classifier.versions import activate, default_model_file, register_model
    from classifier.vgg import make_features
    from storage import Store, utc_now

    trunk = make_features(1.0)
    trunk.load_state_dict(
        {
            name.removeprefix("features."): tensor
            for name, tensor in trunk_weights_loader(config.classifier, data_dir)().items()
        }
    )
    model = new_classifier(trunk, read_model_file(default_model_file()).feature_spec)
    model.version = "bench-initial"
    # The previous model always answers "photo", so a trained head beats it and the benchmark times the
    # whole path: train, score both, promote, and re-score every media from the cache.
    import torch

    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.zero_()
        model.head.linear.bias[LABELS.index("photo")] = 1.0
    dim = model.extractor.dim
    rng = np.random.default_rng(seed)
    # A shared centre plus a small class offset, and noise larger than the offset: the classes overlap,
    # so the head has to learn (a linear head does not reach 100% on them).
    shared_centre = rng.gamma(2.0, 0.5, size=dim).astype(np.float32)
    centres = shared_centre + rng.normal(0, 0.03, size=(len(LABELS), dim)).astype(np.float32)
    now = utc_now()
    with Store.open(data_dir) as store:
        register_model(store, model)
        activate(store, model.version)
        with store.transaction():
            account_ids = [store.upsert_account("folder", f"account{n:03d}") for n in range(accounts)]
            for media_id in range(1, items + 1):
                label_index = int(rng.integers(len(LABELS)))
                sha = hashlib.sha256(f"bench-{media_id}".encode()).hexdigest()
                store.insert_media(
                    id=media_id,
                    sha256=sha,
                    phash="0" * 16,
                    mime="image/jpeg",
                    ext="jpg",
                    width=640,
                    height=480,
                    frames=1,
                    bytes=100_000,
                    status="ok",
                )
                post_id, _ = store.upsert_post(
                    account_ids[media_id % accounts], "folder", f"post-{media_id}", None, None, now
                )
                store.link_post_media(post_id, media_id, 0, None, None)
                store.execute(
                    'INSERT INTO labels (media_id, label, "by", via, at) VALUES (?, ?, ?, ?, ?)',
                    (media_id, LABELS[label_index], "bench", "cli", now),
                )
                vector = np.maximum(centres[label_index] + rng.normal(0, 0.8, dim).astype(np.float32), 0)
                store.execute(
                    "INSERT INTO features (media_id, backbone, vector, dim, created_at) VALUES (?, ?, ?, ?, ?)",
                    (media_id, model.feature_key, vector.tobytes(), dim, now),
                )
        return model.feature_key, dim


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--weights", type=Path, default=default_weights())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.weights.is_file():
        print(f"VGG16 weights not found at {args.weights}; pass --weights PATH", file=sys.stderr)
        return 2

    from bot.config import parse_config
    from bot.retrain import run_retrain
    from storage import Store

    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as temp:
        data_dir = Path(temp) / "data"
        config = parse_config(
            {
                "data_dir": str(data_dir),
                "classifier": {
                    "weights_path": str(args.weights),
                    "weights_download": False,
                    "progress": False,
                    "overlays": False,
                },
            },
            environ={},
        )
        started = time.perf_counter()
        feature_key, dim = build_store(data_dir, config, args.items, args.accounts, args.seed)
        print(
            f"store: {args.items} labelled media from {args.accounts} accounts, cached {dim}-d vectors "
            f"({feature_key}), built in {time.perf_counter() - started:.1f} s"
        )
        with Store.open(data_dir) as store:
            started = time.perf_counter()
            outcome = run_retrain(store, config, force=True)
            total = time.perf_counter() - started
            cached_hits = store.scalar("SELECT COUNT(*) FROM features")
        print(f"outcome: {outcome.summary()}")
        print(
            f"training set: {outcome.labelled} labelled media + {outcome.base_images} shipped base vectors "
            f"(validation {outcome.validation})"
        )
        print(
            f"validation: illustration recall {outcome.scores['illustration_recall']:.3f}, "
            f"macro-F1 {outcome.scores['macro_f1']:.3f}, accuracy {outcome.scores['accuracy']:.3f}"
        )
        print(
            f"train (L-BFGS, full batch) + score both + register: {outcome.train_seconds:.1f} s; "
            f"re-scored {outcome.rescored} media from the cache in {outcome.rescore_seconds:.1f} s; "
            f"report and the rest {total - outcome.train_seconds - outcome.rescore_seconds:.1f} s; "
            f"features rows {cached_hits} (no image decoded)"
        )
        print(
            f"retrain total: {total:.1f} s for {args.items} items; target {TARGET_SECONDS:.0f} s; "
            f"ratio {total / TARGET_SECONDS:.2f} of target ({'OK' if total < TARGET_SECONDS else 'OVER'})"
        )
        import torch

        print(
            f"cpu cores visible: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, "
            f"cpu capability: {torch.backends.cpu.get_cpu_capability()}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
