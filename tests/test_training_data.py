"""Training from labelled folders with manifests: origin groups, several folders, bad rows, per-origin results."""

import csv

import pytest

from classifier import LABELS
from classifier.data import DatasetError, scan_folders, split_by_group
from classifier.inference import FeatureRunner
from tests.synthetic import tiny_base_model, write_dataset
from classifier.train import TrainOptions, train_model


def with_manifest(root, origins_per_label: int, prefix: str, extra_rows=()):
    """A manifest giving every image an origin `<prefix><label>-<k> path/inside` (k cycles over
    `origins_per_label`), plus `extra_rows` (file, label, origin)."""
    rows = []
    for label in LABELS:
        for number, path in enumerate(sorted((root / label).iterdir())):
            origin = f"{prefix}{label}-{number % origins_per_label}=1.0 /usr/share/{path.name}"
            rows.append((path.relative_to(root).as_posix(), label, origin))
    with (root / "manifest.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["file", "label", "origin", "license", "how"])
        for row in rows + list(extra_rows):
            writer.writerow([*row, "CC0", "generated"])
    return root


def test_two_folders_are_grouped_by_manifest_origin_and_missing_rows_are_reported(tmp_path):
    first = with_manifest(
        write_dataset(tmp_path / "dev", per_label=6, seed=0),
        3,
        "deb:a-",
        extra_rows=[("photo/gone.jpg", "photo", "deb:gone=1 /x.jpg")],
    )
    second = with_manifest(write_dataset(tmp_path / "train", per_label=4, seed=1), 2, "github:b-")
    items, problems = scan_folders([first, second])
    assert len(items) == 30
    assert {item.group for item in items} == {f"deb:a-{label}-{k}=1.0" for label in LABELS for k in range(3)} | {
        f"github:b-{label}-{k}=1.0" for label in LABELS for k in range(2)
    }
    assert len(problems) == 1 and "photo/gone.jpg" in problems[0] and "no such image" in problems[0]
    train, validation = split_by_group(items)
    assert not {i.group for i in train} & {i.group for i in validation}


def test_a_class_without_images_is_a_clear_error(tmp_path):
    root = write_dataset(tmp_path / "data", per_label=2)
    for path in (root / "screenshot").iterdir():
        path.unlink()
    with pytest.raises(DatasetError, match="no screenshot images in .*every class needs training images"):
        scan_folders([root])


@pytest.mark.slow
def test_training_skips_undecodable_files_counts_them_and_reports_per_origin_validation(tmp_path):
    root = with_manifest(
        write_dataset(tmp_path / "data", per_label=24, seed=2),
        8,
        "deb:p-",
        extra_rows=[("illustration/missing.png", "illustration", "deb:p-x=1 /m.png")],
    )
    (root / "photo" / "photo_0000.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    items, problems = scan_folders([root])
    base = tiny_base_model()
    result = train_model(
        base,
        items,
        TrainOptions(progress=False, epochs=40, patience=10),
        runner=FeatureRunner(base, precision="fp32"),
        source="test",
        problems=problems,
    )
    skipped = result.model.data_summary["skipped"]
    assert skipped["count"] == 2
    assert any("missing.png" in line for line in skipped["inputs"])
    assert any("photo_0000.png" in line and "cannot be decoded" in line for line in skipped["inputs"])
    rows = result.model.metrics["per_origin"]
    validation_groups = {item.group for item in result.validation_items}
    assert {row["origin"] for row in rows} == validation_groups
    assert sum(row["images"] for row in rows) == len(result.validation_items)
    for row in rows:
        members = [i for i in result.validation_items if i.group == row["origin"] and i.label == row["label"]]
        assert row["images"] == len(members)
        assert row["recall"] == pytest.approx(1 - sum(row["predicted_as"].values()) / len(members))


@pytest.mark.slow
def test_cli_eval_reports_per_origin_rows_from_the_manifest(tmp_path):
    import json

    from classifier.model import save_model
    from tests.conftest import run_cli

    root = with_manifest(write_dataset(tmp_path / "data", per_label=4, seed=3), 2, "deb:e-")
    model_file = save_model(tiny_base_model(), tmp_path / "m.pt")
    result = run_cli(
        "eval",
        "--data",
        str(root),
        "--model",
        str(model_file),
        "--json",
        "--png",
        str(tmp_path / "c.png"),
        cwd=tmp_path,
        env={"ILLUSTFEED_DATA_DIR": str(tmp_path / "d")},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["per_origin"]
    assert {(row["label"], row["origin"]) for row in rows} == {
        (label, f"deb:e-{label}-{k}=1.0") for label in LABELS for k in range(2)
    }
    assert all(row["images"] == 2 for row in rows)
    confusion = json.loads(result.stdout)["confusion"]
    for index, label in enumerate(LABELS):
        hits = sum(row["recall"] * row["images"] for row in rows if row["label"] == label)
        assert hits == pytest.approx(confusion[index][index])


@pytest.mark.slow
def test_cli_train_on_two_folders_reports_groups_skips_and_per_origin_rows(tmp_path):
    import json

    from classifier.versions import activate, register_model
    from storage import Store
    from tests.conftest import run_cli

    first = with_manifest(
        write_dataset(tmp_path / "dev", per_label=12, seed=4),
        4,
        "deb:d-",
        extra_rows=[("screenshot/lost.png", "screenshot", "deb:lost=1 /l.png")],
    )
    second = with_manifest(write_dataset(tmp_path / "train", per_label=12, seed=5), 4, "github:t-")
    (second / "illustration" / "illustration_0003.png").write_bytes(b"GIF89a broken")
    # The active model is the base a training run starts from: a tiny one, so no ImageNet weights are needed.
    with Store.open(tmp_path / "data") as store:
        base = tiny_base_model()
        base.version = "tiny-base"
        register_model(store, base)
        activate(store, "tiny-base")
    (tmp_path / "config.toml").write_text(
        f'data_dir = "{tmp_path / "data"}"\n[classifier]\nprecision = "fp32"\nprogress = false\n'
    )
    folders = ["--data", str(first), "--data", str(second), "--config", str(tmp_path / "config.toml")]
    result = run_cli("train", *folders, "--json", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    summary = report["data_summary"]
    assert summary["train"]["images"] + summary["validation"]["images"] == 71  # 72 files, one undecodable
    assert summary["train"]["groups"] + summary["validation"]["groups"] == 24  # 12 origins per folder
    assert summary["skipped"]["count"] == 2
    assert {origin for row in report["metrics"]["per_origin"] for origin in [row["origin"]]} <= {
        f"{prefix}{label}-{k}=1.0" for prefix in ("deb:d-", "github:t-") for label in LABELS for k in range(4)
    }
    text = run_cli("train", *folders, cwd=tmp_path, timeout=600)
    assert text.returncode == 0, text.stderr
    assert "validation by origin" in text.stdout and "2 inputs skipped:" in text.stdout
    assert "lost.png" in text.stdout and "cannot be decoded" in text.stdout
