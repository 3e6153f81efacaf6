"""Batch inference: decode on a thread, pooled VGG16 features in batches on a CPU-tuned trunk, decisions.

What makes VGG16 fast on a CPU without bf16 support: batches of views (better GEMM shapes), channels-last
tensors (oneDNN's native layout), a frozen TorchScript graph (conv+ReLU fused, weights prepacked),
`inference_mode`, decoding overlapped with compute, and, where the CPU has VNNI, an int8 trunk (per-channel
weights, activations calibrated on real images) whose labels are checked against fp32 before it is used.
bf16 autocast is used only on CPUs with native bf16 (avx512_bf16 / AMX); emulated bf16 is slower than fp32.
"""
from __future__ import annotations

import copy
import itertools
import logging
import queue
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Iterator, Sequence

import torch
from torch import nn

from classifier.features import aggregate_views, image_views
from classifier.model import ImageClassifier
from classifier.preprocess import load_rgb_frames

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "int8")
# A faster precision is used only if its labels agree with fp32 on at least this share of the check batch.
MIN_PRECISION_AGREEMENT = 0.99


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def cpu_has_vnni(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_vnni", "avx_vnni"} & flags)


def choose_precision(requested: str, flags: set[str] | None = None) -> str:
    """`auto` -> bf16 with native bf16, else int8 with VNNI, else fp32; bf16 without hardware -> fp32."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {PRECISIONS}")
    flags = cpu_flags() if flags is None else flags
    if requested == "auto":
        if cpu_has_native_bf16(flags):
            return "bf16"
        return "int8" if cpu_has_vnni(flags) else "fp32"
    if requested == "bf16" and not cpu_has_native_bf16(flags):
        log.warning("precision bf16 requested but this CPU has no avx512_bf16/amx_bf16; using fp32")
        return "fp32"
    return requested


# --- decisions ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    label: str
    confidence: float  # calibrated probability of `label`
    margin: float  # top-1 minus top-2 probability
    borderline: bool
    reason: str | None  # why it is borderline
    priority: float  # review order: higher = more uncertain = reviewed first


def decide(probabilities: Sequence[float], labels: Sequence[str], min_confidence: float, min_margin: float) -> Decision:
    """Label, confidence and margin; borderline when confidence < min_confidence or margin < min_margin."""
    ranked = sorted(range(len(labels)), key=lambda i: probabilities[i], reverse=True)
    confidence = float(probabilities[ranked[0]])
    margin = confidence - float(probabilities[ranked[1]])
    reasons = []
    if confidence < min_confidence:
        reasons.append(f"confidence {confidence:.3f} < {min_confidence:g}")
    if margin < min_margin:
        reasons.append(f"margin {margin:.3f} < {min_margin:g} ({labels[ranked[0]]} vs {labels[ranked[1]]})")
    return Decision(
        label=labels[ranked[0]],
        confidence=confidence,
        margin=margin,
        borderline=bool(reasons),
        reason="; ".join(reasons) or None,
        priority=round(1.0 - margin, 6),
    )


# --- the optimised trunk --------------------------------------------------------------------------------


def _tapped_layers(model: ImageClassifier) -> set[int]:
    return set(model.spec.layers)


def quantize_trunk(trunk: nn.Sequential, tapped: set[int], calibration: torch.Tensor) -> nn.Sequential:
    """An int8 copy of `trunk` with the same indices: conv+ReLU fused, int8 between taps, fp32 at taps.

    Every index keeps a module, so a feature extractor that reads `features[i]` outputs works unchanged.
    """
    from torch.ao import quantization as quant

    trunk = copy.deepcopy(trunk).eval()
    pairs = [[str(i), str(i + 1)] for i in range(len(trunk) - 1)
             if isinstance(trunk[i], nn.Conv2d) and isinstance(trunk[i + 1], nn.ReLU)]
    quant.fuse_modules(trunk, pairs, inplace=True)  # conv i -> ConvReLU2d, ReLU i+1 -> Identity
    is_quantized = False
    for index in range(len(trunk)):
        module = trunk[index]
        if isinstance(module, nn.Sequential) or hasattr(module, "weight"):  # a (fused) conv
            if not is_quantized:
                module = nn.Sequential(quant.QuantStub(), module)
                is_quantized = True
        if index in tapped and is_quantized:
            module = quant.DeQuantStub() if isinstance(module, nn.Identity) else nn.Sequential(module, quant.DeQuantStub())
            is_quantized = False
        trunk[index] = module
    engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "fbgemm"
    torch.backends.quantized.engine = engine
    # Per-channel symmetric int8 weights; full 8-bit activations where VNNI makes that safe (no overflow of
    # the 16-bit intermediate sums that reduce_range guards against on older CPUs).
    trunk.qconfig = quant.QConfig(
        activation=quant.HistogramObserver.with_args(reduce_range=not cpu_has_vnni()),
        weight=quant.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao eager quantization announces its move to torchao
        quant.prepare(trunk, inplace=True)
        with torch.inference_mode():
            for start in range(0, len(calibration), 8):
                trunk(calibration[start:start + 8])
        quant.convert(trunk, inplace=True)
    return trunk


def _frozen(module: nn.Module, example: torch.Tensor) -> nn.Module:
    """TorchScript trace + freeze (fuses conv+ReLU, prepacks weights for oneDNN); eager if tracing fails."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, example, check_trace=False)
            return torch.jit.freeze(traced.eval())
    except Exception as error:  # tracing is an optimisation; any failure falls back to the eager module
        log.warning("TorchScript freezing failed (%s); running eagerly", error)
        return module


class FeatureRunner:
    """Pooled feature vectors [N, D] for image batches, on a trunk prepared for this CPU."""

    def __init__(self, model: ImageClassifier, *, precision: str = "auto", channels_last: bool = True,
                 freeze: bool = True):
        self.model = model.eval()
        self.requested_precision = precision
        self.precision = choose_precision(precision)
        self.channels_last = channels_last
        self.freeze = freeze
        self.agreement: float | None = None
        self._extractor: Callable[[torch.Tensor], torch.Tensor] | None = None

    def _prepare(self, batch: torch.Tensor) -> None:
        """Build the optimised extractor, calibrating (int8) and checking agreement on the first batch."""
        reference = copy.deepcopy(self.model.extractor).eval()
        fp32 = self._finish(reference, batch)
        if self.precision == "fp32":
            self._extractor = fp32
            return
        if self.precision == "int8":
            candidate_module = copy.deepcopy(self.model.extractor).eval()
            candidate_module.features = quantize_trunk(candidate_module.features, _tapped_layers(self.model), batch)
            candidate = self._finish(candidate_module, batch)
        else:
            # Autocast does not reach into a frozen TorchScript graph, so bf16 runs the eager module.
            eager = copy.deepcopy(self.model.extractor).eval()
            if self.channels_last:
                eager = eager.to(memory_format=torch.channels_last)
            candidate = self._bf16(eager)
        with torch.inference_mode():
            expected = self.model.head(fp32(self._layout(batch))).argmax(1)
            got = self.model.head(candidate(self._layout(batch))).argmax(1)
        self.agreement = float((expected == got).float().mean())
        if self.agreement < MIN_PRECISION_AGREEMENT:
            log.warning("%s labels agree with fp32 on %.1f%% of the check batch only; using fp32",
                        self.precision, 100 * self.agreement)
            self.precision = "fp32"
            self._extractor = fp32
        else:
            self._extractor = candidate

    @staticmethod
    def _bf16(extractor: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return extractor(x).float()
        return run

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def _finish(self, module: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return _frozen(module, self._layout(example[:2])) if self.freeze else module

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self._extractor is None:
            self._prepare(batch)
        with torch.inference_mode():
            return self._extractor(self._layout(batch)).float()


# --- decoding and batching ------------------------------------------------------------------------------


@dataclass
class ImageResult:
    key: Hashable
    probabilities: list[float] | None  # calibrated, averaged over frames
    vector: torch.Tensor | None  # pooled features [D], averaged over frames
    frames: int
    error: str | None = None


@dataclass
class _Decoded:
    key: Hashable
    views: torch.Tensor | None  # [frames * views_per_frame, 3, S, S]
    frames: int
    error: str | None = None


_END = object()


def decode_views(source: Any, spec, max_frames: int) -> tuple[torch.Tensor, int]:
    """Every view of up to `max_frames` evenly spaced frames, stacked: ([F*V, 3, S, S], F)."""
    frames = load_rgb_frames(source, max_frames=max_frames)
    return torch.cat([image_views(frame, spec) for frame in frames]), len(frames)


def _decode_worker(sources: Iterable[tuple[Hashable, Any]], spec, max_frames: int, out: queue.Queue,
                   stop: threading.Event) -> None:
    try:
        for key, source in sources:
            if stop.is_set():
                return
            try:
                views, frames = decode_views(source, spec, max_frames)
                out.put(_Decoded(key, views, frames))
            except Exception as error:  # one undecodable image must not stop the batch; it is reported
                out.put(_Decoded(key, None, 0, f"{type(error).__name__}: {error}"))
    finally:
        out.put(_END)


def run_classifier(
    model: ImageClassifier,
    sources: Iterable[tuple[Hashable, Any]],
    *,
    runner: FeatureRunner | None = None,
    batch_size: int = 16,
    max_frames: int = 4,
    prefetch: int = 32,
) -> Iterator[ImageResult]:
    """Classify `(key, path-or-bytes)` pairs; a thread decodes ahead while the model computes.

    Views of several images share a batch; each image's views are aggregated into one vector, and an
    animated image's frames are averaged (probabilities and vectors).
    """
    runner = runner or FeatureRunner(model)
    decoded: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    worker = threading.Thread(target=_decode_worker, args=(sources, model.spec, max_frames, decoded, stop),
                              name="illustfeed-decode", daemon=True)
    worker.start()
    pending: list[_Decoded] = []
    pending_views = 0
    finished = False
    try:
        while not finished:
            item = decoded.get()
            if item is _END:
                finished = True
            elif item.error is not None:
                yield ImageResult(item.key, None, None, 0, item.error)
            else:
                pending.append(item)
                pending_views += len(item.views)
            if pending and (finished or pending_views >= batch_size):
                yield from _score(model, runner, pending)
                pending, pending_views = [], 0
    finally:
        stop.set()
        while worker.is_alive():  # unblock a worker waiting on a full queue
            try:
                decoded.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)


def _score(model: ImageClassifier, runner: FeatureRunner, items: list[_Decoded]) -> Iterator[ImageResult]:
    vectors = runner(torch.cat([item.views for item in items]))
    start = 0
    for item in items:
        views_per_frame = len(item.views) // item.frames
        frame_vectors = torch.stack([
            aggregate_views(vectors[start + f * views_per_frame:start + (f + 1) * views_per_frame])
            for f in range(item.frames)
        ])
        start += len(item.views)
        with torch.inference_mode():
            probabilities = model.probabilities_from_vectors(frame_vectors).mean(0)
        yield ImageResult(item.key, probabilities.tolist(), frame_vectors.mean(0), item.frames)


# --- classifying the store's pending media --------------------------------------------------------------

# (model, image source, the media's probabilities) -> (encoded overlay, extension: "png", or "gif" if animated).
OverlayRenderer = Callable[[ImageClassifier, Any, Sequence[float]], tuple[bytes, str]]


def explain_overlay_renderer(max_frames: int = 4) -> OverlayRenderer | None:
    """The Grad-CAM overlay of `explain/` (issue 5), or None where that package is not installed."""
    try:
        from explain.media import gradcam_overlay
    except ImportError:
        return None

    def render(model: ImageClassifier, source: Any, probabilities: Sequence[float]) -> tuple[bytes, str]:
        frames = load_rgb_frames(source, max_frames=max_frames)
        views = [image_views(frame, model.spec) for frame in frames]
        encoded = gradcam_overlay(model, views, list(probabilities), model.labels)
        return encoded.data, encoded.ext

    return render


@dataclass
class ClassifySummary:
    model_version: str
    classified: int = 0
    from_cached_features: int = 0
    borderline: int = 0
    queued_for_review: int = 0
    overlays: int = 0
    overlays_restored: int = 0  # missing overlays of queued borderline calls made again
    failed: int = 0
    problems: list[str] = field(default_factory=list)
    precision: str = ""

    def as_dict(self) -> dict:
        return {key: value for key, value in self.__dict__.items() if key != "problems"}


def pending_media(store, model_version: str, limit: int | None = None) -> list[dict]:
    """Stored media (status ok) without a prediction from `model_version`, oldest first."""
    sql = ("SELECT m.id, m.sha256, m.ext FROM media m WHERE m.status = 'ok' AND NOT EXISTS "
           "(SELECT 1 FROM predictions p WHERE p.media_id = m.id AND p.model_version = ?) ORDER BY m.id")
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return store.query(sql, (model_version,))


def classify_pending(
    store,
    model: ImageClassifier,
    *,
    runner: FeatureRunner | None = None,
    borderline_confidence: float = 0.6,
    borderline_margin: float = 0.15,
    batch_size: int = 16,
    max_frames: int = 4,
    overlay: OverlayRenderer | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> ClassifySummary:
    """Predict every pending media with `model`; store predictions, feature vectors and review items.

    Media whose vector for this model's trunk is cached skip the conv net. Each batch of results is written
    in one transaction (prediction + vector + review row together), so an interruption loses at most
    the batch in flight, and a rerun picks up where it stopped.
    """
    from tqdm import tqdm

    from classifier.cache import StoreVectorCache

    summary = ClassifySummary(model.version)
    rows = pending_media(store, model.version, limit)
    if not rows:
        if overlay is not None:
            restore_missing_overlays(store, model, overlay, summary)
        return summary
    cache = StoreVectorCache(store, model.feature_key)
    cached = cache.get([row["id"] for row in rows])
    bar = tqdm(total=len(rows), desc=f"classify {model.version}", unit="img", disable=not progress)

    def from_cache() -> Iterator[ImageResult]:
        ids = list(cached)
        for start in range(0, len(ids), 256):
            chunk = ids[start:start + 256]
            with torch.inference_mode():
                probabilities = model.probabilities_from_vectors(torch.stack([cached[i] for i in chunk]))
            for media_id, probs in zip(chunk, probabilities.tolist()):
                yield ImageResult(media_id, probs, cached[media_id], 0)

    to_run = [(row["id"], store.blobs.path(row["sha256"], row["ext"])) for row in rows if row["id"] not in cached]
    sources = dict(to_run)
    if to_run:
        runner = runner or FeatureRunner(model)
    computed = run_classifier(model, to_run, runner=runner, batch_size=batch_size, max_frames=max_frames) if to_run else iter(())
    summary.from_cached_features = len(cached)
    chunk: list[ImageResult] = []
    for result in itertools.chain(from_cache(), computed):
        chunk.append(result)
        if len(chunk) >= batch_size:
            _store_results(store, model, chunk, cached, sources, summary, borderline_confidence,
                           borderline_margin, overlay)
            bar.update(len(chunk))
            chunk = []
    if chunk:
        _store_results(store, model, chunk, cached, sources, summary, borderline_confidence, borderline_margin, overlay)
        bar.update(len(chunk))
    bar.close()
    if overlay is not None:
        restore_missing_overlays(store, model, overlay, summary)
    summary.precision = runner.precision if runner is not None else "cached"
    return summary


def restore_missing_overlays(store, model: ImageClassifier, overlay: OverlayRenderer, summary: ClassifySummary) -> None:
    """Render again the overlays of this model's queued borderline calls that have none (a full disk when they
    were classified, a file deleted since), so review shows them once there is room."""
    from storage.check import missing_overlays, regenerate_overlay

    def make(store, media_id: int) -> tuple[bytes, str]:
        prediction = store.query_one("SELECT prob_illustration, prob_screenshot, prob_photo FROM predictions"
                                     " WHERE media_id = ? AND model_version = ?", (media_id, model.version))
        return overlay(model, _media_source(store, media_id), [prediction[f"prob_{label}"] for label in model.labels])

    for media_id in missing_overlays(store, model.version):
        try:
            regenerate_overlay(store, media_id, make)
        except Exception as error:  # as at classification: an explanation is a nicety
            log.warning("overlay for media %s failed again: %s", media_id, error)
            summary.problems.append(f"media {media_id}: overlay failed: {error}")
            continue
        summary.overlays_restored += 1


def _store_results(store, model: ImageClassifier, results: list[ImageResult], cached: dict, sources: dict,
                   summary: ClassifySummary, borderline_confidence: float, borderline_margin: float,
                   overlay: OverlayRenderer | None) -> None:
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    decided = []
    for result in results:
        if result.error is not None:
            summary.failed += 1
            summary.problems.append(f"media {result.key}: {result.error}")
            log.warning("media %s could not be classified: %s", result.key, result.error)
            # Ingest decoded it once, so its stored file is missing or damaged: record that on the row instead
            # of decoding it again on every poll.
            store.execute("UPDATE media SET status = 'rejected', reject_reason = ? WHERE id = ? AND status = 'ok'",
                          (f"stored file cannot be decoded for classification: {result.error}", result.key))
            continue
        decision = decide(result.probabilities, model.labels, borderline_confidence, borderline_margin)
        overlay_sha256 = None
        # Overlays serve the review queue; a media a human already labelled never enters it.
        if decision.borderline and overlay is not None and store.current_label(result.key) is None:
            # Rendered before the transaction: Grad-CAM takes a forward+backward pass, the write lock should not wait on it.
            try:
                data, ext = overlay(model, sources.get(result.key) or _media_source(store, result.key),
                                    result.probabilities)
                overlay_sha256 = store.derived.put(data, ext)
                summary.overlays += 1
            except Exception as error:  # an explanation is a nicety; the prediction must still be stored
                log.warning("overlay for media %s failed: %s", result.key, error)
                summary.problems.append(f"media {result.key}: overlay failed: {error}")
        decided.append((result, decision, overlay_sha256))
    new_vectors = {result.key: result.vector for result, _, _ in decided if result.key not in cached}
    with store.transaction():
        for result, decision, overlay_sha256 in decided:
            probs = dict(zip(model.labels, result.probabilities))
            store.execute(
                "INSERT INTO predictions (media_id, model_version, prob_illustration, prob_screenshot, prob_photo,"
                " label, confidence, margin, borderline, overlay_sha256, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (media_id, model_version) DO NOTHING",
                (result.key, model.version, probs["illustration"], probs["screenshot"], probs["photo"],
                 decision.label, decision.confidence, decision.margin, int(decision.borderline),
                 overlay_sha256, now),
            )
            summary.classified += 1
            if not decision.borderline:
                continue
            summary.borderline += 1
            if store.current_label(result.key):
                continue  # a human already answered; nothing to review
            cursor = store.execute(
                "INSERT INTO review_queue (media_id, reason, priority, state, created_at, updated_at)"
                " VALUES (?, ?, ?, 'pending', ?, ?) ON CONFLICT (media_id) DO UPDATE SET"
                " reason = excluded.reason, priority = excluded.priority, updated_at = excluded.updated_at"
                " WHERE review_queue.state = 'pending'",
                (result.key, f"{model.version}: {decision.reason}", decision.priority, now, now),
            )
            summary.queued_for_review += cursor.rowcount
        if new_vectors:
            from classifier.cache import StoreVectorCache

            StoreVectorCache(store, model.feature_key).put(new_vectors)


def _media_source(store, media_id: int) -> Path:
    return store.media_path(media_id)
