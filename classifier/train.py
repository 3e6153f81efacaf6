"""Training a model version: a linear head on cached trunk features (default), or fine-tuning conv layers.

Head training is class-balanced, seeded, and stops early on the validation split's macro-F1; the softmax
temperature is then fitted on the same split so confidences are calibrated for borderline routing.
Fine-tuning (last conv block or whole trunk) uses RandomResizedCrop + horizontal flip and a GPU if present.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from classifier.data import DatasetError, LabelledImage, split_by_group, summarise
from classifier.evaluate import compute_metrics, per_origin_results
from classifier.features import aggregate_views, image_views
from classifier.inference import FeatureRunner, run_classifier
from classifier.model import ImageClassifier, LinearHead
from classifier.policy import PolicyError, PolicyTargets, feed_figures, fit_policy
from classifier.preprocess import load_rgb_frames, normalize

log = logging.getLogger(__name__)

TRAIN_MODES = ("head", "last_block", "full")
# `features` indices of VGG16's last conv block (conv5_1..conv5_3 and their ReLUs).
LAST_BLOCK_INDICES = range(24, 30)


@dataclass(frozen=True)
class TrainOptions:
    mode: str = "head"
    epochs: int = 300  # upper bound; early stopping usually ends head training far sooner
    patience: int = 30  # epochs without a better validation macro-F1 before stopping
    learning_rate: float = 3e-3
    weight_decay: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    validation_fraction: float = 0.2
    fine_tune_learning_rate: float = 1e-4
    progress: bool = True
    # What the review policy fitted on the validation predictions aims for (config [classifier]).
    policy_targets: PolicyTargets = PolicyTargets()

    def __post_init__(self):
        if self.mode not in TRAIN_MODES:
            raise ValueError(f"training mode {self.mode!r} is not one of {TRAIN_MODES}")


@dataclass
class TrainResult:
    model: ImageClassifier
    validation_items: list[LabelledImage]
    validation_vectors: torch.Tensor | None  # None after fine-tuning: the trunk changed
    history: list[dict] = field(default_factory=list)


# --- features -------------------------------------------------------------------------------------------


def feature_vectors(
    model: ImageClassifier,
    items: Sequence[LabelledImage],
    *,
    runner: FeatureRunner,
    cache=None,
    batch_size: int = 16,
    max_frames: int = 4,
    progress: bool = False,
    problems: list[str] | None = None,
) -> tuple[list[LabelledImage], torch.Tensor]:
    """Pooled vectors for `items` (cached ones read, the rest computed and cached); undecodable images are
    left out with a warning (and a line in `problems` when given). Returns the items kept and their
    vectors [N, D] in the same order."""
    known = cache.get([item.key for item in items]) if cache is not None else {}
    todo = [(item.key, item.source) for item in items if item.key not in known]
    computed: dict = {}
    bar = tqdm(total=len(todo), desc="features", unit="img", disable=not progress or not todo, leave=False)
    for result in run_classifier(model, todo, runner=runner, batch_size=batch_size, max_frames=max_frames):
        bar.update(1)
        if result.error is not None:
            log.warning("skipping %s: %s", result.key, result.error)
            if problems is not None:
                problems.append(f"{result.key}: skipped, cannot be decoded: {result.error}")
            continue
        computed[result.key] = result.vector
    bar.close()
    if cache is not None and computed:
        cache.put(computed)
    vectors = {**known, **computed}
    kept = [item for item in items if item.key in vectors]
    if not kept:
        raise DatasetError("no image could be decoded")
    return kept, torch.stack([vectors[item.key] for item in kept])


class EarlyStopping:
    """Keeps the best epoch's weights by validation macro-F1 (ties: validation loss lower by >= 0.001),
    records each epoch, and says when `patience` epochs have passed without a better one."""

    def __init__(self, module: nn.Module, patience: int, bar: tqdm):
        self.module, self.patience, self.bar = module, patience, bar
        self.best_key: tuple | None = None
        self.best_state: dict | None = None
        self.stale = 0
        self.history: list[dict] = []

    def epoch_done(
        self, train_loss: float, val_logits: torch.Tensor, val_y: torch.Tensor, labels: Sequence[str]
    ) -> bool:
        """Record the epoch; True when training should stop."""
        scores = _scores(val_logits, val_y, labels)
        val_loss = float(nn.functional.cross_entropy(val_logits, val_y))
        self.history.append(
            {
                "epoch": len(self.history) + 1,
                "loss": train_loss,
                "val_loss": val_loss,
                "val_accuracy": scores["accuracy"],
                "val_macro_f1": scores["macro_f1"],
            }
        )
        self.bar.set_postfix(
            loss=f"{train_loss:.3f}", val_f1=f"{scores['macro_f1']:.3f}", val_acc=f"{scores['accuracy']:.3f}"
        )
        key = (round(scores["macro_f1"], 6), -round(val_loss, 3))
        if self.best_key is None or key > self.best_key:
            self.best_key, self.best_state, self.stale = key, copy.deepcopy(self.module.state_dict()), 0
            return False
        self.stale += 1
        return self.stale >= self.patience

    def restore_best(self) -> None:
        self.bar.close()
        self.module.load_state_dict(self.best_state)


# --- head training --------------------------------------------------------------------------------------


def class_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """`n / (classes * count)` per class (scikit-learn's "balanced"); absent classes weigh 0."""
    counts = torch.bincount(targets, minlength=num_classes).float()
    present = int((counts > 0).sum())
    weights = torch.where(counts > 0, len(targets) / (present * counts.clamp_min(1)), torch.zeros_like(counts))
    return weights


def _scores(logits: torch.Tensor, targets: torch.Tensor, labels: Sequence[str]) -> dict:
    predicted = logits.argmax(1).tolist()
    return compute_metrics([labels[t] for t in targets.tolist()], [labels[p] for p in predicted], labels)


def train_head(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    labels: Sequence[str],
    options: TrainOptions,
) -> tuple[LinearHead, list[dict]]:
    """Adam on weighted cross-entropy, mini-batches in a seeded order; keeps the epoch with the best
    validation macro-F1 (ties: validation loss lower by >= 0.001) and stops after `patience` epochs without one."""
    # The head's tensors are tiny: with more than one thread every op waits on a thread barrier, which on a
    # busy machine costs far more than the arithmetic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_head(train_x, train_y, val_x, val_y, labels, options)
    finally:
        torch.set_num_threads(threads)


def _train_head(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    labels: Sequence[str],
    options: TrainOptions,
) -> tuple[LinearHead, list[dict]]:
    generator = torch.Generator().manual_seed(options.seed)
    torch.manual_seed(options.seed)
    head = LinearHead(train_x.shape[1], len(labels))
    head.set_standardisation(train_x)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(train_y, len(labels)))
    optimizer = torch.optim.Adam(head.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
    bar = tqdm(range(options.epochs), desc="train head", unit="epoch", disable=not options.progress, leave=False)
    stopper = EarlyStopping(head, options.patience, bar)
    for _epoch in bar:
        head.train()
        order = torch.randperm(len(train_x), generator=generator)
        total = 0.0
        for start in range(0, len(order), options.batch_size):
            batch = order[start : start + options.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(head(train_x[batch]), train_y[batch])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        head.eval()
        with torch.no_grad():
            val_logits = head(val_x)
        if stopper.epoch_done(total / len(order), val_logits, val_y, labels):
            break
    stopper.restore_best()
    history = stopper.history
    return head.eval(), history


WEIGHTINGS = ("none", "class", "class_origin")


def origin_weights(
    labels: torch.Tensor,
    groups: Sequence[str],
    weighting: str = "class_origin",
    illustration_boost: float = 1.0,
    classes: int = 3,
) -> torch.Tensor:
    """Per-image weights, mean 1. "none": every image counts once; "class": classes weigh equally;
    "class_origin": additionally each origin's images share weight ~ sqrt(count), so one game's 179 portraits
    do not define "illustration". Illustration images then weigh `illustration_boost` times more: a missed
    illustration costs more than a screenshot let through."""
    from collections import Counter

    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; known: {', '.join(WEIGHTINGS)}")
    weights = torch.ones(len(labels))
    if weighting == "class_origin":
        origin_counts = Counter(groups)
        weights = torch.tensor([origin_counts[group] ** -0.5 for group in groups], dtype=torch.float32)
    if weighting != "none":
        for label in range(classes):
            members = labels == label
            if members.any():
                weights[members] /= weights[members].sum()
    weights[labels == 0] *= illustration_boost
    return weights / weights.mean()


def fit_linear_head(
    vectors: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    *,
    l2: float = 1e-2,
    tail_columns: int = 0,
    tail_l2: float = 0.0,
    iterations: int = 200,
    classes: int = 3,
    start: LinearHead | None = None,
) -> LinearHead:
    """Full-batch L-BFGS on weighted cross-entropy + L2 (the shipped model's recipe): deterministic, seconds.

    The last `tail_columns` inputs (pixel statistics: a handful of columns after thousands of conv ones) get
    their own L2 factor, so the penalty tuned for the conv columns does not silence them. `start`: a head
    fitted on nearly the same data; the fit starts from the same function (re-expressed for this data's
    standardisation) and converges in a fraction of the steps.
    """
    # One thread, as in train_head: the tensors are small, and with two threads every op waits on a thread
    # barrier (measured on a busy 2-core machine: 0.9 s instead of 11 s for 696 x 2562).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit_linear_head(vectors, labels, weights, l2, tail_columns, tail_l2, iterations, classes, start)
    finally:
        torch.set_num_threads(threads)


def _fit_linear_head(
    vectors: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    l2: float,
    tail_columns: int,
    tail_l2: float,
    iterations: int,
    classes: int,
    start: LinearHead | None,
) -> LinearHead:
    vectors = vectors.float()
    head = LinearHead(vectors.shape[1], classes)
    head.set_standardisation(vectors)
    if start is not None:
        with torch.no_grad():
            # w.(x - m0)/s0 + b  ==  (w * s1/s0).(x - m1)/s1 + b + w.(m1 - m0)/s0
            ratio = head.feature_scale / start.feature_scale
            shift = (head.feature_mean - start.feature_mean) / start.feature_scale
            head.linear.weight.copy_(start.linear.weight * ratio)
            head.linear.bias.copy_(start.linear.bias + start.linear.weight @ shift)
    optimizer = torch.optim.LBFGS(head.linear.parameters(), max_iter=iterations, line_search_fn="strong_wolfe")
    split = vectors.shape[1] - tail_columns
    # Standardised once: only the linear layer is fitted, and each L-BFGS evaluation is then one matmul.
    standardised = (vectors - head.feature_mean) / head.feature_scale

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        losses = nn.functional.cross_entropy(head.linear(standardised), labels, reduction="none")
        squares = head.linear.weight.pow(2)
        loss = (losses * weights).mean() + l2 * squares[:, :split].sum() + tail_l2 * squares[:, split:].sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return head.eval()


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising validation NLL of softmax(logits / T)."""
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")
    logits = logits.detach()

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp().clamp(0.05, 20.0))
    return temperature if math.isfinite(temperature) else 1.0


# --- augmentation and fine-tuning ----------------------------------------------------------------------


def random_resized_crop(
    image: Image.Image,
    size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> Image.Image:
    """torchvision's RandomResizedCrop: a random area share and aspect ratio, resized to size x size."""
    width, height = image.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _attempt in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return image.resize((size, size), Image.BILINEAR, box=(left, top, left + crop_w, top + crop_h))
    # Fallback, as torchvision: the whole image's centre at the nearest allowed ratio.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        crop_w, crop_h = int(round(height * ratio[1])), height
    else:
        crop_w, crop_h = width, height
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return image.resize((size, size), Image.BILINEAR, box=(left, top, left + crop_w, top + crop_h))


def augmented_tensor(image: Image.Image, size: int, rng: np.random.Generator) -> torch.Tensor:
    """RandomResizedCrop + RandomHorizontalFlip(0.5) + ImageNet normalisation -> [3, size, size]."""
    crop = random_resized_crop(image, size, rng)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return normalize(crop)


def _trainable_trunk_parameters(model: ImageClassifier, mode: str) -> dict[str, nn.Parameter]:
    chosen = {}
    for name, parameter in model.features.named_parameters():
        index = int(name.split(".")[0])
        if mode == "full" or index in LAST_BLOCK_INDICES:
            chosen[f"features.{name}"] = parameter
    return chosen


def _eval_vectors(model: ImageClassifier, images: list[list[Image.Image]], device: torch.device) -> torch.Tensor:
    vectors = []
    with torch.inference_mode():
        for frames in images:
            per_frame = [
                aggregate_views(model.extractor(image_views(frame, model.spec).to(device)).float().cpu())
                for frame in frames
            ]
            vectors.append(torch.stack(per_frame).mean(0))
    return torch.stack(vectors)


def fine_tune(
    model: ImageClassifier,
    train_items: list[LabelledImage],
    val_items: list[LabelledImage],
    labels: Sequence[str],
    options: TrainOptions,
) -> tuple[ImageClassifier, list[dict]]:
    """Train the head together with the last conv block (`last_block`) or the whole trunk (`full`)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(options.seed)
    torch.manual_seed(options.seed)
    model = copy.deepcopy(model).to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    trunk_parameters = _trainable_trunk_parameters(model, options.mode)
    for parameter in list(trunk_parameters.values()) + list(model.head.parameters()):
        parameter.requires_grad_(True)
    train_images = [load_rgb_frames(item.source, max_frames=1)[0] for item in train_items]
    val_images = [load_rgb_frames(item.source, max_frames=1) for item in val_items]
    train_y = torch.tensor([labels.index(item.label) for item in train_items])
    val_y = torch.tensor([labels.index(item.label) for item in val_items])
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(train_y, len(labels)).to(device))
    optimizer = torch.optim.Adam(
        [
            {"params": list(trunk_parameters.values()), "lr": options.fine_tune_learning_rate},
            {"params": list(model.head.parameters()), "lr": options.learning_rate},
        ],
        weight_decay=options.weight_decay,
    )
    size = model.spec.image_size
    bar = tqdm(
        range(options.epochs), desc=f"fine-tune {options.mode}", unit="epoch", disable=not options.progress, leave=False
    )
    stopper = EarlyStopping(model, options.patience, bar)
    for _epoch in bar:
        model.train()
        order = rng.permutation(len(train_images))
        total = 0.0
        for start in range(0, len(order), options.batch_size):
            batch = order[start : start + options.batch_size]
            inputs = torch.stack([augmented_tensor(train_images[i], size, rng) for i in batch]).to(device)
            optimizer.zero_grad()
            loss = loss_fn(model(inputs), train_y[batch].to(device))
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        model.eval()
        with torch.no_grad():
            val_logits = model.head(_eval_vectors(model, val_images, device).to(device)).cpu()
        if stopper.epoch_done(total / len(order), val_logits, val_y, labels):
            break
    stopper.restore_best()
    history = stopper.history
    model = model.cpu().eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    delta = dict(model.backbone_delta)
    delta.update(
        {
            name: parameter.detach().clone()
            for name, parameter in _trainable_trunk_parameters(model, options.mode).items()
        }
    )
    model.backbone_delta = delta
    return model, history


def fit_review_policy(
    model: ImageClassifier, logits: torch.Tensor, true_labels: Sequence[str], targets: PolicyTargets
) -> dict | None:
    """Fit `model.policy` on held-out logits (after temperature scaling); returns the feed figures it gives
    there, or None (and no policy: the borderline rule applies) when the held-out images lack a class."""
    probabilities = torch.softmax(logits / model.temperature, dim=1).numpy()
    try:
        model.policy = fit_policy(probabilities, true_labels, model.labels, targets)
    except PolicyError as error:
        log.info("no review policy fitted (%s); the borderline rule applies", error)
        model.policy = None
        return None
    return feed_figures(true_labels, probabilities, model.labels, model.policy)


# --- one training run ----------------------------------------------------------------------------------


def new_version(model: ImageClassifier) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    digest = hashlib.sha256()
    for tensor in model.head.state_dict().values():
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return f"{stamp}-{digest.hexdigest()[:6]}"


def train_model(
    base: ImageClassifier,
    items: Sequence[LabelledImage],
    options: TrainOptions,
    *,
    runner: FeatureRunner | None = None,
    cache=None,
    parent: str | None = None,
    source: str = "",
    problems: Sequence[str] = (),
) -> TrainResult:
    """Split by group, train, calibrate, and score on the validation split; returns an unsaved model.

    `problems` are inputs already skipped (e.g. manifest rows without a file); undecodable images join
    them, and the model's data summary counts and lists them. Metrics include per-origin validation rows.
    """
    skipped = list(problems)
    labels = base.labels
    unknown = sorted({item.label for item in items} - set(labels))
    if unknown:
        raise DatasetError(f"labels {unknown} are not among {labels}")
    train_items, val_items = split_by_group(items, options.validation_fraction)
    for name, part in (("training", train_items), ("validation", val_items)):
        if not part:
            raise DatasetError(
                f"the {name} split is empty ({len(items)} images in "
                f"{len({i.group for i in items})} groups); add images from more sources"
            )
    runner = runner or FeatureRunner(base)
    train_items, train_x = feature_vectors(
        base, train_items, runner=runner, cache=cache, progress=options.progress, problems=skipped
    )
    val_items, val_x = feature_vectors(
        base, val_items, runner=runner, cache=cache, progress=options.progress, problems=skipped
    )
    train_y = torch.tensor([labels.index(item.label) for item in train_items])
    val_y = torch.tensor([labels.index(item.label) for item in val_items])
    head, history = train_head(train_x, train_y, val_x, val_y, labels, options)
    model = ImageClassifier(
        base.extractor,
        head,
        labels=labels,
        backbone=base.backbone,
        backbone_width=base.backbone_width,
        backbone_delta=base.backbone_delta,
    )
    validation_vectors: torch.Tensor | None = val_x
    if options.mode != "head":
        model, tune_history = fine_tune(model, train_items, val_items, labels, options)
        history += tune_history
        val_x = _eval_vectors(model, [load_rgb_frames(i.source, max_frames=4) for i in val_items], torch.device("cpu"))
        validation_vectors = None
    with torch.no_grad():
        val_logits = model.head(val_x)
    model.temperature = fit_temperature(val_logits, val_y)
    metrics = _scores(val_logits, val_y, labels)
    metrics["per_origin"] = per_origin_results(
        [item.label for item in val_items],
        [labels[p] for p in val_logits.argmax(1).tolist()],
        [item.group for item in val_items],
        labels,
    )
    metrics["temperature"] = model.temperature
    metrics["feed"] = fit_review_policy(model, val_logits, [item.label for item in val_items], options.policy_targets)
    metrics["validation_nll"] = float(nn.functional.cross_entropy(val_logits / model.temperature, val_y))
    model.metrics = metrics
    model.data_summary = {
        "source": source,
        "mode": options.mode,
        "seed": options.seed,
        "train": summarise(train_items),
        "validation": summarise(val_items),
        "epochs": len(history),
        "skipped": {"count": len(skipped), "inputs": skipped},
    }
    model.parent = parent
    model.version = new_version(model)
    return TrainResult(model, val_items, validation_vectors, history)
