"""What fine-tuning VGG16's last conv block would cost here: timed forward+backward of conv5 on cached conv4 maps.

Fine-tuning conv5_1..conv5_3 with the head needs, per view and epoch, conv5 forward and backward on the
512 x 14 x 14 map after pool4 (cacheable). This times that step and extrapolates to the validation
protocol (12 origin folds) so the decision rests on a measurement, not a guess.

    nice -n 10 python -m research.finetune_cost [--batch 8]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from research.extract import load_vgg16_trunk

POOL4_INDEX = 23
FOLDS = 12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--images", type=int, default=880)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(2)
    trunk = load_vgg16_trunk()
    conv5 = trunk[POOL4_INDEX + 1 : 30].train()
    head = torch.nn.Linear(512, 3)
    optimizer = torch.optim.SGD(list(conv5.parameters()) + list(head.parameters()), lr=1e-3)
    pool4_maps = torch.rand(args.batch, 512, 14, 14)
    labels = torch.randint(0, 3, (args.batch,))
    timings = []
    for _ in range(args.steps + 1):
        started = time.perf_counter()
        optimizer.zero_grad()
        loss = F.cross_entropy(head(conv5(pool4_maps).mean(dim=(2, 3))), labels)
        loss.backward()
        optimizer.step()
        timings.append(time.perf_counter() - started)
    per_view = sum(timings[1:]) / args.steps / args.batch  # first step warms up
    epoch = per_view * args.images
    print(
        f"conv5 forward+backward: {per_view * 1000:.0f} ms per view -> {epoch / 60:.1f} min per epoch of {args.images} images"
    )
    print(f"{args.epochs} epochs x {FOLDS} origin folds: {epoch * args.epochs * FOLDS / 3600:.1f} h of 2-core CPU")


if __name__ == "__main__":
    main()
