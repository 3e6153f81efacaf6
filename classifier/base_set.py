"""The shipped base training set as cached feature vectors: what every retrain starts from, and half its validation.

The shipped model was trained on corpus images that cannot ship (licences, size); their pooled feature
vectors can. A retrain trains on these vectors plus the owner's labels, so the new model keeps what the
shipped one knows instead of learning three classes from a few dozen labels. The same origin-grouped split
The file fixes a validation part: whole origins, chosen when the file was built so that every class has
enough held-out images (a split by origin hash alone left 4 illustrations and 2 photos of the dev corpus on
the validation side: its illustrations and photos come from a few big origins). A retrain never trains on
it, so a candidate is always validated on every class, and `shipped_probabilities` holds the shipped model's
out-of-fold probabilities for each vector: scored on them, the shipped model is judged on images it was not
trained on, as the candidate is.

The file is a NumPy `.npz` (no pickles): vectors fp16 [N, D], labels uint8 [N] (index into LABELS),
groups / subgroups (origin and full origin string), validation bool [N], shipped_probabilities fp16 [N, 3],
and the feature key and model version the vectors belong to. Vectors are usable only by a model with the
same feature key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from classifier import LABELS
from classifier.data import LabelledImage
from storage.files import atomic_write

BASE_SET_FILE = "base_vectors.npz"
BASE_SET_FORMAT = "illustfeed-base-vectors-1"


class BaseSetError(ValueError):
    """A base-vector file is missing, damaged, or does not describe the vectors it holds."""


@dataclass
class BaseSet:
    vectors: torch.Tensor  # [N, D] float32
    labels: list[str]
    groups: list[str]
    subgroups: list[str]
    feature_key: str
    model_version: str  # the shipped model whose out-of-fold probabilities are below
    shipped_probabilities: torch.Tensor  # [N, 3], the shipped model's out-of-fold probabilities
    validation: list[bool]  # the held-out origins: never trained on by a retrain

    def __len__(self) -> int:
        return len(self.labels)

    def items(self) -> list[LabelledImage]:
        """One LabelledImage per vector, keyed `("base", index)` so they never collide with media ids."""
        return [
            LabelledImage(("base", index), None, label, group, subgroup)
            for index, (label, group, subgroup) in enumerate(zip(self.labels, self.groups, self.subgroups))
        ]

    def split(self) -> tuple[list[int], list[int]]:
        """(training indices, validation indices): the file's fixed split by origin."""
        return (
            [index for index, held in enumerate(self.validation) if not held],
            [index for index, held in enumerate(self.validation) if held],
        )

    def per_label(self) -> dict[str, int]:
        return {label: self.labels.count(label) for label in LABELS}


def save_base_set(path: str | Path, base: BaseSet) -> Path:
    path = Path(path)
    arrays = {
        "format": np.array(BASE_SET_FORMAT),
        "vectors": base.vectors.numpy().astype(np.float16),
        "labels": np.array([LABELS.index(label) for label in base.labels], dtype=np.uint8),
        "groups": np.array(base.groups),
        "subgroups": np.array(base.subgroups),
        "feature_key": np.array(base.feature_key),
        "model_version": np.array(base.model_version),
        "shipped_probabilities": base.shipped_probabilities.numpy().astype(np.float16),
        "validation": np.array(base.validation, dtype=bool),
    }
    atomic_write(path, lambda stream: np.savez_compressed(stream, **arrays))
    return path


def load_base_set(path: str | Path) -> BaseSet:
    """Read and check a base-vector file; any problem is a BaseSetError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise BaseSetError(f"base vector file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception as error:  # zipfile, OSError and ValueError all mean a damaged file
        raise BaseSetError(f"base vector file {path} is corrupt ({type(error).__name__}: {error})") from error
    if str(arrays.get("format", "")) != BASE_SET_FORMAT:
        raise BaseSetError(f"base vector file {path} is not a {BASE_SET_FORMAT} file")
    missing = [
        name
        for name in (
            "vectors",
            "labels",
            "groups",
            "subgroups",
            "feature_key",
            "model_version",
            "shipped_probabilities",
            "validation",
        )
        if name not in arrays
    ]
    if missing:
        raise BaseSetError(f"base vector file {path} lacks {missing}")
    vectors, labels = arrays["vectors"], arrays["labels"]
    count = len(labels)
    shapes_fit = (
        vectors.ndim == 2
        and len(vectors) == count
        and len(arrays["groups"]) == count
        and len(arrays["subgroups"]) == count
        and len(arrays["validation"]) == count
        and arrays["shipped_probabilities"].shape == (count, len(LABELS))
    )
    if not shapes_fit or count == 0:
        raise BaseSetError(
            f"base vector file {path}: arrays of different lengths or no vectors "
            f"(vectors {vectors.shape}, labels {labels.shape})"
        )
    if labels.max() >= len(LABELS):
        raise BaseSetError(f"base vector file {path} has label index {int(labels.max())}; expected < {len(LABELS)}")
    return BaseSet(
        vectors=torch.from_numpy(vectors.astype(np.float32)),
        labels=[LABELS[index] for index in labels.tolist()],
        groups=[str(group) for group in arrays["groups"]],
        subgroups=[str(group) for group in arrays["subgroups"]],
        feature_key=str(arrays["feature_key"]),
        model_version=str(arrays["model_version"]),
        shipped_probabilities=torch.from_numpy(arrays["shipped_probabilities"].astype(np.float32)),
        validation=[bool(held) for held in arrays["validation"]],
    )
