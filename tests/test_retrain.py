"""Retraining end to end on a generated store: labels -> new version -> promotion or refusal -> queue re-scored.

Real training of a reduced-width VGG16's head on generated illustration / screenshot / photo images.
"""

import json

import pytest
import torch

from bot import review
from bot.config import parse_config
from bot.ingest.ingest import ingest_source
from bot.retrain import PROMOTED, REFUSED, SKIPPED, count_new_labels, run_retrain
from bot.sources.folder import FolderSource
from classifier import LABELS
from classifier.model import read_model_file
from classifier.versions import default_model_file

# The shipped default model's version: the root of every rollback chain.
SHIPPED = read_model_file(default_model_file()).version

pytestmark = pytest.mark.slow

# 25 accounts of 1 image per label each: every account is a validation group of its own, and the fixed
# split puts 5 of them on the validation side, the fewest images per class a promotion is decided on.
ACCOUNTS = 25
PER_LABEL = 25
UNLABELLED = 9


def install_tiny_model(store, bias: tuple[float, float, float], version: str = "tiny-0"):
    """Register and activate a reduced-width model whose head ignores the image: its probabilities are
    softmax(bias), so what it decides (and whether that is borderline) is known in advance."""
    from classifier.features import FeatureSpec
    from classifier.model import SCRATCH_BACKBONE, new_classifier
    from classifier.versions import activate, register_model
    from classifier.vgg import make_features

    torch.manual_seed(0)
    width = 0.125
    trunk = make_features(width)
    model = new_classifier(
        trunk,
        FeatureSpec(layers=(22, 29), pooling=("avg", "max"), image_size=64),
        backbone=SCRATCH_BACKBONE,
        backbone_width=width,
    )
    # A scratch trunk travels in the model file, so no ImageNet weights are needed.
    model.backbone_delta = {f"features.{name}": tensor.clone() for name, tensor in trunk.state_dict().items()}
    with torch.no_grad():
        model.head.linear.weight.zero_()
        model.head.linear.bias.copy_(torch.tensor(bias))
    model.version = version
    register_model(store, model)
    activate(store, version)
    return model


def write_generated_inbox(inbox, per_label: int, unlabelled: int, accounts: int = ACCOUNTS) -> dict[str, str]:
    """Generated images under inbox/<account>/; returns {file stem: true label} ("" = left unlabelled)."""
    from tests.synthetic import generate, jpeg_bytes

    truth = {}
    plan = [(label, n) for label in LABELS for n in range(per_label)]
    plan += [(LABELS[n % 3], per_label + n) for n in range(unlabelled)]
    for index, (label, number) in enumerate(plan):
        folder = inbox / f"account{index % accounts}"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{label}-{number:03d}"
        (folder / f"{stem}.jpg").write_bytes(jpeg_bytes(generate(label, 1000 * LABELS.index(label) + number, (96, 96))))
        truth[stem] = label if number < per_label else ""
    return truth


def retrain_config(tmp_path, **retrain):
    return parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "classifier": {"precision": "fp32", "overlays": False, "progress": False, "batch_size": 32},
            "retrain": {"min_new_labels": 10, **retrain},
        },
        environ={},
    )


def media_by_stem(store) -> dict[str, int]:
    rows = store.query("SELECT p.text AS stem, pm.media_id FROM posts p JOIN post_media pm ON pm.post_id = p.id")
    return {row["stem"]: row["media_id"] for row in rows}


def queue_matches_latest_predictions(store) -> None:
    """Pending review = exactly the unlabelled media whose latest prediction is borderline."""
    pending = {r["media_id"] for r in store.query("SELECT media_id FROM review_queue WHERE state = 'pending'")}
    borderline = {
        r["media_id"]
        for r in store.query(
            "SELECT lp.media_id FROM latest_prediction lp WHERE lp.borderline = 1 "
            "AND NOT EXISTS (SELECT 1 FROM current_label c WHERE c.media_id = lp.media_id)"
        )
    }
    assert pending == borderline


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A store of generated media classified by an unsure tiny model, with every labelled one labelled."""
    from bot.classify import classify_pending
    from classifier.runtime import make_runner
    from storage import Store

    root = tmp_path_factory.mktemp("retrain")
    truth = write_generated_inbox(root / "inbox", PER_LABEL, UNLABELLED)
    config = retrain_config(root)
    store = Store.open(config.data_path)
    ingest_source(store, FolderSource(root / "inbox", max_bytes=config.ingest.max_bytes), config.ingest)
    # softmax(0, 0, 0.3) = (0.30, 0.30, 0.40): every call is an unsure "photo", so all of it is queued.
    model = install_tiny_model(store, (0.0, 0.0, 0.3))
    summary = classify_pending(
        store, model, runner=make_runner(model, config.classifier), borderline_confidence=0.6, borderline_margin=0.15
    )
    assert summary.classified == len(truth) and summary.queued_for_review == len(truth)
    ids = media_by_stem(store)
    for stem, label in truth.items():
        if label:
            review.record_label(store, ids[stem], label, by="test", via="cli")
    from classifier.data import split_by_group, store_labelled

    from classifier.retraining import MIN_VALIDATION_PER_CLASS

    _train, validation = split_by_group(store_labelled(store))
    assert all([item.label for item in validation].count(label) >= MIN_VALIDATION_PER_CLASS for label in LABELS), (
        "the generated accounts must put enough of every label on the validation side"
    )
    yield {"store": store, "config": config, "root": root, "truth": truth, "ids": ids}
    store.close()


def test_too_few_new_labels_skips_without_training(generated):
    store = generated["store"]
    config = retrain_config(generated["root"], min_new_labels=10_000)
    outcome = run_retrain(store, config)
    assert outcome.status == SKIPPED and outcome.new_labels == 3 * PER_LABEL
    assert "fewer than min_new_labels 10000" in outcome.reason
    # Nothing trained: only the shipped default (registered, like any version) and the installed model.
    assert {r["version"] for r in store.query("SELECT version FROM models")} == {SHIPPED, "tiny-0"}


def test_retrain_promotes_a_better_model_and_rescores_the_queue(generated):
    store, config = generated["store"], generated["config"]
    pending_before = store.scalar("SELECT COUNT(*) FROM review_queue WHERE state = 'pending'")
    assert pending_before == UNLABELLED
    reports = []
    outcome = run_retrain(store, config, report=lambda text, png: reports.append((text, png)))

    assert outcome.status == PROMOTED, outcome.reason
    active = store.active_model()
    assert active["version"] == outcome.version != "tiny-0" and active["parent"] == "tiny-0"
    from classifier.model import read_model_file

    refitted = read_model_file(active["path"])  # the review policy is refitted with the owner's targets
    assert refitted.policy is not None and refitted.policy.targets == config.classifier.policy_targets()
    assert 0.0 <= refitted.policy.floor <= refitted.policy.feed_threshold
    assert outcome.labelled == 3 * PER_LABEL and outcome.new_labels == 3 * PER_LABEL
    # The constant "photo" model finds no illustration; the trained head does, on the same validation images.
    assert outcome.previous_scores["illustration_recall"] == 0.0
    assert outcome.scores["illustration_recall"] > 0.5
    assert outcome.deltas()["macro_f1"] > 0
    # Every media now has a prediction from the new model, and the queue follows them.
    assert (
        store.scalar(
            "SELECT COUNT(*) FROM media m WHERE m.status = 'ok' AND NOT EXISTS (SELECT 1 FROM "
            "predictions p WHERE p.media_id = m.id AND p.model_version = ?)",
            (outcome.version,),
        )
        == 0
    )
    queue_matches_latest_predictions(store)
    pending_after = store.scalar("SELECT COUNT(*) FROM review_queue WHERE state = 'pending'")
    assert outcome.queue_removed >= 1 and pending_after == pending_before - outcome.queue_removed + outcome.queue_added
    # Only the labels added after this model count towards the next retrain.
    assert count_new_labels(store) == 0
    assert json.loads(active["data_summary"])["last_label_id"] == store.scalar("SELECT MAX(id) FROM labels")
    # The report: text with metrics and deltas, and a confusion-matrix PNG.
    ((text, png),) = reports
    assert f"model {outcome.version} promoted" in text
    # One row per metric: the candidate's value, the active model's, the change; each metric printed once.
    recall_row = next(line for line in text.splitlines() if line.startswith("illustration recall "))
    candidate_recall, active_recall, change = (float(value) for value in recall_row.split()[-3:])
    assert active_recall == 0.0 and candidate_recall == pytest.approx(outcome.scores["illustration_recall"], abs=1e-3)
    assert change == pytest.approx(candidate_recall - active_recall, abs=2e-3)
    for title in ("illustration recall", "macro-F1", "accuracy", "photo recall", "screenshot F1"):
        assert sum(line.startswith(title + " ") for line in text.splitlines()) == 1, title
    assert "tiny-0" in text.splitlines()[3]  # the active model's column is named
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_retrain_refuses_a_model_that_is_worse(generated):
    """The owner mislabels every training-side illustration as a photo: the new head is worse on the
    validation split, so it is registered but the active model stays."""
    from classifier.data import split_by_group, store_labelled

    store, config = generated["store"], generated["config"]
    active_before = store.active_model()["version"]
    assert active_before != "tiny-0", "runs after the promotion test"
    queue_before = store.query("SELECT * FROM review_queue ORDER BY media_id")
    train_side, _validation = split_by_group(store_labelled(store))
    flipped = [item.key for item in train_side if item.label == "illustration"]
    assert flipped
    for media_id in flipped:
        review.record_label(store, media_id, "photo", by="test", via="cli")
    assert count_new_labels(store) == len(flipped)

    outcome = run_retrain(store, config, force=True)
    assert outcome.status == REFUSED, outcome.reason
    assert outcome.reason.startswith("worse than the active model")
    assert any(outcome.scores[name] < outcome.previous_scores[name] for name in ("illustration_recall", "macro_f1"))
    assert store.active_model()["version"] == active_before
    assert store.scalar("SELECT active FROM models WHERE version = ?", (outcome.version,)) == 0
    assert store.query("SELECT * FROM review_queue ORDER BY media_id") == queue_before
    assert outcome.rescored == 0
    # The refused attempt saw these labels: the nightly job does not retrain on them again.
    assert count_new_labels(store) == 0
    assert run_retrain(store, config).status == SKIPPED


def test_retrain_command_reports_a_skip_as_json(tmp_path):
    from tests.conftest import run_cli

    assert run_cli("init", cwd=tmp_path).returncode == 0
    result = run_cli("retrain", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "skipped" and outcome["new_labels"] == 0
    assert outcome["reason"] == "0 newly labelled media, fewer than min_new_labels 20"
