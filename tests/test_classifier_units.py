"""Small pieces with hand-checked answers: preprocessing, decisions, precision choice, metrics, splits,
augmentation, calibration."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from classifier import LABELS
from classifier.data import LabelledImage, scan_folder, split_by_group
from classifier.evaluate import compute_metrics, format_report, save_confusion_png
from classifier.inference import FeatureRunner, auto_candidates, choose_precision, decide, quantize_trunk
from classifier.preprocess import evenly_spaced, imagenet_eval_tensor
from tests.synthetic import tiny_base_model
from classifier.train import class_weights, fit_temperature, random_resized_crop


def test_imagenet_eval_transform_matches_a_hand_computation():
    # 512 x 256 image: left half red, right half blue, one green pixel column at x = 256.
    pixels = np.zeros((256, 512, 3), np.uint8)
    pixels[:, :256] = (200, 0, 0)
    pixels[:, 256:] = (0, 0, 100)
    tensor = imagenet_eval_tensor(Image.fromarray(pixels))
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32
    # Short side is already 256, so no resize; the centre crop spans x = 144..367, y = 16..239.
    # Crop column 0 is source x = 144 (red), column 223 is x = 367 (blue).
    red = [(200 / 255 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225]
    blue = [(0 - 0.485) / 0.229, (0 - 0.456) / 0.224, (100 / 255 - 0.406) / 0.225]
    assert tensor[:, 100, 0].tolist() == pytest.approx(red, abs=1e-6)
    assert tensor[:, 100, 223].tolist() == pytest.approx(blue, abs=1e-6)
    assert tensor[:, 0, 111].tolist() == pytest.approx(red, abs=1e-6)  # x = 255: last red column
    assert tensor[:, 0, 112].tolist() == pytest.approx(blue, abs=1e-6)  # x = 256


def test_small_image_is_resized_like_torchvision():
    image = Image.new("RGBA", (100, 50), (0, 0, 0, 0))  # transparent -> white after compositing
    tensor = imagenet_eval_tensor(image)
    assert tensor.shape == (3, 224, 224)
    white = [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    assert tensor[:, 50, 50].tolist() == pytest.approx(white, abs=1e-5)


def test_evenly_spaced_frames():
    assert evenly_spaced(3, 4) == [0, 1, 2]
    assert evenly_spaced(9, 3) == [0, 4, 8]
    assert evenly_spaced(100, 4) == [0, 33, 66, 99]
    assert evenly_spaced(10, 1) == [0]


def test_decide_flags_low_confidence_or_small_margin():
    sure = decide([0.9, 0.06, 0.04], LABELS, min_confidence=0.6, min_margin=0.15)
    assert (sure.label, sure.borderline, sure.reason) == ("illustration", False, None)
    assert sure.margin == pytest.approx(0.84) and sure.confidence == pytest.approx(0.9)
    unsure = decide([0.3, 0.45, 0.25], LABELS, min_confidence=0.6, min_margin=0.1)
    assert unsure.label == "screenshot" and unsure.borderline
    assert "confidence 0.450 < 0.6" in unsure.reason and "margin 0.150" not in unsure.reason
    close = decide([0.05, 0.47, 0.48], LABELS, min_confidence=0.4, min_margin=0.1)
    assert close.label == "photo" and "margin 0.010 < 0.1 (photo vs screenshot)" in close.reason
    assert close.priority > unsure.priority > sure.priority  # most uncertain reviewed first


def test_precision_choice_follows_cpu_flags():
    assert choose_precision("auto", {"avx512f", "avx512_vnni"}) == "int8"
    assert choose_precision("auto", {"avx512f", "avx512_bf16", "avx512_vnni"}) == "bf16"
    assert choose_precision("auto", {"avx2"}) == "fp32"
    assert choose_precision("bf16", {"avx512f"}) == "fp32"  # no native bf16: emulation is slower
    assert choose_precision("int8", set()) == "int8"
    with pytest.raises(ValueError, match="fp16"):
        choose_precision("fp16")


def test_a_reason_never_rounds_into_a_false_statement():
    decision = decide([0.4252, 0.2756, 0.2992], ["illustration", "screenshot", "photo"], 0.6, 0.15)
    # margin 0.126 rounded would be fine; the case that lied was a margin just under the threshold:
    close = decide([0.5748, 0.4252, 0.0], ["illustration", "screenshot", "photo"], 0.5, 0.15)
    assert close.margin < 0.15 and "margin 0.149 < 0.15" in close.reason
    assert "confidence 0.425 < 0.6" in decision.reason


def test_auto_tries_every_precision_the_cpu_offers():
    assert auto_candidates({"avx512f", "avx512_vnni"}) == ("int8",)
    assert auto_candidates({"avx512_bf16", "avx512_vnni"}) == ("int8", "bf16")
    assert auto_candidates({"avx2", "fma"}) == ("int8",)  # fbgemm's AVX2 kernels; timed against fp32
    assert auto_candidates({"sse4_2"}) == ()


@pytest.mark.slow
def test_auto_precision_measures_the_candidates_and_keeps_the_fastest_that_agrees(monkeypatch):
    import classifier.inference as inference

    monkeypatch.setattr(inference, "cpu_flags", lambda: {"avx512_bf16", "avx512_vnni"})
    monkeypatch.setattr(inference, "MIN_PRECISION_AGREEMENT", 0.0)  # a random tiny model: labels may differ
    model = tiny_base_model()
    torch.manual_seed(2)
    runner = FeatureRunner(model, precision="auto")
    vectors = runner(torch.randn(8, 3, 64, 64))
    assert vectors.shape[0] == 8
    assert set(runner.seconds_per_batch) == {"fp32", "int8", "bf16"}
    assert runner.precision == min(runner.seconds_per_batch, key=runner.seconds_per_batch.get)


def test_an_explicit_precision_is_not_timed():
    runner = FeatureRunner(tiny_base_model(), precision="fp32")
    runner(torch.randn(2, 3, 64, 64))
    assert runner.precision == "fp32" and runner.seconds_per_batch == {}


@pytest.mark.slow
def test_int8_trunk_keeps_indices_and_agrees_with_fp32():
    model = tiny_base_model()
    torch.manual_seed(1)
    calibration = torch.randn(16, 3, 64, 64)
    quantized = quantize_trunk(model.features, set(model.spec.layers), calibration)
    assert len(quantized) == len(model.features)
    extractor = copy.deepcopy(model.extractor)
    extractor.features = quantized  # as FeatureRunner does: the extractor's dim was computed on the fp32 trunk
    with torch.no_grad():
        reference = model.extractor(calibration)
        approximate = extractor(calibration)
    assert approximate.shape == reference.shape
    cosine = torch.nn.functional.cosine_similarity(reference, approximate)
    assert float(cosine.min()) > 0.98


def test_metrics_against_hand_counts():
    true = ["illustration", "illustration", "illustration", "screenshot", "photo", "photo"]
    predicted = ["illustration", "photo", "illustration", "screenshot", "photo", "illustration"]
    metrics = compute_metrics(true, predicted)
    assert metrics["confusion"] == [[2, 0, 1], [0, 1, 0], [1, 0, 1]]
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    illustration = metrics["per_class"]["illustration"]
    assert (illustration["precision"], illustration["recall"], illustration["support"]) == (2 / 3, 2 / 3, 3)
    assert metrics["per_class"]["photo"]["f1"] == pytest.approx(0.5)
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 1 + 0.5) / 3)
    assert format_report(metrics).splitlines()[0] == "illustration recall: 0.667"
    empty_class = compute_metrics(["photo"], ["illustration"])
    assert empty_class["per_class"]["screenshot"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    with pytest.raises(ValueError, match="'drawing'"):
        compute_metrics(["drawing"], ["photo"])


def test_confusion_png_is_written(tmp_path):
    metrics = compute_metrics(["photo", "screenshot"], ["photo", "photo"])
    path = save_confusion_png(metrics, tmp_path / "sub" / "c.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100


def test_group_split_keeps_groups_together_and_is_stable():
    items = [LabelledImage(n, None, LABELS[n % 3], f"account{n // 4}", f"post{n}") for n in range(400)]
    train, validation = split_by_group(items)
    train_groups, validation_groups = {i.group for i in train}, {i.group for i in validation}
    assert not train_groups & validation_groups
    assert 0.1 < len(validation) / len(items) < 0.3
    more = items + [LabelledImage(1000 + n, None, "photo", f"new{n}", f"p{n}") for n in range(50)]
    _, validation_after = split_by_group(more)
    assert {i.key for i in validation} <= {i.key for i in validation_after}


def _validation_side_name(prefix: str) -> str:
    from classifier.data import VALIDATION_FRACTION, _bucket

    return next(f"{prefix}{n}" for n in range(1000) if _bucket(f"{prefix}{n}") < VALIDATION_FRACTION)


def test_big_validation_side_group_is_split_by_subgroup():
    huge = _validation_side_name("huge-account")
    items = [LabelledImage(n, None, "photo", huge, f"post{n}") for n in range(100)]
    items += [LabelledImage(100 + n, None, "illustration", f"artist{n}", f"a{n}") for n in range(100)]
    train, validation = split_by_group(items)
    assert any(i.group == huge for i in validation) and any(i.group == huge for i in train)
    assert not all(i.group == huge for i in validation)


def test_growing_data_never_moves_a_training_image_into_validation():
    growing = _validation_side_name("account")
    items = [LabelledImage(n, None, LABELS[n % 3], growing, f"post{n}") for n in range(30)]
    items += [LabelledImage(100 + n, None, LABELS[n % 3], f"other{n // 5}", f"o{n}") for n in range(60)]
    train_before, _ = split_by_group(items)
    # The group crosses the split size, and many new sources arrive (every share shrinks).
    more = items + [LabelledImage(500 + n, None, "photo", growing, f"post{500 + n}") for n in range(40)]
    more += [LabelledImage(2000 + n, None, LABELS[n % 3], f"new{n // 3}", f"n{n}") for n in range(600)]
    _, validation_after = split_by_group(more)
    assert not {i.key for i in train_before} & {i.key for i in validation_after}


def test_scan_folder_uses_manifest_origins_as_groups(tmp_path):
    for label in LABELS:
        (tmp_path / label).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / label / "a.png")
    (tmp_path / "manifest.csv").write_text("file,label,origin\nphoto/a.png,photo,deb:pkg=1 /usr/x.svg\n")
    groups = {item.label: item.group for item in scan_folder(tmp_path)}
    assert groups == {"photo": "deb:pkg=1", "illustration": "illustration/a.png", "screenshot": "screenshot/a.png"}


def test_random_resized_crop_is_seeded_and_sized():
    image = Image.fromarray(np.arange(200 * 120 * 3, dtype=np.uint32).reshape(120, 200, 3).astype(np.uint8))
    first = random_resized_crop(image, 64, np.random.default_rng(3))
    second = random_resized_crop(image, 64, np.random.default_rng(3))
    assert first.size == (64, 64) and np.array_equal(np.asarray(first), np.asarray(second))
    assert not np.array_equal(np.asarray(first), np.asarray(random_resized_crop(image, 64, np.random.default_rng(4))))


def test_temperature_scaling_recovers_the_generating_temperature():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 3, generator=generator) * 4
    targets = torch.multinomial(torch.softmax(logits / 2.5, 1), 1, generator=generator).squeeze(1)
    assert fit_temperature(logits, targets) == pytest.approx(2.5, rel=0.1)


def test_balanced_class_weights():
    weights = class_weights(torch.tensor([0, 0, 0, 1]), 3)
    assert weights.tolist() == pytest.approx([4 / 6, 4 / 2, 0.0])
    assert math.isclose(float((weights[torch.tensor([0, 0, 0, 1])]).sum()), 4.0)


def test_reduced_precision_is_checked_against_fp32_before_use():
    from classifier.inference import FeatureRunner

    model = tiny_base_model()
    batch = torch.randn(4, 3, 64, 64)
    runner = FeatureRunner(model, precision="fp32")
    runner.candidates = ("bf16",)  # forced: this CPU may lack native bf16, the check must run anyway
    vectors = runner(batch)
    assert vectors.dtype == torch.float32 and vectors.shape == (4, model.extractor.dim)
    assert runner.agreement is not None
    assert runner.precision == ("bf16" if runner.agreement >= 0.99 else "fp32")


@pytest.mark.slow
def test_auto_remembers_its_measured_choice_per_machine_and_model(monkeypatch, tmp_path):
    import classifier.inference as inference

    monkeypatch.setattr(inference, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(inference, "MIN_PRECISION_AGREEMENT", 0.0)  # a random tiny model: labels may differ
    choice_file = tmp_path / "data" / "precision.json"
    model = tiny_base_model()
    batch = torch.randn(8, 3, 64, 64)
    first = FeatureRunner(model, precision="auto", choice_file=choice_file)
    first(batch)
    assert set(first.seconds_per_batch) == {"fp32", "int8"}
    (entry,) = json.loads(choice_file.read_text()).values()
    assert entry["precision"] == first.precision and set(entry["seconds_per_batch"]) == {"fp32", "int8"}

    built: list[str] = []
    build = FeatureRunner._build
    monkeypatch.setattr(FeatureRunner, "_build", lambda self, name, b: built.append(name) or build(self, name, b))
    monkeypatch.setattr(FeatureRunner, "_time", lambda *_: pytest.fail("a remembered choice is not timed again"))
    second = FeatureRunner(model, precision="auto", choice_file=choice_file)
    vectors = second(batch)
    assert second.precision == first.precision and vectors.shape[0] == 8
    assert built == ([first.precision] if first.precision != "fp32" else [])  # the loser is not even built

    # A damaged file (not JSON, not an object, an entry that is not one): measured again, and rewritten.
    monkeypatch.undo()
    monkeypatch.setattr(inference, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(inference, "MIN_PRECISION_AGREEMENT", 0.0)
    for damaged in (
        "{not json",
        "[1, 2]",
        json.dumps({third_key: 5 for third_key in json.loads(choice_file.read_text())}),
    ):
        choice_file.write_text(damaged)
        third = FeatureRunner(model, precision="auto", choice_file=choice_file)
        third(batch)
        assert set(third.seconds_per_batch) == {"fp32", "int8"}, damaged
        (entry,) = json.loads(choice_file.read_text()).values()
        assert entry["precision"] == third.precision
