"""`illustfeed explain`: writes overlays for files and stored media, and fails clearly on bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bot.cli import main
from bot.cli.explain import explain_to_file
from classifier import build_vgg16
from classifier.model import save_model
from explain import METHOD_NAMES, METHODS, method_function
from explain.overlay import DISPLAY_VIEW_SIDE, VIEW_GAP
from tests.test_explain_support import one_torch_thread  # noqa: F401  (autouse fixture)
from tests.videogen import animation_frames
from tests.tiny_model import tiny_classifier


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A config whose data dir is in tmp_path."""
    path = tmp_path / "config.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n[ingest]\nprogress = false\n')
    return path


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    """A reduced-width product classifier (trunk, multi-view feature recipe, head) saved as a model version."""
    model = tiny_classifier("explain-test")
    return save_model(model, tmp_path / "model.pt")


def explain(*arguments: str, config: Path, model: Path) -> int:
    return main(["explain", *arguments, "--config", str(config), "--model", str(model)])


def picture(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    return Image.fromarray(pixels).resize(size, Image.NEAREST)


def saved(image: Image.Image, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


# picture() is 320x240: the multi-view recipe shows the whole image and two square tiles.
THREE_VIEWS_WIDTH = 3 * DISPLAY_VIEW_SIDE + 2 * VIEW_GAP


def test_explains_a_file_with_each_method(tmp_path, config_file, model_file, capsys):
    source = saved(picture(0), tmp_path / "in" / "drawing.png")
    for method in METHOD_NAMES:
        out = tmp_path / "out" / f"{method}.png"
        assert explain(str(source), "--method", method, "--samples", "12", "--out", str(out),
                       config=config_file, model=model_file) == 0  # fmt: skip
        with Image.open(out) as overlay:
            assert overlay.format == "PNG" and overlay.width == THREE_VIEWS_WIDTH
        assert f"wrote {out}" in capsys.readouterr().out


def test_every_registered_method_resolves_to_its_function():
    for name in METHOD_NAMES:
        assert callable(method_function(name)), name
        assert set(METHODS[name].options) <= {"num_samples", "seed"}  # what the CLI flags can give


def test_target_label_changes_what_is_explained(tmp_path, config_file, model_file):
    source = saved(picture(1), tmp_path / "drawing.png")
    outputs = []
    for label in ("illustration", "photo"):
        out = tmp_path / f"{label}.png"
        assert explain(str(source), "--target", label, "--out", str(out), config=config_file, model=model_file) == 0
        outputs.append(np.asarray(Image.open(out).convert("RGB")))
    assert not np.array_equal(outputs[0], outputs[1])


@pytest.mark.parametrize("name", ["anim.gif", "anim.png", "anim.webp"])  # GIF, APNG, animated WebP
def test_animated_media_gives_an_animation_even_if_out_says_png(tmp_path, config_file, model_file, capsys, name):
    frames = [picture(seed) for seed in range(3)]
    source = saved(frames[0], tmp_path / name, save_all=True, append_images=frames[1:], duration=100)
    out = tmp_path / "anim-explained.png"
    assert explain(str(source), "--out", str(out), config=config_file, model=model_file) == 0
    assert not out.exists() and "suffix was changed" in capsys.readouterr().out
    [written] = [path for path in (out.with_suffix(".gif"), out.with_suffix(".mp4")) if path.exists()]
    kind, shown = animation_frames(written)
    assert kind == written.suffix[1:].upper() and len(shown) == 3
    # An MP4's sides are padded to even numbers.
    assert shown[0].width in (THREE_VIEWS_WIDTH, THREE_VIEWS_WIDTH + 1)


def test_a_stored_media_id_is_explained_from_its_blob(tmp_path, config_file, model_file):
    saved(picture(2), tmp_path / "inbox" / "someone" / "art.png")
    assert main(["import", str(tmp_path / "inbox"), "--config", str(config_file)]) == 0
    out = tmp_path / "media1.png"
    assert explain("1", "--method", "lime", "--samples", "10", "--out", str(out),
                   config=config_file, model=model_file) == 0  # fmt: skip
    with Image.open(out) as overlay:
        assert overlay.format == "PNG"


def test_a_plain_network_is_explained_on_the_imagenet_eval_crop(tmp_path):
    torch.manual_seed(0)
    source = saved(picture(4), tmp_path / "drawing.png")
    written = explain_to_file(build_vgg16(num_classes=3, width=1 / 32), source, tmp_path / "plain.png",
                              "gradcam", None, lime_samples=2, lime_seed=0, max_frames=4)  # fmt: skip
    with Image.open(written) as overlay:
        assert overlay.format == "PNG" and overlay.width == DISPLAY_VIEW_SIDE


def test_corrupt_input_is_a_clear_error_and_writes_nothing(tmp_path, config_file, model_file, capsys):
    whole = io.BytesIO()
    picture(3).save(whole, format="PNG")
    source = tmp_path / "broken.png"
    source.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 3])
    out = tmp_path / "out.png"
    assert explain(str(source), "--out", str(out), config=config_file, model=model_file) == 1
    error = capsys.readouterr().err
    assert "illustfeed: error:" in error and "cannot decode" in error and str(source) in error
    assert list(tmp_path.glob("out*")) == [] and not list(tmp_path.glob("tmp-*"))


def test_unknown_media_missing_file_or_model_is_a_clear_error(tmp_path, config_file, model_file, capsys):
    out = tmp_path / "out.png"
    assert explain("42", "--out", str(out), config=config_file, model=model_file) == 1
    assert "no media with id 42" in capsys.readouterr().err
    assert explain("missing.png", "--out", str(out), config=config_file, model=model_file) == 1
    assert "no such file: missing.png" in capsys.readouterr().err
    source = saved(picture(5), tmp_path / "drawing.png")
    assert explain(str(source), "--out", str(out), config=config_file, model=tmp_path / "absent.pt") == 1
    assert "absent.pt" in capsys.readouterr().err
    assert not out.exists()
