"""/why with the real explainer: a reduced-width classifier saved as the active model version."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from bot.app import ActiveModelExplainer
from bot.chat import commands
from bot.config import parse_config
from classifier.features import FeatureSpec
from classifier.model import SCRATCH_BACKBONE, new_classifier, save_model
from classifier.vgg import make_features
from storage import Store, utc_now
from tests.chat_store import ingest_images


def saved_model(path, seed: int):
    torch.manual_seed(seed)
    trunk = make_features(width=1 / 32)
    model = new_classifier(trunk, FeatureSpec(framing="multi_view"), backbone=SCRATCH_BACKBONE, backbone_width=1 / 32)
    model.version = f"chat-{seed}"
    model.backbone_delta = {f"features.{name}": tensor for name, tensor in trunk.state_dict().items()}
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
