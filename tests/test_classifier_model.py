"""The product model's module layout and its model-version file: round trip and every way a file can be bad."""

import pytest
import torch

from classifier.features import FeatureSpec
from classifier.model import (
    IMAGENET_BACKBONE,
    ModelFileError,
    load_model,
    new_classifier,
    read_model_file,
    save_model,
)
from tests.synthetic import tiny_base_model
from classifier.vgg import make_features


def test_model_exposes_the_trunk_as_features_with_torchvision_indices():
    model = tiny_base_model()
    names = [name for name, _ in model.named_modules()]
    assert "features.29" in names and "features.28" in names
    assert not any(name.startswith("extractor.features") for name in names)
    assert isinstance(model.features[28], torch.nn.Conv2d)
    logits = model(torch.randn(3, 3, 64, 64))
    assert logits.shape == (3, 3)


def test_round_trip_keeps_head_spec_labels_temperature_and_metrics(tmp_path):
    model = tiny_base_model()
    model.temperature, model.version, model.parent = 1.7, "v1", "v0"
    model.metrics = {"macro_f1": 0.5, "per_class": {"illustration": {"recall": 0.75}}}
    path = save_model(model, tmp_path / "models" / "v1.pt")
    record = read_model_file(path)
    assert record.version == "v1" and record.parent == "v0" and record.temperature == 1.7
    assert record.feature_spec == model.spec and record.labels == model.labels
    assert record.metrics == model.metrics
    assert set(record.head_state) == {"feature_mean", "feature_scale", "linear.weight", "linear.bias"}
    reloaded = load_model(path, trunk_weights=None)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reloaded(x))
    assert not list(tmp_path.glob("models/.*")), "temp files left behind"


def test_imagenet_model_file_holds_no_backbone_weights_and_loads_them_from_the_chain(tmp_path):
    torch.manual_seed(0)
    trunk = make_features(1.0)
    weights = {f"features.{k}": v.clone() for k, v in trunk.state_dict().items()}
    model = new_classifier(trunk, FeatureSpec(layers=(29,), pooling=("avg",), image_size=32))
    path = save_model(model, tmp_path / "m.pt")
    assert path.stat().st_size < 100_000  # head only; the trunk alone is 59 MB
    assert read_model_file(path).backbone == IMAGENET_BACKBONE
    with pytest.raises(ModelFileError, match="needs the ImageNet VGG16 weights"):
        load_model(path, trunk_weights=None)
    calls = []
    reloaded = load_model(path, trunk_weights=lambda: calls.append(1) or weights)
    assert calls == [1]
    assert torch.equal(reloaded.features[28].weight, trunk[28].weight)


def test_feature_key_follows_trunk_weights_and_recipe_not_the_head():
    model = tiny_base_model()
    other_head = tiny_base_model()
    torch.nn.init.ones_(other_head.head.linear.weight)
    assert model.feature_key == other_head.feature_key
    assert tiny_base_model(seed=1).feature_key != model.feature_key
    assert tiny_base_model(image_size=96).feature_key != model.feature_key


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_file_is_a_model_file_error_naming_it(tmp_path, damage):
    path = save_model(tiny_base_model(), tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 3], "garbage": b"\x00junk" * 100, "empty": b""}[damage])
    with pytest.raises(ModelFileError, match=f"{path}.*corrupt or truncated"):
        load_model(path, trunk_weights=None)


def test_files_that_are_not_model_files_are_refused(tmp_path):
    other = tmp_path / "weights.pt"
    torch.save({"features.0.weight": torch.zeros(1)}, other)
    with pytest.raises(ModelFileError, match="not an illustfeed-classifier file"):
        read_model_file(other)
    with pytest.raises(ModelFileError, match="does not exist"):
        read_model_file(tmp_path / "missing.pt")
    payload = torch.load(save_model(tiny_base_model(), tmp_path / "m.pt"), weights_only=True)
    for key, value, message in [
        ("format_version", 99, "format version 99"),
        ("backbone", "resnet", "unknown backbone"),
        ("temperature", -1.0, "must be > 0"),
    ]:
        broken = dict(payload, **{key: value})
        torch.save(broken, tmp_path / "broken.pt")
        with pytest.raises(ModelFileError, match=message):
            read_model_file(tmp_path / "broken.pt")
    del payload["head"]
    torch.save(payload, tmp_path / "headless.pt")
    with pytest.raises(ModelFileError, match="no 'head' entry"):
        read_model_file(tmp_path / "headless.pt")


def test_a_file_that_runs_code_on_load_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (marker.touch, ())

    path = tmp_path / "evil.pt"
    torch.save({"format": "illustfeed-classifier", "payload": Evil()}, path)
    with pytest.raises(ModelFileError):
        read_model_file(path)
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["head_shape", "labels"])
def test_activation_refuses_a_readable_file_that_cannot_classify_and_the_active_model_stays(store, damage):
    from classifier.versions import activate, register_model

    good = tiny_base_model()
    good.version = "good"
    register_model(store, good)
    activate(store, "good")
    bad = tiny_base_model()
    bad.version = "bad"
    path = register_model(store, bad)
    payload = torch.load(path, weights_only=True)
    if damage == "head_shape":
        payload["head"] = {
            name: torch.zeros(5, 7) if t.dim() == 2 else torch.zeros(5) for name, t in payload["head"].items()
        }
        expected = "head does not fit its features"
    else:
        payload["labels"] = ["a", "b", "c"]
        expected = "has labels"
    torch.save(payload, path)
    with pytest.raises(ModelFileError, match=expected):
        activate(store, "bad")
    assert store.scalar("SELECT version FROM models WHERE active = 1") == "good"
