"""The shipped default as a model version, the base-vector file, and retrain candidates on cached vectors.

Real SQLite stores and real head training on feature vectors written to the store's `features` cache
(three overlapping class clusters): no image is decoded because a retrain never needs one.
"""

import json
import shutil

import numpy as np
import pytest
import torch

from classifier import LABELS
from classifier.base_set import BaseSet, BaseSetError, load_base_set, save_base_set
from classifier.model import ModelFileError, read_model_file
from classifier.versions import (
    DEFAULT_MODEL_DIR,
    ModelVersionError,
    activate,
    ensure_default_registered,
    list_models,
    rollback,
)
from tests.conftest import run_cli

SHIPPED = DEFAULT_MODEL_DIR / "model.pt"
SHIPPED_VERSION = read_model_file(SHIPPED).version


def test_fresh_store_lists_the_shipped_default_as_its_active_version(store):
    rows = list_models(store)
    assert [(row["version"], row["active"], row["parent"]) for row in rows] == [(SHIPPED_VERSION, 1, None)]
    copied = store.data_dir / "models" / f"{SHIPPED_VERSION}.pt"
    assert rows[0]["path"] == str(copied) and copied.read_bytes() == SHIPPED.read_bytes()
    assert rows[0]["metrics"]["accuracy"] == read_model_file(SHIPPED).metrics["accuracy"]
    assert ensure_default_registered(store) == SHIPPED_VERSION and len(list_models(store)) == 1  # once only
    assert activate(store, SHIPPED_VERSION)["version"] == SHIPPED_VERSION
    with pytest.raises(ModelVersionError, match=f"{SHIPPED_VERSION} has no parent"):
        rollback(store)


def test_shipped_default_joins_an_existing_store_inactive(store, tmp_path):
    from tests.test_retrain import install_tiny_model

    shipped_dir = tmp_path / "shipped"
    shipped_dir.mkdir()
    install_tiny_model(store, (0.0, 0.0, 0.0))  # registers the real default first, then activates tiny-0
    store.execute("DELETE FROM models WHERE version = ?", (SHIPPED_VERSION,))
    shutil.copy(SHIPPED, shipped_dir / "model.pt")
    assert ensure_default_registered(store, shipped_dir) == SHIPPED_VERSION
    assert {row["version"]: row["active"] for row in list_models(store)} == {"tiny-0": 1, SHIPPED_VERSION: 0}


def test_a_damaged_shipped_default_is_a_clear_error_and_registers_nothing(store, tmp_path):
    shipped_dir = tmp_path / "shipped"
    shipped_dir.mkdir()
    (shipped_dir / "model.pt").write_bytes(SHIPPED.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match=str(shipped_dir / "model.pt")):
        ensure_default_registered(store, shipped_dir)
    assert store.scalar("SELECT COUNT(*) FROM models") == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ensure_default_registered(store, empty) is None


def test_cli_model_list_activate_and_rollback_reach_the_shipped_default(tmp_path):
    assert run_cli("init", cwd=tmp_path).returncode == 0
    listed = run_cli("model", "list", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [(row["version"], row["active"]) for row in json.loads(listed.stdout)] == [(SHIPPED_VERSION, 1)]
    activated = run_cli("model", "activate", SHIPPED_VERSION, cwd=tmp_path)
    assert activated.returncode == 0 and f"active model: {SHIPPED_VERSION}" in activated.stdout
    rolled = run_cli("model", "rollback", cwd=tmp_path)
    assert rolled.returncode != 0 and f"{SHIPPED_VERSION} has no parent" in rolled.stderr


# --- base-vector file ---------------------------------------------------------------------------------


def small_base_set(count_per_label: int = 12, dim: int = 8, key: str = "k", version: str = "v") -> BaseSet:
    rng = np.random.default_rng(0)
    labels = [label for label in LABELS for _ in range(count_per_label)]
    vectors = torch.tensor(rng.normal(size=(len(labels), dim)), dtype=torch.float32)
    groups = [f"origin{index % 9}" for index in range(len(labels))]
    return BaseSet(
        vectors,
        labels,
        groups,
        [f"{group} path{index}" for index, group in enumerate(groups)],
        key,
        version,
        torch.full((len(labels), 3), 1 / 3),
        [group in ("origin0", "origin4") for group in groups],
    )


def test_base_set_round_trips_in_fp16(tmp_path):
    base = small_base_set()
    path = save_base_set(tmp_path / "base.npz", base)
    loaded = load_base_set(path)
    assert loaded.labels == base.labels and loaded.groups == base.groups and loaded.subgroups == base.subgroups
    assert (loaded.feature_key, loaded.model_version) == ("k", "v")
    assert torch.allclose(loaded.vectors, base.vectors, atol=2e-3)  # fp16 on disk
    train, validation = loaded.split()
    assert sorted(train + validation) == list(range(len(base))) and loaded.validation == base.validation
    assert [index for index, held in enumerate(base.validation) if held] == validation


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda path: path.write_bytes(b"PK\x03\x04 truncated"), "is corrupt"),
        (lambda path: np.savez(path, format=np.array("something else")), "is not a illustfeed-base-vectors-1 file"),
        (lambda path: path.unlink(), "does not exist"),
    ],
)
def test_damaged_base_set_is_a_clear_error(tmp_path, damage, message):
    path = save_base_set(tmp_path / "base.npz", small_base_set())
    damage(path)
    with pytest.raises(BaseSetError, match=message):
        load_base_set(path)


def test_base_set_with_arrays_of_different_lengths_is_refused(tmp_path):
    path = save_base_set(tmp_path / "base.npz", small_base_set())
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["labels"] = arrays["labels"][:-1]
    np.savez(path, **arrays)
    with pytest.raises(BaseSetError, match="different lengths"):
        load_base_set(path)


# --- retrain candidates on cached vectors -------------------------------------------------------------


def cluster_vectors(rng: np.random.Generator, label_indices: list[int], dim: int) -> np.ndarray:
    """Three overlapping class clusters: a linear head learns them, but not perfectly."""
    centres = np.random.default_rng(7).normal(0, 1, size=(len(LABELS), dim)).astype(np.float32)
    return (centres[label_indices] + rng.normal(0, 6.0, size=(len(label_indices), dim))).astype(np.float32)


def labelled_store_with_vectors(store, media_per_label: int, accounts: int, seed: int = 0):
    """Tiny model tiny-0 active (always "photo"); labelled media whose vectors sit in the features cache."""
    from tests.test_retrain import install_tiny_model

    model = install_tiny_model(store, (0.0, 0.0, 0.3))
    rng = np.random.default_rng(seed)
    plan = [index for index in range(len(LABELS)) for _ in range(media_per_label)]
    vectors = cluster_vectors(rng, plan, model.extractor.dim)
    with store.transaction():
        account_ids = [store.upsert_account("folder", f"account{n:02d}") for n in range(accounts)]
        for number, vector in enumerate(vectors):
            media_id = store.insert_media(
                sha256=f"{number:064x}",
                phash="0" * 16,
                mime="image/jpeg",
                ext="jpg",
                width=64,
                height=64,
                frames=1,
                bytes=1000,
                status="ok",
            )
            post_id, _ = store.upsert_post(account_ids[number % accounts], "folder", f"post{number}", None, None, None)
            store.link_post_media(post_id, media_id, 0, None, None)
            store.execute(
                "INSERT INTO features (media_id, backbone, vector, dim, created_at) VALUES (?, ?, ?, ?, ?)",
                (media_id, model.feature_key, vector.tobytes(), vector.size, "2026-01-01T00:00:00"),
            )
    for media_id, label_index in zip(range(1, len(plan) + 1), plan):
        store.add_label(media_id, LABELS[label_index], by="owner", via="cli")
    return model


def retrain_settings(store, **retrain):
    from bot.config import parse_config

    return parse_config(
        {"data_dir": str(store.data_dir), "classifier": {"precision": "fp32", "progress": False}, "retrain": retrain},
        environ={},
    )


def test_min_new_labels_counts_labelled_media_not_label_rows(store):
    from bot.retrain import SKIPPED, count_new_labels, run_retrain

    labelled_store_with_vectors(store, media_per_label=2, accounts=6)
    store.add_label(1, "photo", by="owner", via="cli")  # changed mind twice on media 1: still one media
    store.add_label(1, "illustration", by="owner", via="cli")
    assert store.scalar("SELECT COUNT(*) FROM labels") == 8 and count_new_labels(store) == 6
    outcome = run_retrain(store, retrain_settings(store, min_new_labels=7))
    assert outcome.status == SKIPPED and outcome.new_labels == 6
    assert outcome.reason == "6 newly labelled media, fewer than min_new_labels 7"


def test_too_few_validation_images_of_a_class_keeps_the_active_model(store):
    """Without a usable base set (the tiny model's features are not the shipped vectors' ones), a handful
    of labels cannot validate every class: the retrain says so and the active model stays."""
    from bot.retrain import REFUSED, run_retrain

    labelled_store_with_vectors(store, media_per_label=8, accounts=24)
    outcome = run_retrain(store, retrain_settings(store), force=True)
    assert outcome.status == REFUSED
    assert "too few validation images of a class" in outcome.reason and "keeping the active model" in outcome.reason
    assert store.active_model()["version"] == "tiny-0"
    assert outcome.base_images == 0 and sum(outcome.validation["human"].values()) < 3 * 5


def test_candidate_trains_on_base_vectors_and_the_shipped_model_is_judged_out_of_fold(store, tmp_path):
    """The base set fits the active model (same feature key, made for it): its validation part joins the
    held-out labels, and the active model is scored there by its out-of-fold probabilities (here perfect),
    not by its head (which always says photo), so a candidate that is not as good is refused."""
    from classifier.data import store_labelled
    from classifier.retraining import HUMAN_LABEL_WEIGHT, build_candidate

    model = labelled_store_with_vectors(store, media_per_label=4, accounts=12)
    rng = np.random.default_rng(1)
    plan = [index for index in range(len(LABELS)) for _ in range(60)]
    groups = [f"base-origin-{n % 30}" for n in range(len(plan))]
    held = [int(group.rsplit("-", 1)[1]) < 8 for group in groups]  # 8 of the 30 origins: 16 images per class
    base = BaseSet(
        torch.from_numpy(cluster_vectors(rng, plan, model.extractor.dim)),
        [LABELS[i] for i in plan],
        groups,
        groups,
        model.feature_key,
        "tiny-0",
        torch.eye(3)[plan],
        held,
    )
    path = save_base_set(tmp_path / "base.npz", base)

    candidate = build_candidate(store, retrain_settings(store), store_labelled(store), base_set_path=path)
    _train, base_validation = base.split()
    assert candidate.base_images == len(base) and candidate.base_note == ""
    assert sum(candidate.validation["base"].values()) == len(base_validation)
    assert all(count >= 5 for count in candidate.validation["base"].values())
    human_validation = sum(candidate.validation["human"].values())
    # Perfect on the base rows, "photo" on the held-out labels.
    photos = candidate.validation["human"]["photo"]
    assert candidate.active_metrics["accuracy"] == pytest.approx(
        (len(base_validation) + photos) / (len(base_validation) + human_validation)
    )
    assert 0.5 < candidate.metrics["accuracy"] < candidate.active_metrics["accuracy"]
    assert not candidate.decision.promote and candidate.decision.reason.startswith("worse than the active model")
    summary = candidate.model.data_summary
    assert summary["human_label_weight"] == HUMAN_LABEL_WEIGHT
    # Refused, so the registered head is the validated one (a promoted one is refitted with the held-out
    # origins, as the shipped model was trained: see the twin test).
    assert summary["train"]["base"]["images"] == len(base) - len(base_validation)
    assert not summary["base_set"]["refit_on_validation"]
    assert candidate.model.parent == "tiny-0" and candidate.model.feature_key == model.feature_key


def test_a_retrained_active_model_is_judged_on_base_images_by_its_held_out_twin(store, tmp_path):
    """A promoted retrain ships refitted on the base validation origins; the next retrain judges it there by
    the same recipe on the same data without them. With no new label, that twin is the next candidate's own
    held-out head."""
    from classifier.data import store_labelled
    from classifier.retraining import build_candidate
    from classifier.versions import register_model

    model = labelled_store_with_vectors(store, media_per_label=12, accounts=24)
    rng = np.random.default_rng(2)
    plan = [index for index in range(len(LABELS)) for _ in range(60)]
    groups = [f"base-origin-{n % 30}" for n in range(len(plan))]
    held = [int(group.rsplit("-", 1)[1]) < 8 for group in groups]
    base = BaseSet(
        torch.from_numpy(cluster_vectors(rng, plan, model.extractor.dim)),
        [LABELS[i] for i in plan],
        groups,
        groups,
        model.feature_key,
        "shipped-elsewhere",
        torch.full((len(plan), 3), 1 / 3),
        held,
    )
    path = save_base_set(tmp_path / "base.npz", base)
    config = retrain_settings(store)

    first = build_candidate(store, config, store_labelled(store), base_set_path=path)
    assert first.decision.promote, first.decision.reason  # tiny-0 always says photo
    assert first.model.data_summary["base_set"]["refit_on_validation"]
    assert first.model.data_summary["train"]["base"]["images"] == len(base)
    first.model.data_summary["last_label_id"] = store.scalar("SELECT MAX(id) FROM labels")
    register_model(store, first.model)
    activate(store, first.model.version)

    second = build_candidate(store, config, store_labelled(store), base_set_path=path)
    assert second.active_version == first.model.version
    assert second.metrics["confusion"] == first.metrics["confusion"]  # the recipe is deterministic
    # On the base rows the active model is its twin, i.e. this candidate's held-out head: the two can differ
    # only on the held-out labels, where the active model is its own head.
    human_share = sum(second.validation["human"].values()) / sum(
        sum(counts.values()) for counts in second.validation.values()
    )
    assert abs(second.active_metrics["accuracy"] - second.metrics["accuracy"]) <= human_share
    # Scored by its own (refitted) head instead, the active model would have seen these base images.
    from classifier.model import head_from_record

    _train, base_validation = base.split()
    with torch.no_grad():
        own = head_from_record(read_model_file(store.active_model()["path"]))(base.vectors[base_validation]).argmax(1)
    truth = torch.tensor([LABELS.index(base.labels[i]) for i in base_validation])
    assert (own == truth).float().mean() > second.active_metrics["accuracy"]


def test_retrain_with_nothing_to_train_on_is_a_clear_error_and_changes_nothing(store):
    from bot.retrain import run_retrain
    from classifier.data import DatasetError
    from tests.test_retrain import install_tiny_model

    install_tiny_model(store, (0.0, 0.0, 0.3))  # its features are not the shipped base vectors' ones
    with pytest.raises(DatasetError, match="split is empty: 0 human labels and 0 base images to train on"):
        run_retrain(store, retrain_settings(store), force=True)
    assert {row["version"]: row["active"] for row in list_models(store)} == {SHIPPED_VERSION: 0, "tiny-0": 1}


def test_a_read_only_store_uses_the_shipped_default_without_registering_it(tmp_path):
    from classifier.versions import resolve_model_path
    from storage import Store

    Store.open(tmp_path / "data").close()
    with Store.open(tmp_path / "data", read_only=True) as store:
        assert resolve_model_path(store, None) == SHIPPED
        assert store.scalar("SELECT COUNT(*) FROM models") == 0
