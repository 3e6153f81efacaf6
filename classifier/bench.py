"""Classification throughput: the naive tutorial path against the project's path, on the same images, in one run.

(a) naive: decode, preprocess and run the fp32 eager model one image at a time under `no_grad`.
(b) project: `run_classifier` (decode thread, batches, channels-last, frozen / int8 / bf16 trunk).
Both run on the same chunks, alternating, so a change in machine load hits both alike. One-time setup
(TorchScript freezing, int8 calibration and its agreement check) is reported apart from throughput.
"""

from __future__ import annotations

import resource
import time
from typing import Any, Sequence

import torch

from classifier.features import aggregate_views, image_views
from classifier.inference import FeatureRunner, run_classifier
from classifier.model import ImageClassifier
from classifier.preprocess import load_rgb_frames


def naive_labels(model: ImageClassifier, sources: Sequence[Any], max_frames: int) -> list[int]:
    labels = []
    with torch.no_grad():
        for source in sources:
            frame_probabilities = []
            for frame in load_rgb_frames(source, max_frames=max_frames):
                views = image_views(frame, model.spec)
                vectors = torch.cat([model.extractor(view[None]) for view in views])
                frame_probabilities.append(model.probabilities_from_vectors(aggregate_views(vectors)[None])[0])
            labels.append(int(torch.stack(frame_probabilities).mean(0).argmax()))
    return labels


def project_labels(
    model: ImageClassifier, sources: Sequence[Any], runner: FeatureRunner, batch_size: int, max_frames: int
) -> list[int]:
    results = {
        r.key: r
        for r in run_classifier(
            model, list(enumerate(sources)), runner=runner, batch_size=batch_size, max_frames=max_frames
        )
    }
    return [int(torch.tensor(results[i].probabilities).argmax()) for i in range(len(sources))]


def benchmark(
    model: ImageClassifier,
    sources: Sequence[Any],
    *,
    precision: str = "auto",
    batch_size: int = 16,
    chunk_size: int = 32,
    max_frames: int = 4,
) -> dict:
    """`{"naive_images_per_s", "images_per_s", "speedup", "label_agreement", "peak_rss_mb", ...}`."""
    if len(sources) < 2:
        raise ValueError(f"benchmark needs at least 2 images, got {len(sources)}")
    model = model.eval()
    runner = FeatureRunner(model, precision=precision)
    setup_start = time.perf_counter()
    project_labels(model, sources[:batch_size], runner, batch_size, max_frames)  # prepares the trunk once
    setup_s = time.perf_counter() - setup_start
    naive_labels(model, sources[:1], max_frames)  # first-call allocations, outside the timing
    naive_s = project_s = 0.0
    naive, project = [], []
    for start in range(0, len(sources), chunk_size):
        chunk = sources[start : start + chunk_size]
        began = time.perf_counter()
        naive += naive_labels(model, chunk, max_frames)
        naive_s += time.perf_counter() - began
        began = time.perf_counter()
        project += project_labels(model, chunk, runner, batch_size, max_frames)
        project_s += time.perf_counter() - began
    agreement = sum(a == b for a, b in zip(naive, project)) / len(sources)
    return {
        "naive_images_per_s": round(len(sources) / naive_s, 3),
        "images_per_s": round(len(sources) / project_s, 3),
        "speedup": round(naive_s / project_s, 3),
        "label_agreement": round(agreement, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "images": len(sources),
        "precision": runner.precision,
        "precision_check_agreement": runner.agreement,
        # What `auto` measured on the first batch, seconds per batch per precision ({} for a fixed precision).
        "precision_seconds_per_batch": {name: round(value, 3) for name, value in runner.seconds_per_batch.items()},
        "setup_s": round(setup_s, 2),
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
    }
