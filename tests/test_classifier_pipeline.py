"""Real training on generated data, then the trained model through classify, review, versions and eval."""

import copy
import json
import time
from pathlib import Path

import pytest
import torch

from bot import review
from classifier import LABELS
from classifier.data import scan_folder
from classifier.evaluate import evaluate_model
from bot.classify import classify_pending
from classifier.inference import FeatureRunner, run_classifier
from classifier.model import ModelFileError, load_model, save_model
from tests.synthetic import generate, jpeg_bytes, tiny_base_model, write_dataset
from classifier.train import TrainOptions, train_head, train_model
from classifier.versions import (
    ModelVersionError,
    activate,
    list_models,
    register_model,
    rollback,
)
from tests.conftest import run_cli
from classifier.model import read_model_file
from classifier.versions import default_model_file

# The shipped default model's version: the root of every rollback chain.
SHIPPED = read_model_file(default_model_file()).version

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A reduced-width VGG16 + head trained on 3 x 40 generated images; held-out set of 3 x 20."""
    root = tmp_path_factory.mktemp("generated")
    train_items = scan_folder(write_dataset(root / "train", per_label=40, seed=0))
    held_out = scan_folder(write_dataset(root / "held_out", per_label=20, seed=1))
    base = tiny_base_model()
    cpu_started = time.process_time()
    result = train_model(
        base,
        train_items,
        TrainOptions(progress=False, seed=0),
        runner=FeatureRunner(base, precision="fp32"),
        source="generated",
    )
    cpu_seconds = time.process_time() - cpu_started
    return {
        "result": result,
        "model": result.model,
        "held_out": held_out,
        "root": root,
        "cpu_seconds": cpu_seconds,
        "base": base,
    }


def test_training_on_generated_classes_reaches_90_percent_on_held_out_images(trained):
    model = trained["model"]
    metrics, per_item = evaluate_model(model, trained["held_out"], runner=FeatureRunner(model, precision="fp32"))
    assert metrics["accuracy"] >= 0.9, metrics
    assert metrics["per_class"]["illustration"]["recall"] >= 0.9
    assert len(per_item) == 60 and metrics["skipped"] == 0
    # Two CPU cores are shared by the whole team: the budget is CPU time, not wall time.
    assert trained["cpu_seconds"] < 2 * 60, trained["cpu_seconds"]


def test_trained_model_carries_calibration_metrics_and_a_group_split(trained):
    model = trained["model"]
    assert 0.05 <= model.temperature <= 20
    assert set(model.metrics) >= {"accuracy", "macro_f1", "per_class", "confusion", "temperature"}
    summary = model.data_summary
    assert summary["train"]["images"] + summary["validation"]["images"] == 120
    assert summary["validation"]["images"] > 0 and summary["source"] == "generated"


def test_saved_version_reloads_to_identical_outputs(trained, tmp_path):
    model = trained["model"]
    path = save_model(model, tmp_path / "m.pt")
    reloaded = load_model(path, trunk_weights=None)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), reloaded(x), atol=1e-6)
    assert reloaded.version == model.version and reloaded.temperature == model.temperature
    assert reloaded.feature_key == model.feature_key


def test_head_training_is_seeded():
    generator = torch.Generator().manual_seed(5)
    train_x, val_x = torch.randn(60, 16, generator=generator), torch.randn(30, 16, generator=generator)
    train_y, val_y = torch.arange(60) % 3, torch.arange(30) % 3
    options = TrainOptions(progress=False, seed=3, epochs=20)
    first, _ = train_head(train_x, train_y, val_x, val_y, LABELS, options)
    second, _ = train_head(train_x, train_y, val_x, val_y, LABELS, options)
    other, _ = train_head(train_x, train_y, val_x, val_y, LABELS, TrainOptions(progress=False, seed=4, epochs=20))
    assert torch.equal(first.linear.weight, second.linear.weight)
    assert not torch.equal(first.linear.weight, other.linear.weight)


# --- classify_pending on a real store ------------------------------------------------------------------


def add_media(store, data: bytes, ext: str = "jpg") -> int:
    sha = store.blobs.put(data, ext)
    with store.transaction():
        return store.insert_media(
            sha256=sha, mime=f"image/{ext}", ext=ext, width=1, height=1, frames=1, bytes=len(data), status="ok"
        )


def without_policy(model):
    """The same model deciding review by the borderline rule (training fitted it a review policy)."""
    plain = copy.copy(model)
    plain.policy = None
    return plain


def test_classify_pending_stores_predictions_vectors_and_queues_borderline(trained, store):
    model = without_policy(trained["model"])
    ids = {label: [add_media(store, jpeg_bytes(generate(label, 500 + n))) for n in range(3)] for label in LABELS}
    # Thresholds that make every call borderline except the most confident: the queue order is checked.
    summary = classify_pending(
        store,
        model,
        runner=FeatureRunner(model, precision="fp32"),
        borderline_confidence=0.0,
        borderline_margin=0.999,
        batch_size=4,
    )
    assert summary.classified == 9 and summary.failed == 0
    rows = store.query("SELECT * FROM predictions ORDER BY media_id")
    assert len(rows) == 9
    for row in rows:
        probs = [row["prob_illustration"], row["prob_screenshot"], row["prob_photo"]]
        assert abs(sum(probs) - 1) < 1e-5 and row["model_version"] == model.version
        assert row["confidence"] == pytest.approx(max(probs))
        assert row["margin"] == pytest.approx(max(probs) - sorted(probs)[-2])
        assert row["label"] == LABELS[probs.index(max(probs))]
        assert row["borderline"] == int(row["margin"] < 0.999)
    correct = sum(row["label"] == label for label, media in ids.items() for row in rows if row["media_id"] in media)
    assert correct >= 8
    vectors = store.query("SELECT media_id, backbone, dim, length(vector) AS size FROM features")
    assert len(vectors) == 9
    assert {v["backbone"] for v in vectors} == {model.feature_key}
    assert all(v["size"] == 4 * v["dim"] == 4 * model.extractor.dim for v in vectors)
    queue = store.query("SELECT * FROM review_queue ORDER BY priority DESC")
    borderline_rows = [r for r in rows if r["borderline"]]
    assert len(queue) == len(borderline_rows) == summary.queued_for_review
    margins = {r["media_id"]: r["margin"] for r in rows}
    assert [q["media_id"] for q in queue] == sorted(margins, key=margins.get)[: len(queue)]
    assert all("margin" in q["reason"] and q["state"] == "pending" for q in queue)
    # Nothing left to do for this model version.
    assert classify_pending(store, model, runner=FeatureRunner(model, precision="fp32")).classified == 0


def test_new_head_on_cached_features_never_needs_the_images_again(trained, store):
    model = trained["model"]
    media_id = add_media(store, jpeg_bytes(generate("photo", 900)))
    classify_pending(store, model, runner=FeatureRunner(model, precision="fp32"))
    store.blobs.path(store.media(media_id)["sha256"], "jpg").unlink()  # the conv net could not run now
    retrained = load_model(save_model(model, store.data_dir / "copy.pt"), trunk_weights=None)
    retrained.version = "retrained-head"
    summary = classify_pending(store, retrained)
    assert summary.classified == 1 and summary.from_cached_features == 1 and summary.failed == 0
    first, second = store.query("SELECT * FROM predictions WHERE media_id = ? ORDER BY id", (media_id,))
    assert second["model_version"] == "retrained-head"
    assert second["prob_photo"] == pytest.approx(first["prob_photo"], abs=1e-6)


def test_human_labelled_media_is_not_queued_and_undecodable_media_is_reported(trained, store):
    model = without_policy(trained["model"])
    labelled = add_media(store, jpeg_bytes(generate("screenshot", 901)))
    review.record_label(store, labelled, "screenshot", by="tester", via="test")
    broken = add_media(store, b"\xff\xd8\xff\xe0 not really a jpeg", "jpg")
    summary = classify_pending(
        store, model, runner=FeatureRunner(model, precision="fp32"), borderline_confidence=1.1, borderline_margin=0.0
    )
    assert summary.classified == 1 and summary.failed == 1
    assert f"media {broken}" in summary.problems[0]
    assert store.query("SELECT * FROM review_queue") == []
    assert store.query_one("SELECT * FROM predictions WHERE media_id = ?", (labelled,))["borderline"] == 1
    row = store.media(broken)
    assert row["status"] == "rejected" and row["reject_reason"].startswith("stored file cannot be decoded")
    again = classify_pending(store, model, runner=FeatureRunner(model, precision="fp32"))
    assert again.classified == 0 and again.failed == 0  # not decoded again on every poll


def test_animated_media_averages_probabilities_over_evenly_spaced_frames(trained, tmp_path):
    model = trained["model"]
    frames = [generate("illustration", 1), generate("photo", 2, size=(120, 100)), generate("screenshot", 3)]
    frames = [frame.resize((120, 100)) for frame in frames] * 3  # 9 frames
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=50, loop=0)
    runner = FeatureRunner(model, precision="fp32")
    (animated,) = run_classifier(model, [("gif", gif)], runner=runner, max_frames=3)
    assert animated.frames == 3
    from classifier.preprocess import load_rgb_frames

    singles = []
    for frame in load_rgb_frames(gif, max_frames=3):
        path = tmp_path / f"frame{len(singles)}.png"
        frame.save(path)
        (single,) = run_classifier(model, [(len(singles), path)], runner=runner)
        singles.append(single.probabilities)
    expected = torch.tensor(singles).mean(0)
    assert torch.allclose(torch.tensor(animated.probabilities), expected, atol=1e-5)


# --- versions -----------------------------------------------------------------------------------------


def test_classify_pending_follows_the_models_review_policy(trained, store):
    from classifier.policy import ReviewPolicy

    model = copy.copy(trained["model"])
    images = [jpeg_bytes(generate(label, 800 + n)) for label in LABELS for n in range(4)]
    for data in images:
        add_media(store, data)
    results = list(run_classifier(model, list(enumerate(images)), runner=FeatureRunner(model, precision="fp32")))
    # The tiny model is sure of everything; a softer temperature spreads P(illustration) over (0, 1).
    with torch.no_grad():
        vectors = torch.stack([result.vector for result in results])
        model.temperature = float(model.head(vectors).std()) * 2
        p_illustration = sorted({round(float(p), 6) for p in model.probabilities_from_vectors(vectors)[:, 0]})
    assert len(p_illustration) >= 6
    # Thresholds between observed values, so each of the three outcomes happens.
    feed_threshold = (p_illustration[-2] + p_illustration[-3]) / 2
    floor = (p_illustration[1] + p_illustration[2]) / 2
    model.policy = ReviewPolicy(feed_threshold, floor)
    # The borderline rule would queue everything (margin < 0.999); the policy decides instead.
    summary = classify_pending(
        store, model, runner=FeatureRunner(model, precision="fp32"), borderline_confidence=0.0, borderline_margin=0.999
    )
    rows = store.query("SELECT * FROM predictions")
    fed = [r for r in rows if r["prob_illustration"] >= feed_threshold]
    reviewed = [r for r in rows if floor <= r["prob_illustration"] < feed_threshold]
    set_aside = [r for r in rows if r["prob_illustration"] < floor]
    assert summary.classified == 12 and summary.queued_for_review == len(reviewed) >= 3
    assert fed and all(r["label"] == "illustration" and not r["borderline"] for r in fed)
    assert all(r["borderline"] for r in reviewed)
    assert set_aside and all(r["label"] != "illustration" and not r["borderline"] for r in set_aside)
    queued = {q["media_id"] for q in store.query("SELECT media_id, reason FROM review_queue")}
    assert queued == {r["media_id"] for r in reviewed}
    assert all("P(illustration)" in q["reason"] for q in store.query("SELECT reason FROM review_queue"))


def versioned(model, directory, version, parent):
    copy = load_model(save_model(model, directory / f"{version}-source.pt"), trunk_weights=None)
    copy.version, copy.parent = version, parent
    return copy


def test_promotion_refuses_a_worse_model_and_rollback_restores_the_parent(trained, store, tmp_path):
    from classifier.runtime import train_and_register
    from bot.config import parse_config

    config = parse_config({"data_dir": str(store.data_dir), "classifier": {"precision": "fp32", "progress": False}})
    items = scan_folder(trained["root"] / "train")
    base = trained["base"]
    first = train_and_register(store, config, items, TrainOptions(progress=False), source="gen", base=base)
    # A fresh store's active model is the shipped default, compared on the same validation images (it was
    # never trained on generated images, so the trained head beats it).
    assert first["activated"] and first["promotion"] == "illustration recall and macro-F1 not below the active model's"
    assert first["active_metrics_on_same_split"] is not None
    # One epoch at a negligible learning rate: a near-random head, worse on the same validation split.
    worse = train_and_register(
        store,
        config,
        items,
        TrainOptions(progress=False, epochs=1, learning_rate=1e-9),
        source="undertrained",
        base=base,
    )
    assert not worse["activated"] and "worse than the active model" in worse["promotion"]
    assert worse["active_metrics_on_same_split"]["macro_f1"] == pytest.approx(first["metrics"]["macro_f1"])
    rows = {row["version"]: row for row in list_models(store)}
    assert rows[first["version"]]["active"] == 1 and rows[worse["version"]]["active"] == 0
    assert rows[worse["version"]]["parent"] == first["version"]
    assert (store.data_dir / "models" / f"{worse['version']}.pt").is_file()

    # Activate the worse one by hand, then roll back to its parent.
    activate(store, worse["version"])
    assert store.active_model()["version"] == worse["version"]
    assert rollback(store)["version"] == first["version"]
    assert store.active_model()["version"] == first["version"]
    # ... and from the first trained model back to the shipped default, the root of the chain.
    assert rows[first["version"]]["parent"] == SHIPPED
    assert rollback(store)["version"] == SHIPPED
    with pytest.raises(ModelVersionError, match=f"{SHIPPED} has no parent"):
        rollback(store)


def test_corrupt_model_file_is_a_clear_error_and_the_active_model_stays(trained, store, tmp_path):
    good = versioned(trained["model"], tmp_path, "good", None)
    bad = versioned(trained["model"], tmp_path, "bad", "good")
    register_model(store, good)
    bad_path = register_model(store, bad)
    activate(store, "good")
    data = bad_path.read_bytes()
    bad_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=str(bad_path)):
        activate(store, "bad")
    assert store.active_model()["version"] == "good"
    with pytest.raises(ModelVersionError, match="no model version 'nope'"):
        activate(store, "nope")


def test_cli_eval_errors_lists_every_mistake_in_a_csv_and_a_contact_sheet(trained, tmp_path):
    """Photos filed under illustration/ are mistakes the model must make; every misclassified file is in the
    CSV (worst first, probabilities summing to 1) and on the sheet; an undecodable file is in neither."""
    import csv
    import shutil

    from PIL import Image

    from classifier.errors import CAPTION_HEIGHT, COLUMNS, TILE

    model = trained["model"]
    model_file = save_model(model, tmp_path / "eval-model.pt")
    data = tmp_path / "mixed"
    shutil.copytree(trained["root"] / "held_out", data)
    planted = []
    for number in range(5):
        path = data / "illustration" / f"planted_photo_{number}.png"
        generate("photo", 70_000 + number).save(path)
        planted.append(path.relative_to(data).as_posix())
    (data / "screenshot" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    errors_dir = tmp_path / "errors"
    result = run_cli(
        "eval",
        "--data",
        str(data),
        "--model",
        str(model_file),
        "--errors",
        str(errors_dir),
        "--png",
        str(tmp_path / "confusion.png"),
        cwd=tmp_path,
        env={"ILLUSTFEED_DATA_DIR": str(tmp_path / "data")},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    with (errors_dir / "errors.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["file", "true", "predicted", "p_illustration", "p_screenshot", "p_photo", "origin"]
    _, scored = evaluate_model(model, scan_folder(data), runner=FeatureRunner(model, precision="fp32"))
    expected = {
        Path(item.key).relative_to(data).as_posix(): predicted
        for item, predicted, _ in scored
        if predicted is not None and predicted != item.label
    }
    assert {row["file"]: row["predicted"] for row in rows} == expected
    assert set(planted) <= set(expected) and "screenshot/broken.png" not in expected
    true_probability = [float(row[f"p_{row['true']}"]) for row in rows]
    assert true_probability == sorted(true_probability)
    for row in rows:
        probabilities = [float(row[f"p_{label}"]) for label in LABELS]
        assert sum(probabilities) == pytest.approx(1, abs=1e-3)
        assert row["predicted"] == LABELS[probabilities.index(max(probabilities))] != row["true"]
    with Image.open(errors_dir / "errors.png") as sheet:
        sheet.load()
        tile_rows = -(-len(rows) // COLUMNS)
        assert sheet.size == (COLUMNS * TILE, 24 + tile_rows * (TILE + CAPTION_HEIGHT))
    assert f"{len(rows)} misclassified images" in result.stdout


def test_cli_eval_json_matches_hand_counted_predictions(trained, tmp_path):
    model = trained["model"]
    model_file = save_model(model, tmp_path / "eval-model.pt")
    data = trained["root"] / "held_out"
    result = run_cli(
        "eval",
        "--data",
        str(data),
        "--model",
        str(model_file),
        "--json",
        "--png",
        str(tmp_path / "confusion.png"),
        cwd=tmp_path,
        env={"ILLUSTFEED_DATA_DIR": str(tmp_path / "data")},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"accuracy", "macro_f1", "labels", "per_class", "confusion", "feed", "per_origin"}
    assert report["labels"] == list(LABELS)
    # Count the same model's predictions by hand, image by image.
    direct, per_item = evaluate_model(model, trained["held_out"], runner=FeatureRunner(model, precision="fp32"))
    counts = [[0, 0, 0] for _ in LABELS]
    for item, predicted, _probabilities in per_item:
        counts[LABELS.index(item.label)][LABELS.index(predicted)] += 1
    assert report["confusion"] == counts
    correct = sum(counts[i][i] for i in range(3))
    assert report["accuracy"] == pytest.approx(correct / 60)
    recall = counts[0][0] / sum(counts[0])
    assert report["per_class"]["illustration"]["recall"] == pytest.approx(recall)
    assert report["per_class"]["photo"]["support"] == 20
    # Feed figures under the policy training fitted and the model file carries.
    assert model.policy is not None and load_model(model_file, trunk_weights=None).policy == model.policy
    feed = report["feed"]
    assert feed["illustrations"] == 20 and feed["illustrations_in_feed"] + feed["illustrations_lost"] <= 20
    assert feed["illustrations_in_feed"] <= counts[0][0] or model.policy.feed_threshold < 0.5
    assert feed == pytest.approx(direct["feed"])
    assert report["per_origin"] is None  # no manifest: every image is its own origin
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_classify_model_commands_and_missing_model(trained, tmp_path):
    from storage import Store

    env = {"ILLUSTFEED_DATA_DIR": str(tmp_path / "data")}
    with Store.open(tmp_path / "data") as store:
        media = [add_media(store, jpeg_bytes(generate(label, 700))) for label in LABELS]
    model_file = save_model(trained["model"], tmp_path / "cli-model.pt")
    classified = run_cli("classify", "--model", str(model_file), "--json", cwd=tmp_path, env=env, timeout=300)
    assert classified.returncode == 0, classified.stderr
    summary = json.loads(classified.stdout)
    assert (
        summary["classified"] == 3 and summary["failed"] == 0 and summary["model_version"] == trained["model"].version
    )
    with Store.open(tmp_path / "data") as store:
        labels = [store.query_one("SELECT label FROM predictions WHERE media_id = ?", (m,))["label"] for m in media]
        assert store.scalar("SELECT COUNT(*) FROM features") == 3
    assert labels == list(LABELS)
    back = run_cli("model", "rollback", cwd=tmp_path, env=env)
    # The shipped default is the active model of a fresh store, and the root of every rollback chain.
    assert back.returncode == 1 and f"{SHIPPED} has no parent" in back.stderr and "Traceback" not in back.stderr
    missing = run_cli(
        "eval", "--data", str(trained["root"] / "held_out"), "--model", str(tmp_path / "none.pt"), cwd=tmp_path, env=env
    )
    assert missing.returncode == 1 and "none.pt" in missing.stderr and "Traceback" not in missing.stderr


def png_of(colour):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, "PNG")
    return buffer.getvalue()


def test_borderline_calls_get_an_overlay_blob(trained, store):
    model = without_policy(trained["model"])
    confident = add_media(store, jpeg_bytes(generate("photo", 950)))
    rendered = []

    def overlay(model_arg, source, probabilities):
        rendered.append((model_arg, str(source), list(probabilities)))
        return png_of((len(rendered), 0, 0)), "png"

    classify_pending(
        store,
        model,
        runner=FeatureRunner(model, precision="fp32"),
        borderline_confidence=0.0,
        borderline_margin=0.0,
        overlay=overlay,
    )
    borderline = add_media(store, jpeg_bytes(generate("screenshot", 951)))
    summary = classify_pending(
        store,
        model,
        runner=FeatureRunner(model, precision="fp32"),
        borderline_confidence=1.01,
        borderline_margin=0.0,
        overlay=overlay,
    )
    assert summary.overlays == 1 and len(rendered) == 1 and rendered[0][0] is model
    row = store.query_one("SELECT * FROM predictions WHERE media_id = ?", (borderline,))
    assert row["borderline"] == 1 and row["overlay_sha256"]
    assert store.derived.read(row["overlay_sha256"], "png") == png_of((1, 0, 0))
    assert rendered[0][2] == pytest.approx([row["prob_illustration"], row["prob_screenshot"], row["prob_photo"]])
    assert (
        store.query_one("SELECT overlay_sha256 FROM predictions WHERE media_id = ?", (confident,))["overlay_sha256"]
        is None
    )


def test_a_failing_overlay_still_stores_the_prediction(trained, store):
    model = without_policy(trained["model"])
    media_id = add_media(store, jpeg_bytes(generate("illustration", 960)))

    def broken(model_arg, source, probabilities):
        raise RuntimeError("renderer exploded")

    summary = classify_pending(
        store,
        model,
        runner=FeatureRunner(model, precision="fp32"),
        borderline_confidence=1.01,
        borderline_margin=0.0,
        overlay=broken,
    )
    assert summary.classified == 1 and summary.overlays == 0 and "renderer exploded" in summary.problems[0]
    row = store.query_one("SELECT * FROM predictions WHERE media_id = ?", (media_id,))
    assert row["borderline"] == 1 and row["overlay_sha256"] is None
    assert store.query_one("SELECT * FROM review_queue WHERE media_id = ?", (media_id,))["state"] == "pending"


def test_fine_tuning_the_last_block_changes_only_that_block(trained):
    base = trained["base"]
    items = scan_folder(trained["root"] / "train")[::4]
    options = TrainOptions(progress=False, mode="last_block", epochs=1, patience=1, batch_size=16)
    result = train_model(base, items, options, runner=FeatureRunner(base, precision="fp32"))
    tuned = result.model
    assert result.validation_vectors is None
    changed = {
        name for name, tensor in tuned.backbone_delta.items() if not torch.equal(tensor, base.backbone_delta[name])
    }
    assert changed and all(int(name.split(".")[1]) in range(24, 30) for name in changed)
    assert tuned.feature_key != base.feature_key
    assert not torch.equal(tuned.features[28].weight, base.features[28].weight)
    assert torch.equal(tuned.features[0].weight, base.features[0].weight)


def test_retraining_from_store_labels_reuses_cached_vectors(trained, store):
    from bot.config import parse_config
    from classifier.data import store_labelled
    from classifier.runtime import train_and_register

    for label_index, label in enumerate(LABELS):
        for account_number in range(4):
            account = store.upsert_account("folder", f"{label}-{account_number}")
            for n in range(4):
                media_id = add_media(
                    store, jpeg_bytes(generate(label, 3000 + 100 * label_index + 10 * account_number + n))
                )
                with store.transaction():
                    post_id, _ = store.upsert_post(account, "folder", f"{label}-{account_number}-{n}", None, None, None)
                    store.link_post_media(post_id, media_id, 0, None, None)
                review.record_label(
                    store, media_id, LABELS[(label_index + 1) % 3], by="tester", via="test"
                )  # a slip...
                review.record_label(store, media_id, label, by="tester", via="test")  # ...corrected: the latest counts
    items = store_labelled(store)
    assert len(items) == 48
    assert {item.group for item in items} == {f"folder:{label}-{a}" for label in LABELS for a in range(4)}
    assert all(store.current_label(item.key)["label"] == item.label for item in items)

    config = parse_config({"data_dir": str(store.data_dir), "classifier": {"precision": "fp32", "progress": False}})
    first = train_and_register(
        store, config, items, TrainOptions(progress=False), source="store-labels", base=trained["base"]
    )
    assert first["metrics"]["accuracy"] >= 0.5  # a few validation accounts only
    # Promotion is tested above; against the shipped default a tiny model on generated images rightly loses,
    # and this test is about the next training run reusing the cached vectors of the active model's trunk.
    if not first["activated"]:
        activate(store, first["version"])
    assert store.scalar("SELECT COUNT(*) FROM features WHERE backbone = ?", (trained["base"].feature_key,)) == 48
    for row in store.query("SELECT sha256, ext FROM media"):
        store.blobs.path(row["sha256"], row["ext"]).unlink()  # the conv net cannot run any more
    second = train_and_register(
        store, config, items, TrainOptions(progress=False, seed=1), source="store-labels", base=trained["base"]
    )
    assert second["data_summary"]["train"]["images"] + second["data_summary"]["validation"]["images"] == 48
    assert second["active_metrics_on_same_split"] is not None


def test_borderline_call_stores_the_explain_packages_grad_cam_png(trained, store):
    from PIL import Image

    from bot.app import overlay_renderer
    from bot.config import ClassifierConfig

    renderer = overlay_renderer(ClassifierConfig())
    assert renderer is not None, "explain.media.gradcam_overlay is on main"
    model = without_policy(trained["model"])
    media_id = add_media(store, jpeg_bytes(generate("illustration", 970)))
    summary = classify_pending(
        store,
        model,
        runner=FeatureRunner(model, precision="fp32"),
        borderline_confidence=1.01,
        borderline_margin=0.0,
        overlay=renderer,
    )
    assert summary.overlays == 1, summary.problems
    sha = store.query_one("SELECT overlay_sha256 FROM predictions WHERE media_id = ?", (media_id,))["overlay_sha256"]
    with Image.open(store.derived.path(sha, "png")) as overlay:
        assert overlay.format == "PNG" and overlay.width >= 64
