"""Batch inference: decode on a thread, pooled VGG16 features in batches on a CPU-tuned trunk, decisions.

What makes VGG16 fast on a CPU without bf16 support: batches of views (better GEMM shapes), channels-last
tensors (oneDNN's native layout), a frozen TorchScript graph (conv+ReLU fused, weights prepacked),
`inference_mode`, decoding overlapped with compute, and, where fbgemm has int8 kernels (AVX2; faster with VNNI),
an int8 trunk (per-channel weights, activations calibrated on real images) whose labels are checked against
fp32 before it is used and which `auto` keeps only when it measures faster.
bf16 autocast is used only on CPUs with native bf16 (avx512_bf16 / AMX); emulated bf16 is slower than fp32.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import queue
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Iterator, Sequence

import torch
from torch import nn

from classifier.features import aggregate_views, image_views
from classifier.model import ImageClassifier
from classifier.policy import ReviewPolicy
from classifier.policy import decide as policy_decide
from classifier.preprocess import load_rgb_frames
from storage.files import atomic_write_bytes

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "int8")
# A faster precision is used only if its labels agree with fp32 on at least this share of the check batch.
MIN_PRECISION_AGREEMENT = 0.99


def _cpuinfo(field: str) -> str | None:
    """The first `field : value` of /proc/cpuinfo (None where there is no such file or field)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field):
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())


def _cpu_model_name() -> str:
    return _cpuinfo("model name") or "unknown cpu"


def cpu_has_native_bf16(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def cpu_has_vnni(flags: set[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_vnni", "avx_vnni"} & flags)


def choose_precision(requested: str, flags: set[str] | None = None) -> str:
    """The precision to start from: `auto` -> bf16 with native bf16, else int8 with VNNI, else fp32 (the
    runner then measures every candidate, see `auto_candidates`); bf16 without hardware -> fp32."""
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


def cpu_has_int8_kernels(flags: set[str] | None = None) -> bool:
    """fbgemm's int8 convolutions need AVX2; VNNI makes them faster still (and lets activations use 8 bits)."""
    flags = cpu_flags() if flags is None else flags
    return "avx2" in flags or cpu_has_vnni(flags)


def auto_candidates(flags: set[str] | None = None) -> tuple[str, ...]:
    """What `auto` tries beside fp32 on this CPU. Which is fastest depends on the chip (on one AMX machine int8
    ran at 11.2 img/s and bf16 at 6-7; on a 2-core AVX2 EPYC without VNNI int8 still ran 1.8x fp32), so the
    runner times them rather than trusting the flags."""
    flags = cpu_flags() if flags is None else flags
    return tuple(
        name
        for name, supported in (("int8", cpu_has_int8_kernels(flags)), ("bf16", cpu_has_native_bf16(flags)))
        if supported
    )


# --- decisions ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    label: str
    confidence: float  # calibrated probability of `label`
    margin: float  # top-1 minus top-2 probability
    borderline: bool
    reason: str | None  # why it is borderline
    priority: float  # review order: higher = more uncertain = reviewed first


def _below(value: float) -> str:
    """`value` to 3 decimals, rounded down: a value under a threshold never prints as the threshold itself
    ("margin 0.1496 < 0.15" reads "0.149 < 0.15", not the false "0.150 < 0.15")."""
    return f"{math.floor(value * 1000) / 1000:.3f}"


def decide(
    probabilities: Sequence[float],
    labels: Sequence[str],
    min_confidence: float,
    min_margin: float,
    policy: ReviewPolicy | None = None,
) -> Decision:
    """Label, confidence and margin; with the model's review `policy` (classifier.policy) it decides label
    and review; without one, borderline when confidence < min_confidence or margin < min_margin."""
    ranked = sorted(range(len(labels)), key=lambda i: probabilities[i], reverse=True)
    confidence = float(probabilities[ranked[0]])
    margin = confidence - float(probabilities[ranked[1]])
    if policy is not None:
        chosen = policy_decide(probabilities, labels, policy)
        return Decision(
            label=chosen.label,
            confidence=float(probabilities[labels.index(chosen.label)]),
            margin=margin,
            borderline=chosen.review,
            reason=chosen.reason,
            priority=round(1.0 - margin, 6),
        )
    reasons = []
    if confidence < min_confidence:
        reasons.append(f"confidence {_below(confidence)} < {min_confidence:g}")
    if margin < min_margin:
        reasons.append(f"margin {_below(margin)} < {min_margin:g} ({labels[ranked[0]]} vs {labels[ranked[1]]})")
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
    pairs = [
        [str(i), str(i + 1)]
        for i in range(len(trunk) - 1)
        if isinstance(trunk[i], nn.Conv2d) and isinstance(trunk[i + 1], nn.ReLU)
    ]
    quant.fuse_modules(trunk, pairs, inplace=True)  # conv i -> ConvReLU2d, ReLU i+1 -> Identity
    is_quantized = False
    for index in range(len(trunk)):
        module = trunk[index]
        if isinstance(module, nn.Sequential) or hasattr(module, "weight"):  # a (fused) conv
            if not is_quantized:
                module = nn.Sequential(quant.QuantStub(), module)
                is_quantized = True
        if index in tapped and is_quantized:
            module = (
                quant.DeQuantStub() if isinstance(module, nn.Identity) else nn.Sequential(module, quant.DeQuantStub())
            )
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
                trunk(calibration[start : start + 8])
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

    def __init__(
        self,
        model: ImageClassifier,
        *,
        precision: str = "auto",
        channels_last: bool = True,
        freeze: bool = True,
        choice_file: Path | None = None,
    ):
        self.model = model.eval()
        # `auto` remembers what it measured here (per CPU, torch build, thread count and model features), so a
        # later process builds and checks only the winner instead of timing every candidate again.
        self.choice_file = Path(choice_file) if choice_file is not None else None
        self.requested_precision = precision
        self.precision = choose_precision(precision)
        self.candidates = (
            auto_candidates() if precision == "auto" else (() if self.precision == "fp32" else (self.precision,))
        )
        self.channels_last = channels_last
        self.freeze = freeze
        self.agreement: float | None = None
        self.seconds_per_batch: dict[str, float] = {}  # what `auto` measured on the first batch
        self._extractor: Callable[[torch.Tensor], torch.Tensor] | None = None

    def _prepare(self, batch: torch.Tensor) -> None:
        """Build the optimised extractor on the first batch: each candidate precision is built (int8 is
        calibrated on this batch) and kept only if its labels agree with fp32; with several left (`auto`),
        each is timed on the batch and the fastest wins, and is remembered in `choice_file`. With a choice
        remembered for this machine and model, only that precision is built and checked."""
        remembered = self._remembered_choice()
        if remembered is not None:
            self.candidates = (remembered,) if remembered != "fp32" else ()
        fp32 = self._finish(copy.deepcopy(self.model.extractor).eval(), batch)
        with torch.inference_mode():
            expected = self.model.head(fp32(self._layout(batch))).argmax(1)
        usable: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"fp32": fp32}
        agreements: dict[str, float] = {}
        for precision in self.candidates:
            candidate = self._build(precision, batch)
            with torch.inference_mode():
                got = self.model.head(candidate(self._layout(batch))).argmax(1)
            agreements[precision] = float((expected == got).float().mean())
            if agreements[precision] >= MIN_PRECISION_AGREEMENT:
                usable[precision] = candidate
            else:
                log.warning(
                    "%s labels agree with fp32 on %.1f%% of the check batch only; not using it",
                    precision,
                    100 * agreements[precision],
                )
        if remembered is not None:
            # Still checked against fp32 on this batch above; only the timing is skipped.
            chosen = remembered if remembered in usable else "fp32"
            log.info("precision auto: %s, as measured earlier on this machine (%s)", chosen, self.choice_file)
        elif self.requested_precision == "auto" and len(usable) > 1:
            self.seconds_per_batch = {name: self._time(extractor, batch) for name, extractor in usable.items()}
            chosen = min(self.seconds_per_batch, key=self.seconds_per_batch.get)
            log.info(
                "precision auto: %s",
                ", ".join(f"{name} {seconds:.2f} s/batch" for name, seconds in self.seconds_per_batch.items()),
            )
            self._remember_choice(chosen)
        else:
            chosen = next((name for name in self.candidates if name in usable), "fp32")
        self.precision = chosen
        # fp32 after every candidate was refused: report how close the best one came.
        self.agreement = agreements.get(chosen, max(agreements.values(), default=None))
        self._extractor = usable[chosen]

    def _choice_key(self) -> str:
        flags = sorted(flag for flag in cpu_flags() if flag.startswith(("avx", "amx")) or "vnni" in flag)
        return "|".join(
            [_cpu_model_name(), " ".join(flags), f"torch {torch.__version__}", f"threads {torch.get_num_threads()}"]
            + [self.model.feature_key]
        )

    def _remembered_choice(self) -> str | None:
        """The precision `auto` chose on this machine before, when it is still one this CPU offers."""
        if self.requested_precision != "auto" or self.choice_file is None:
            return None
        entry = self._read_choices().get(self._choice_key())
        choice = entry.get("precision") if isinstance(entry, dict) else None
        return choice if choice == "fp32" or choice in auto_candidates() else None

    def _read_choices(self) -> dict:
        """What the choice file holds; {} when there is none yet or it is unreadable or damaged (then `auto`
        measures again and writes it anew)."""
        try:
            choices = json.loads(self.choice_file.read_text())
        except (OSError, ValueError):
            return {}
        return choices if isinstance(choices, dict) else {}

    def _remember_choice(self, chosen: str) -> None:
        if self.choice_file is None:
            return
        choices = self._read_choices()
        choices[self._choice_key()] = {
            "precision": chosen,
            "seconds_per_batch": {name: round(value, 4) for name, value in self.seconds_per_batch.items()},
        }
        try:
            atomic_write_bytes(self.choice_file, json.dumps(choices, indent=1).encode())
        except OSError as error:  # a read-only or full data dir: the next process measures again
            log.info("cannot remember the precision choice in %s: %s", self.choice_file, error)

    def _build(self, precision: str, batch: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        if precision == "int8":
            module = copy.deepcopy(self.model.extractor).eval()
            module.features = quantize_trunk(module.features, _tapped_layers(self.model), batch)
            return self._finish(module, batch)
        # Autocast does not reach into a frozen TorchScript graph, so bf16 runs the eager module.
        eager = copy.deepcopy(self.model.extractor).eval()
        if self.channels_last:
            eager = eager.to(memory_format=torch.channels_last)
        return self._bf16(eager)

    def _time(self, extractor: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> float:
        """Seconds for one pass over `batch`, after one warm-up pass (oneDNN picks kernels on the first)."""
        x = self._layout(batch)
        with torch.inference_mode():
            extractor(x)
            started = time.perf_counter()
            extractor(x)
        return time.perf_counter() - started

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


def _decode_worker(
    sources: Iterable[tuple[Hashable, Any]], spec, max_frames: int, out: queue.Queue, stop: threading.Event
) -> None:
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
    worker = threading.Thread(
        target=_decode_worker,
        args=(sources, model.spec, max_frames, decoded, stop),
        name="illustfeed-decode",
        daemon=True,
    )
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
        frame_vectors = torch.stack(
            [
                aggregate_views(vectors[start + f * views_per_frame : start + (f + 1) * views_per_frame])
                for f in range(item.frames)
            ]
        )
        start += len(item.views)
        with torch.inference_mode():
            probabilities = model.media_probabilities(frame_vectors)
        yield ImageResult(item.key, probabilities.tolist(), frame_vectors.mean(0), item.frames)
