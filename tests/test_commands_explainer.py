"""/why with the real explainer: a reduced-width classifier saved as the active model version."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from bot.app import ActiveModelExplainer
from bot.chat import commands
from bot.config import parse_config
from classifier.model import SCRATCH_BACKBONE, save_model
from storage import Store, utc_now
from tests.chat_store import ingest_images
from tests.tiny_model import tiny_classifier


def saved_model(path, seed: int):
    model = tiny_classifier(f"chat-{seed}", seed)
    return save_model(model, path)


def activate(store: Store, version: str, path) -> None:
    store.execute("UPDATE models SET active = 0")
    store.execute(
        "INSERT INTO models (version, path, backbone, active, created_at) VALUES (?, ?, ?, 1, ?)",
        (version, str(path), SCRATCH_BACKBONE, utc_now()),
    )


@pytest.mark.slow
def test_fresh_overlays_come_from_the_active_model_and_follow_a_new_one(tmp_path):
    torch.set_num_threads(1)
    config = parse_config({"data_dir": str(tmp_path / "data")})
    explainer = ActiveModelExplainer(config)
    with Store.open(config.data_path) as store:
        (media_id,) = ingest_images(store, [31])
        activate(store, "chat-1", saved_model(tmp_path / "one.pt", seed=1))
        first = commands.why(store, str(media_id), "gradcam", explainer)
        assert first.ok and first.text.startswith(f"Media {media_id}: fresh gradcam explanation.")
        first_bytes = first.attachments[0].path.read_bytes()
        assert Image.open(io.BytesIO(first_bytes)).format == "PNG"
        activate(store, "chat-2", saved_model(tmp_path / "two.pt", seed=2))
        second = commands.why(store, str(media_id), "gradcam", explainer)
        assert second.attachments[0].path.read_bytes() != first_bytes  # the new active model was loaded
        store.execute("UPDATE models SET path = ? WHERE active = 1", (str(tmp_path / "gone.pt"),))
        broken = commands.why(store, str(media_id), "gradcam", explainer)
        assert "A fresh gradcam explanation failed" in broken.text and "gone.pt" in broken.text
