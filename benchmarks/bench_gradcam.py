"""Grad-CAM cost and memory: one Grad-CAM on full-width VGG16 at 224 px relative to one forward pass.

Both are measured in this one run on the same model and input (median of --repeats, after a warm-up), so
the ratio holds on any machine. Memory: resident set size over --calls Grad-CAM calls on the full model,
and over --small-calls calls on a reduced-width VGG16; flat memory means no hooks, graphs or gradients
are left behind.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classifier import build_vgg16  # noqa: E402
from explain import grad_cam, guided_grad_cam  # noqa: E402

PAGE_BYTES = 4096


def resident_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * PAGE_BYTES / 2**20


def median_seconds(action, repeats: int) -> float:
    action()  # warm-up: allocator and oneDNN primitive caches
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def memory_growth(model: torch.nn.Module, image: torch.Tensor, calls: int) -> dict[str, float]:
    for _ in range(5):
        grad_cam(model, image)
    start = resident_mib()
    peak = start
    for _ in range(calls):
        grad_cam(model, image)
        peak = max(peak, resident_mib())
    end = resident_mib()
    return {"calls": calls, "rss_start_mib": round(start, 1), "rss_end_mib": round(end, 1),
            "rss_growth_mib": round(end - start, 1), "rss_peak_mib": round(peak, 1)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--calls", type=int, default=100, help="Grad-CAM calls on full VGG16 for memory")
    parser.add_argument("--small-calls", type=int, default=1000, help="calls on a 1/16-width VGG16 for memory")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_vgg16(num_classes=3).eval()
    image = torch.randn(1, 3, 224, 224)

    def forward() -> None:
        with torch.inference_mode():
            model(image)

    forward_s = median_seconds(forward, args.repeats)
    gradcam_s = median_seconds(lambda: grad_cam(model, image), args.repeats)
    guided_s = median_seconds(lambda: guided_grad_cam(model, image), args.repeats)
    small = build_vgg16(num_classes=3, width=1 / 16).eval()
    result = {
        "torch_threads": torch.get_num_threads(),
        "forward_ms": round(forward_s * 1000, 1),
        "gradcam_ms": round(gradcam_s * 1000, 1),
        "gradcam_over_forward": round(gradcam_s / forward_s, 2),
        "guided_gradcam_ms": round(guided_s * 1000, 1),
        "guided_gradcam_over_forward": round(guided_s / forward_s, 2),
        "memory_full_vgg16": memory_growth(model, image, args.calls),
        "memory_small_vgg16": memory_growth(small, image, args.small_calls),
        "param_grads_left": sum(p.grad is not None for p in model.parameters()),
        "hooks_left": sum(len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules()),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
