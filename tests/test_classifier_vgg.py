"""VGG16 layout: torchvision's parameter names and shapes, and torchvision checkpoints load."""

import pytest
import torch

from classifier.vgg import LAST_CONV_RELU_INDEX, build_vgg16, load_torchvision_state

# torchvision.models.vgg16().state_dict(): names and shapes, written out by hand from torchvision's source.
TORCHVISION_VGG16_SHAPES = {
    "features.0.weight": (64, 3, 3, 3),
    "features.0.bias": (64,),
    "features.2.weight": (64, 64, 3, 3),
    "features.2.bias": (64,),
    "features.5.weight": (128, 64, 3, 3),
    "features.5.bias": (128,),
    "features.7.weight": (128, 128, 3, 3),
    "features.7.bias": (128,),
    "features.10.weight": (256, 128, 3, 3),
    "features.10.bias": (256,),
    "features.12.weight": (256, 256, 3, 3),
    "features.12.bias": (256,),
    "features.14.weight": (256, 256, 3, 3),
    "features.14.bias": (256,),
    "features.17.weight": (512, 256, 3, 3),
    "features.17.bias": (512,),
    "features.19.weight": (512, 512, 3, 3),
    "features.19.bias": (512,),
    "features.21.weight": (512, 512, 3, 3),
    "features.21.bias": (512,),
    "features.24.weight": (512, 512, 3, 3),
    "features.24.bias": (512,),
    "features.26.weight": (512, 512, 3, 3),
    "features.26.bias": (512,),
    "features.28.weight": (512, 512, 3, 3),
    "features.28.bias": (512,),
    "classifier.0.weight": (4096, 25088),
    "classifier.0.bias": (4096,),
    "classifier.3.weight": (4096, 4096),
    "classifier.3.bias": (4096,),
    "classifier.6.weight": (1000, 4096),
    "classifier.6.bias": (1000,),
}


def full_width(num_classes):
    # Meta tensors: the real shapes without allocating 528 MB.
    with torch.device("meta"):
        return build_vgg16(num_classes=num_classes)


def test_full_width_state_dict_matches_torchvision_names_order_and_shapes():
    state = full_width(1000).state_dict()
    assert list(state) == list(TORCHVISION_VGG16_SHAPES)
    assert {name: tuple(t.shape) for name, t in state.items()} == TORCHVISION_VGG16_SHAPES


def test_three_class_model_differs_only_in_last_layer():
    state = full_width(3).state_dict()
    differing = {name for name, shape in TORCHVISION_VGG16_SHAPES.items() if tuple(state[name].shape) != shape}
    assert differing == {"classifier.6.weight", "classifier.6.bias"}
    assert tuple(state["classifier.6.weight"].shape) == (3, 4096)


def test_grad_cam_layer_is_the_relu_after_the_last_conv():
    model = full_width(3)
    assert isinstance(model.features[LAST_CONV_RELU_INDEX - 1], torch.nn.Conv2d)
    assert isinstance(model.features[LAST_CONV_RELU_INDEX], torch.nn.ReLU)
    assert "features.29" in dict(model.named_modules())


def test_thousand_class_checkpoint_file_loads_into_three_class_model(tmp_path):
    torch.manual_seed(0)
    imagenet_like = build_vgg16(num_classes=1000, width=0.0625)
    checkpoint = tmp_path / "vgg16-small.pth"
    torch.save(imagenet_like.state_dict(), checkpoint)

    model = build_vgg16(num_classes=3, width=0.0625)
    untouched_last_layer = model.classifier[6].weight.clone()
    skipped = load_torchvision_state(model, torch.load(checkpoint, weights_only=True))

    assert skipped == ["classifier.6.bias", "classifier.6.weight"]
    source = imagenet_like.state_dict()
    for name, tensor in model.state_dict().items():
        if name.startswith("classifier.6."):
            continue
        assert torch.equal(tensor, source[name]), name
    assert torch.equal(model.classifier[6].weight, untouched_last_layer)


def test_checkpoint_of_other_width_is_refused_with_the_shapes():
    model = build_vgg16(num_classes=3, width=0.0625)
    other = build_vgg16(num_classes=3, width=0.125).state_dict()
    with pytest.raises(ValueError, match="features.0.weight"):
        load_torchvision_state(model, other)
