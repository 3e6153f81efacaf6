"""LP-FT of VGG16's conv5_1..conv5_3 + the linear head from cached pool4 maps (research.pool4), origin-grouped.

Linear probe first: the frozen-trunk head (research.heads.fit_head, the recipe research.cv15 compares) on the
training images. Then fine-tune: conv5 (ImageNet weights) and that head train together on the cached
pool4 maps, conv5 at a small learning rate, every view of an image through conv5 and the views' vectors
averaged exactly as at inference (the whole-image view always counts), the conv3_3/conv4_3 blocks and pixel
statistics taken from the cache (they do not depend on conv5). Early stopping on an origin-grouped inner
validation split of the training origins. bf16 autocast where the CPU has native bf16 (measured faster here).

    nice -n 10 python -m research.finetune --probe            # speed on 50 views, fp32 vs bf16
    nice -n 10 python -m research.finetune --folds 0 1 2 3    # out-of-fold logits -> research/out/finetune_oof.pt
    nice -n 10 python -m research.finetune --final --epochs N # all images -> research/out/finetune_final.pt
"""

from __future__ import annotations

import argparse
import copy
import time
from collections import Counter

import numpy as np
import torch
from torch.nn import functional as F

from classifier import LABELS
from classifier.evaluate import compute_metrics
from classifier.model import LinearHead
from research.cv15 import VARIANTS, folds_of, load_corpus
from research.extract import OUT_DIR, load_vgg16_trunk
from research.heads import HeadSettings, fit_head, sample_weights
from research.pool4 import CORPORA, POOL4_INDEX, conv5_vector, load_pool4

# Columns of the wide vector (research.pool4.WIDE_SPEC) that conv5_3 produces: after conv3_3 (2 x 256) and
# conv4_3 (2 x 512) avg+max blocks.
CONV5_COLUMNS = slice(1536, 2560)
CONV5_INDICES = range(POOL4_INDEX + 1, 30)


class Views:
    """Every cached view's pool4 map and wide vector, with each image's view range."""

    def __init__(self, view_counts: list[int], corpora: tuple[str, ...] = CORPORA):
        maps, vectors = [], []
        for corpus in corpora:
            maps.append(load_pool4(corpus))
            vectors.append(torch.load(OUT_DIR / f"wide_{corpus}.pt", weights_only=False)["vectors"].float())
        self.maps = maps
        self.offsets = np.cumsum([0] + [len(m) for m in maps])
        self.vectors = torch.cat(vectors)
        starts = np.cumsum([0] + view_counts)
        self.ranges = [(int(starts[i]), int(starts[i + 1])) for i in range(len(view_counts))]
        if starts[-1] != self.offsets[-1]:
            raise SystemExit(f"caches hold {self.offsets[-1]} views, manifests say {starts[-1]}")

    def pool4(self, view_indices: np.ndarray) -> torch.Tensor:
        parts = []
        for index in view_indices:
            corpus = int(np.searchsorted(self.offsets, index, side="right") - 1)
            parts.append(np.asarray(self.maps[corpus][index - self.offsets[corpus]]))
        return torch.from_numpy(np.stack(parts)).float()

    def batch(self, images: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """pool4 maps and wide vectors of the images' views, and the view count per image."""
        indices = np.concatenate([np.arange(*self.ranges[i]) for i in images])
        return self.pool4(indices), self.vectors[indices], [self.ranges[i][1] - self.ranges[i][0] for i in images]


def image_logits(
    conv5: torch.nn.Sequential, head: LinearHead, pool4: torch.Tensor, wide: torch.Tensor, counts: list[int], bf16: bool
) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        block = conv5_vector(conv5, pool4.contiguous(memory_format=torch.channels_last)).float()
    vectors = torch.cat([wide[:, : CONV5_COLUMNS.start], block, wide[:, CONV5_COLUMNS.stop :]], dim=1)
    per_image = torch.stack([part.mean(0) for part in torch.split(vectors, counts)])
    return head(per_image)


@torch.no_grad()
def predict(views: Views, conv5, head, images: list[int], bf16: bool, batch_images: int = 24) -> torch.Tensor:
    conv5.eval()
    out = [
        image_logits(conv5, head, *views.batch(images[i : i + batch_images]), bf16)
        for i in range(0, len(images), batch_images)
    ]
    return torch.cat(out) if out else torch.zeros(0, len(LABELS))


def lp_ft(
    views: Views,
    data,
    train: list[int],
    inner: list[int],
    settings: HeadSettings,
    *,
    epochs: int,
    bf16: bool,
    conv_lr: float,
    head_lr: float,
    batch_images: int,
    seed: int,
    log=print,
):
    """Linear probe on the frozen vectors, then conv5 + head; returns (conv5, head, linear probe, history)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    origins = [data.origins[i] for i in train]
    head = fit_head(data.vectors[train], data.labels[train], origins, settings)
    linear_probe = copy.deepcopy(head)
    conv5 = copy.deepcopy(load_vgg16_trunk()[POOL4_INDEX + 1 : 30])
    weights = sample_weights(data.labels[train], origins, settings, len(LABELS))
    head.train()
    for parameter in head.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(
        [{"params": conv5.parameters(), "lr": conv_lr}, {"params": head.linear.parameters(), "lr": head_lr}],
        weight_decay=1e-4,
    )
    labels = data.labels
    history, best = [], None

    def score(state_epoch: int) -> None:
        nonlocal best
        if not inner:
            best = (state_epoch, copy.deepcopy(conv5.state_dict()), copy.deepcopy(head.state_dict()))
            return
        logits = predict(views, conv5, head, inner, bf16)
        truth = [LABELS[i] for i in labels[inner].tolist()]
        metrics = compute_metrics(truth, [LABELS[i] for i in logits.argmax(1).tolist()])
        loss = float(F.cross_entropy(logits, labels[inner]))
        key = (round(metrics["macro_f1"], 4), -loss)
        history.append(
            {
                "epoch": state_epoch,
                "inner_macro_f1": metrics["macro_f1"],
                "inner_loss": loss,
                "inner_accuracy": metrics["accuracy"],
            }
        )
        log(
            f"    epoch {state_epoch}: inner acc {metrics['accuracy']:.3f} F1 {metrics['macro_f1']:.3f} loss {loss:.3f}"
        )
        if best is None or key > best[0]:
            best = (key, copy.deepcopy(conv5.state_dict()), copy.deepcopy(head.state_dict()))

    score(0)  # the linear probe itself is a candidate: fine-tuning must beat it on the inner split
    train_array = np.array(train)
    for epoch in range(1, epochs + 1):
        conv5.train()
        order = rng.permutation(len(train_array))
        started, seen_views, total = time.monotonic(), 0, 0.0
        for start in range(0, len(order), batch_images):
            positions = order[start : start + batch_images]
            pool4, wide, counts = views.batch(train_array[positions].tolist())
            logits = image_logits(conv5, head, pool4, wide, counts, bf16)
            losses = F.cross_entropy(logits.float(), labels[train_array[positions]], reduction="none")
            loss = (losses * weights[positions]).sum() / weights[positions].sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen_views += len(pool4)
            total += float(loss.detach()) * len(positions)
        elapsed = time.monotonic() - started
        log(
            f"    epoch {epoch}: train loss {total / len(order):.3f}, {seen_views} views in {elapsed:.0f} s "
            f"({seen_views / elapsed:.1f} views/s)"
        )
        score(epoch)
    conv5.load_state_dict(best[1])
    head.load_state_dict(best[2])
    head.eval()
    return conv5.eval(), head, linear_probe, history


def inner_split(data, train: list[int]) -> tuple[list[int], list[int]]:
    """About a sixth of the training images, whole origins in a seeded hash order, for early stopping.

    An origin holding more than a tenth of the training images never goes there: holding out a giant
    (the dev corpus's ImageNet photos) would leave the split one class and train without that class's style.
    """
    import hashlib

    sizes = Counter(data.origins[i] for i in train)
    ordered = sorted(sizes, key=lambda origin: hashlib.sha256(origin.encode()).hexdigest())
    held, count = set(), 0
    for origin in ordered:
        if count >= len(train) / 6:
            break
        if sizes[origin] <= len(train) / 10:
            held.add(origin)
            count += sizes[origin]
    return [i for i in train if data.origins[i] not in held], [i for i in train if data.origins[i] in held]


def probe(views: Views) -> None:
    conv5 = load_vgg16_trunk()[POOL4_INDEX + 1 : 30]
    head = LinearHead(2562, 3)
    images = list(range(20))
    pool4, wide, counts = views.batch(images)
    pool4, wide = pool4[:48], wide[:48]
    counts_trimmed, left = [], 48
    for count in counts:
        if left <= 0:
            break
        counts_trimmed.append(min(count, left))
        left -= count
    optimizer = torch.optim.AdamW(list(conv5.parameters()) + list(head.parameters()), lr=1e-5)
    for bf16 in (False, True, False, True):
        started = time.monotonic()
        logits = image_logits(conv5, head, pool4, wide, counts_trimmed, bf16)
        loss = logits.float().logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(
            f"{'bf16' if bf16 else 'fp32'}: conv5 forward+backward {len(pool4) / (time.monotonic() - started):.1f} views/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", action="store_true")
    parser.add_argument("--folds", type=int, nargs="*", default=[])
    parser.add_argument("--final", action="store_true")
    parser.add_argument("--variant", default="ill x2", choices=sorted(VARIANTS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--conv-lr", type=float, default=1e-5)
    parser.add_argument("--head-lr", type=float, default=1e-4)
    parser.add_argument("--batch-images", type=int, default=16)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--corpus", action="append", choices=CORPORA, help="default: all (a trial on fewer)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpora = tuple(args.corpus or CORPORA)
    data = load_corpus(corpora)
    views = Views(data.view_counts, corpora)
    if args.probe:
        probe(views)
        return
    bf16 = args.precision == "bf16"
    settings = VARIANTS[args.variant]
    name = f"LP-FT conv5 ({args.variant}, conv lr {args.conv_lr:g}, {args.epochs} ep)"
    if args.final:
        started = time.monotonic()
        conv5, head, _, history = lp_ft(
            views,
            data,
            list(range(len(data.labels))),
            [],
            settings,
            epochs=args.epochs,
            bf16=bf16,
            conv_lr=args.conv_lr,
            head_lr=args.head_lr,
            batch_images=args.batch_images,
            seed=0,
        )
        torch.save(
            {
                "name": name,
                "conv5": {
                    f"features.{CONV5_INDICES.start + int(k.split('.')[0])}.{k.split('.')[1]}": v
                    for k, v in conv5.state_dict().items()
                },
                "head": head.state_dict(),
                "seconds": time.monotonic() - started,
            },
            OUT_DIR / "finetune_final.pt",
        )
        print(f"final fine-tune {time.monotonic() - started:.0f} s")
        return
    fold = folds_of(data.origins)
    target = OUT_DIR / ("finetune_oof.pt" if corpora == CORPORA else "finetune_trial.pt")
    saved = torch.load(target, weights_only=False) if target.is_file() else None
    if saved is None or saved["name"] != name:
        saved = {
            "name": name,
            "files": data.files,
            "logits": torch.full((len(data.labels), 3), float("nan")),
            "probe_logits": torch.full((len(data.labels), 3), float("nan")),
            "folds": {},
        }
    for held in args.folds:
        started = time.monotonic()
        train = [i for i, f in enumerate(fold) if f != held]
        test = [i for i, f in enumerate(fold) if f == held]
        fit_on, inner = inner_split(data, train)
        print(
            f"fold {held}: {len(fit_on)} training images, {len(inner)} inner validation, {len(test)} held out",
            flush=True,
        )
        conv5, head, linear_probe, history = lp_ft(
            views,
            data,
            fit_on,
            inner,
            settings,
            epochs=args.epochs,
            bf16=bf16,
            conv_lr=args.conv_lr,
            head_lr=args.head_lr,
            batch_images=args.batch_images,
            seed=held,
            log=lambda line: print(line, flush=True),
        )
        saved["logits"][test] = predict(views, conv5, head, test, bf16)
        with torch.no_grad():  # the same split's linear probe alone: what fine-tuning is compared with
            saved["probe_logits"][test] = linear_probe(data.vectors[test])
        saved["folds"][held] = {"history": history, "seconds": time.monotonic() - started}
        torch.save(saved, target)
        truth = [LABELS[i] for i in data.labels[test].tolist()]
        metrics = compute_metrics(truth, [LABELS[i] for i in saved["logits"][test].argmax(1).tolist()])
        probe_metrics = compute_metrics(truth, [LABELS[i] for i in saved["probe_logits"][test].argmax(1).tolist()])
        print(
            f"fold {held}: linear probe alone: held-out acc {probe_metrics['accuracy']:.3f} "
            f"F1 {probe_metrics['macro_f1']:.3f} ill recall {probe_metrics['per_class']['illustration']['recall']:.3f}"
        )
        print(
            f"fold {held}: held-out acc {metrics['accuracy']:.3f} F1 {metrics['macro_f1']:.3f} "
            f"ill recall {metrics['per_class']['illustration']['recall']:.3f} in {time.monotonic() - started:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
