"""Pooled feature vectors cached per media and feature key in the store's `features` table.

A vector depends only on the trunk's weights and the FeatureSpec (the model's `feature_key`), so every
head trained on the same trunk reuses them: retraining and re-scoring never rerun the conv net.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterable

import numpy as np
import torch


class StoreVectorCache:
    def __init__(self, store, feature_key: str):
        self.store = store
        self.feature_key = feature_key

    def get(self, media_ids: Iterable[int]) -> dict[int, torch.Tensor]:
        found: dict[int, torch.Tensor] = {}
        ids = list(media_ids)
        for start in range(0, len(ids), 500):  # stay under SQLite's bound-parameter limit
            chunk = ids[start : start + 500]
            marks = ",".join("?" for _ in chunk)
            for row in self.store.query(
                f"SELECT media_id, vector, dim FROM features WHERE backbone = ? AND media_id IN ({marks})",
                (self.feature_key, *chunk),
            ):
                vector = np.frombuffer(row["vector"], dtype=np.float32)
                if vector.size == row["dim"]:  # a short blob is damage: recompute rather than trust it
                    found[row["media_id"]] = torch.from_numpy(vector.copy())
        return found

    def put(self, vectors: dict[int, torch.Tensor]) -> None:
        """Write inside the caller's transaction when there is one (joins it), else in its own."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self.store.transaction():
            for media_id, vector in vectors.items():
                data = vector.detach().cpu().numpy().astype(np.float32)
                self.store.execute(
                    "INSERT OR REPLACE INTO features (media_id, backbone, vector, dim, created_at) VALUES (?, ?, ?, ?, ?)",
                    (media_id, self.feature_key, data.tobytes(), int(data.size), now),
                )
