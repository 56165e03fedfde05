"""The model rewrites made at start (service/serving/folding.py) answer as the model they
rewrite."""

import copy
import logging

import pytest
import torch
import torchvision
from support import photo

from service.serving.folding import (
    OneDnnConvolution,
    activations_in_place,
    fold_batch_norm,
    fold_uneven_same_padding,
    fuse_convolution_post_ops,
)
from service.serving.model import (
    DEFAULT_ARCHITECTURE,
    LITE_MEAN,
    LITE_STD,
    build_module,
    default_weights_path,
    rewritten_for,
)
from service.serving.preprocessing import Preprocessor

PHOTOS = ("coffee.png", "rocket.jpg", "chelsea.png", "astronaut.png")


@pytest.fixture(scope="module")
def lite_input() -> torch.Tensor:
    preprocessor = Preprocessor(224, 256, LITE_MEAN, LITE_STD, max_pixels=40_000_000)
    pixels = torch.stack([preprocessor(photo(name))[0] for name in PHOTOS])
    return preprocessor.normalize(pixels, torch.float32)


@pytest.fixture(scope="module")
def lite() -> torch.nn.Module:
    return build_module(DEFAULT_ARCHITECTURE, default_weights_path(), 1000)


def batch_norms(module: torch.nn.Module) -> int:
    return sum(isinstance(layer, torch.nn.BatchNorm2d) for layer in module.modules())


def randomise_batch_norms(module: torch.nn.Module) -> torch.nn.Module:
    """A fresh model's norms are the identity, which a wrong fold would pass for."""
    generator = torch.Generator().manual_seed(0)
    for layer in module.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            for tensor, low, high in (
                (layer.running_mean, -1.0, 1.0),
                (layer.running_var, 0.5, 2.0),
                (layer.weight.data, 0.5, 1.5),
                (layer.bias.data, -0.5, 0.5),
            ):
                if tensor is not None:  # none without running statistics
                    tensor.copy_(torch.empty_like(tensor).uniform_(low, high, generator=generator))
    return module.eval()


def test_the_folded_same_padding_answers_as_the_librarys_own_layers(lite, lite_input):
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    as_published = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    as_published.load_state_dict(lite.state_dict())
    as_published.eval()
    layers = [layer for layer in lite.modules() if isinstance(layer, Conv2dStaticSamePadding)]
    padded = [layer for layer in layers if isinstance(layer.static_padding, torch.nn.ZeroPad2d)]
    # Only the stride-2 layers, whose "SAME" padding is one-sided, still copy to pad.
    assert len(padded) == 5 and all(tuple(layer.stride) == (2, 2) for layer in padded)
    assert sum(layer.padding != (0, 0) for layer in layers) == 12
    with torch.inference_mode():
        assert torch.equal(lite(lite_input), as_published(lite_input))


def test_the_uneven_same_padding_folds_into_a_longer_kernel_and_answers_bit_for_bit(
    lite, lite_input
):
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    folded = copy.deepcopy(lite)
    assert fold_uneven_same_padding(folded) == 5
    layers = [layer for layer in folded.modules() if isinstance(layer, Conv2dStaticSamePadding)]
    assert not any(isinstance(layer.static_padding, torch.nn.ZeroPad2d) for layer in layers)
    # The stem and three depthwise layers are 3x3, one depthwise layer 5x5: each a tap longer.
    strided = [layer for layer in layers if tuple(layer.stride) == (2, 2)]
    assert (
        sorted(tuple(layer.weight.shape[-2:]) for layer in strided) == [(4, 4)] * 3 + [(6, 6)] * 2
    )
    assert all(layer.kernel_size == tuple(layer.weight.shape[-2:]) for layer in strided)
    with torch.inference_mode():
        assert torch.equal(folded(lite_input), lite(lite_input))


def strided_layer(padding, size, **kwargs):
    """A stride-2 "SAME" layer of efficientnet_lite_pytorch with the given ZeroPad2d."""
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    layer = Conv2dStaticSamePadding(4, 6, kernel_size=3, stride=2, image_size=size, **kwargs)
    layer.static_padding = torch.nn.ZeroPad2d(padding)
    return layer.eval()


@pytest.mark.parametrize(
    ("padding", "size"),
    [((0, 1, 0, 1), 224), ((1, 2, 1, 2), 31), ((1, 1, 0, 1), 30), ((0, 1, 2, 2), 17)],
)
def test_an_uneven_padding_folds_on_each_axis_at_any_input_size(padding, size):
    torch.manual_seed(0)
    layer = strided_layer(padding, size)
    folded = copy.deepcopy(layer)
    assert fold_uneven_same_padding(folded) == 1
    x = torch.randn(2, 4, size, size)
    with torch.inference_mode():
        expected, got = layer(x), folded(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("padding", [(0, 2, 0, 2), (1, 0, 1, 0), (0, 1, 0, 3)])
def test_a_padding_no_longer_kernel_can_say_is_left_as_it_is(padding):
    layer = strided_layer(padding, 32)
    assert fold_uneven_same_padding(layer) == 0
    assert isinstance(layer.static_padding, torch.nn.ZeroPad2d)
    assert tuple(layer.weight.shape[-2:]) == (3, 3)


def test_a_dilated_uneven_padding_is_left_as_it_is():
    layer = strided_layer((1, 2, 1, 2), 32, dilation=2)
    assert fold_uneven_same_padding(layer) == 0


def test_every_batch_norm_of_efficientnet_lite_is_folded_and_answers_alike(lite, lite_input):
    # torch's own fx fuse() matches torch.nn.Conv2d exactly and folds none of these: the
    # library's convolutions are a subclass of it.
    from torch.fx.experimental.optimization import fuse

    assert batch_norms(fuse(lite)) == 49
    folded, count = fold_batch_norm(lite)
    assert (count, batch_norms(folded), batch_norms(lite)) == (49, 0, 49)  # lite is untouched
    with torch.inference_mode():
        expected, actual = lite(lite_input), folded(lite_input)
    assert torch.allclose(actual, expected, rtol=0, atol=1e-4 * expected.abs().max().item())
    assert actual.argmax(dim=1).tolist() == expected.argmax(dim=1).tolist()
    assert (actual.softmax(dim=1) - expected.softmax(dim=1)).abs().max().item() < 1e-5


def test_a_torchvision_resnet_is_folded_too():
    resnet = randomise_batch_norms(torchvision.models.resnet18(num_classes=10))
    folded, count = fold_batch_norm(resnet)
    assert (count, batch_norms(folded)) == (20, 0)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected, actual = resnet(x), folded(x)
    assert torch.allclose(actual, expected, rtol=0, atol=1e-4 * expected.abs().max().item())


class ConvReadTwice(torch.nn.Module):
    """The convolution's output goes to its norm and, before the norm, to a sum."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.norm = torch.nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.norm(y) + y


class ConvCalledTwice(torch.nn.Module):
    """One convolution at two places, a norm after one of them."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.norm = torch.nn.BatchNorm2d(3)

    def forward(self, x):
        return self.norm(self.conv(x)) + self.conv(x)


class NormWithoutRunningStatistics(torch.nn.Module):
    """A norm that, in eval mode too, uses each batch's own statistics: no fixed scale."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(3, track_running_stats=False)

    def forward(self, x):
        return self.norm(self.conv(x))


@pytest.mark.parametrize("model", [ConvReadTwice, ConvCalledTwice, NormWithoutRunningStatistics])
def test_a_norm_that_cannot_be_folded_leaves_the_model_as_it_is(model):
    module = randomise_batch_norms(model())
    folded, count = fold_batch_norm(module)
    assert count == 0 and folded is module


def test_a_model_with_both_kinds_folds_only_what_it_can():
    module = torch.nn.Sequential(ConvReadTwice(), torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    module = randomise_batch_norms(module)
    folded, count = fold_batch_norm(module)
    assert (count, batch_norms(folded)) == (1, 1)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.allclose(folded(x), module(x), atol=1e-5)


class BranchesOnItsInput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.norm = torch.nn.BatchNorm2d(3)

    def forward(self, x):
        if x.sum() > 0:  # torch.fx cannot trace this
            return self.norm(self.conv(x))
        return x


def test_a_model_fx_cannot_trace_is_served_unfolded(caplog):
    module = BranchesOnItsInput().eval()
    with caplog.at_level(logging.WARNING, logger="service.serving.folding"):
        folded, count = fold_batch_norm(module)
    assert count == 0 and folded is module
    assert "batch norms left unfolded: torch.fx cannot trace the model" in caplog.text


def test_a_model_in_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norm(ConvReadTwice().train())


def in_place(module: torch.nn.Module) -> list[str]:
    return [
        name for name, layer in module.named_modules() if getattr(layer, "inplace", False) is True
    ]


def test_efficientnet_lites_activations_write_over_their_input_and_answer_alike(lite, lite_input):
    import copy

    folded, _ = fold_batch_norm(lite)
    before = copy.deepcopy(folded)
    assert activations_in_place(folded) == 17 and in_place(before) == []
    assert len(in_place(folded)) == 17
    with torch.inference_mode():
        assert torch.equal(folded(lite_input), before(lite_input))


def test_a_torchvision_mobilenet_answers_alike_with_its_activations_in_place():
    import copy

    mobilenet = randomise_batch_norms(torchvision.models.mobilenet_v3_small(num_classes=10))
    folded, _ = fold_batch_norm(mobilenet)
    before = copy.deepcopy(folded)
    assert activations_in_place(folded) > 0
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        assert torch.equal(folded(x), before(x))


class ActivationBesideAResidual(torch.nn.Module):
    """The convolution's output is read by the activation and by the sum after it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.act = torch.nn.ReLU()

    def forward(self, x):
        y = self.conv(x)
        return self.act(y) + y


class ActivationOnTheInput(torch.nn.Module):
    """Written over, the caller's own tensor would change."""

    def __init__(self):
        super().__init__()
        self.act = torch.nn.ReLU6()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(self.act(x))


class OneActivationTwoPlaces(torch.nn.Module):
    """One module called where it is safe and where it is not."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.act = torch.nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x)) + self.act(x)


@pytest.mark.parametrize(
    "model", [ActivationBesideAResidual, ActivationOnTheInput, OneActivationTwoPlaces]
)
def test_an_activation_whose_input_is_read_elsewhere_stays_out_of_place(model):
    module = model().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        expected = module(x.clone())
        assert activations_in_place(module) == 0 and in_place(module) == []
        kept = x.clone()
        assert torch.equal(module(kept), expected) and torch.equal(kept, x)


def served_on_the_cpu(module: torch.nn.Module) -> torch.nn.Module:
    """The model as a CPU worker has it before the fusion."""
    return rewritten_for(module, torch.device("cpu"), torch.float32)[0]


def nhwc(*shape: int, seed: int = 5) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last)


def fused_layers(module: torch.nn.Module) -> list[OneDnnConvolution]:
    return [layer for layer in module.modules() if isinstance(layer, OneDnnConvolution)]


def test_efficientnet_lites_convolutions_run_with_their_relu6_or_residual_add(lite, lite_input):
    served = served_on_the_cpu(copy.deepcopy(lite))
    fused, count = fuse_convolution_post_ops(served, nhwc(1, 3, 224, 224))
    # Each block's expand and depthwise convolution with its ReLU6 (the stem and head too:
    # 33), and the nine projections whose block adds its input back.
    layers = fused_layers(fused)
    assert count == len(layers) == 42
    assert [layer.activation for layer in layers].count("hardtanh") == 33
    assert sum(layer.adds_residual for layer in layers) == 9
    assert fused_layers(served) == []  # the model it was given is left as it was
    x = lite_input.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected, got = served(x), fused(x)
        for batch in (x[:1], x[:3]):  # oneDNN takes any batch size, packed for one
            torch.testing.assert_close(fused(batch), served(batch), rtol=0, atol=1e-5)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert torch.equal(got.argmax(dim=1), expected.argmax(dim=1))


def test_a_torchvision_resnet_fuses_its_relus_and_its_residual_adds_with_the_relu_after():
    resnet = served_on_the_cpu(randomise_batch_norms(torchvision.models.resnet18(num_classes=10)))
    fused, count = fuse_convolution_post_ops(resnet, nhwc(1, 3, 64, 64))
    layers = fused_layers(fused)
    # The stem and each block's first convolution with their ReLU (9); each block's add, with
    # the ReLU after it, runs in its second convolution, or in its downsampling one where
    # that is computed after the second (8).
    assert count == 17
    assert sum(layer.adds_residual and layer.activation == "relu" for layer in layers) == 8
    x = nhwc(2, 3, 64, 64, seed=6)
    with torch.inference_mode():
        expected, got = resnet(x), fused(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize(
    "activation",
    [
        torch.nn.ReLU(),
        torch.nn.ReLU6(),
        torch.nn.Hardtanh(-0.5, 2.0),
        torch.nn.SiLU(),
        torch.nn.Hardswish(),
        torch.nn.Hardsigmoid(),
        torch.nn.Sigmoid(),
        torch.nn.Tanh(),
    ],
    ids=lambda activation: type(activation).__name__,
)
def test_each_activation_onednn_knows_runs_in_the_convolution(activation):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), activation).eval()
    module = module.to(memory_format=torch.channels_last)
    fused, count = fuse_convolution_post_ops(module, nhwc(1, 3, 16, 16))
    assert count == 1 and not any(type(layer) is type(activation) for layer in fused.modules())
    x = nhwc(3, 3, 16, 16, seed=7)
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), module(x), rtol=0, atol=1e-5)


class Residual(torch.nn.Module):
    """conv(x) + what `other` makes of x; `other_first` computes that before the convolution."""

    def __init__(self, other, other_first=True, conv=None):
        super().__init__()
        self.conv = conv or torch.nn.Conv2d(4, 4, 3, padding=1)
        self.other, self.other_first = other, other_first

    def forward(self, x):
        if self.other_first:
            other = self.other(x)
            return self.conv(x) + other
        y = self.conv(x)
        return y + self.other(x)


class ConvAlsoReturned(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.act = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU()

    def forward(self, x):
        y = self.conv(x)
        return self.act(y), y


class ConvAtTwoPlaces(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.act = torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x)) * self.conv(x)


class PaddedItself(torch.nn.Conv2d):
    """A subclass of Conv2d whose forward does more than conv2d."""

    def forward(self, x):
        return super().forward(torch.nn.functional.pad(x, (1, 0, 1, 0)))


@pytest.mark.parametrize(
    "model",
    [
        lambda: Residual(lambda x: x * 2, other_first=False),  # computed after the convolution
        lambda: Residual(lambda x: x.mean(dim=(2, 3), keepdim=True)),  # would broadcast
        lambda: Residual(torch.nn.Identity(), conv=torch.nn.Conv2d(4, 4, 3, padding="same")),
        lambda: Residual(
            torch.nn.Identity(), conv=torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")
        ),
        lambda: Residual(torch.nn.Identity(), conv=PaddedItself(4, 4, 2)),
        ConvAlsoReturned,
        ConvAtTwoPlaces,
        lambda: torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3), torch.nn.LeakyReLU()),
    ],
    ids=[
        "residual-after",
        "broadcast",
        "padding-same",
        "padding-reflect",
        "conv-subclass",
        "read-twice",
        "called-twice",
        "not-a-post-op",
    ],
)
def test_a_convolution_onednn_cannot_take_with_its_reader_is_left_as_it_is(model):
    module = model().eval().to(memory_format=torch.channels_last)
    fused, count = fuse_convolution_post_ops(module, nhwc(1, 4, 8, 8))
    assert count == 0 and fused is module


def raises(message):
    def method(self, *args, **kwargs):
        raise RuntimeError(message)

    return method


@pytest.mark.parametrize(
    ("method", "replacement", "logged"),
    [
        (
            "forward",
            lambda self, x, residual=None: x[:, :1] * 0,
            "convolutions left unfused: the fused model answered otherwise",
        ),
        (
            "forward",
            raises("mkldnn: no such post-op"),
            "oneDNN's fused convolution failed: mkldnn: no such post-op",
        ),
        (
            "__init__",
            raises("mkldnn: no reorder for this convolution"),
            "oneDNN's fused convolution failed: mkldnn: no reorder for this convolution",
        ),
    ],
    ids=["answers-otherwise", "fails", "cannot-pack"],
)
def test_a_fused_model_that_fails_its_check_leaves_the_model_as_it_was(
    monkeypatch, caplog, method, replacement, logged
):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()).eval()
    monkeypatch.setattr(OneDnnConvolution, method, replacement)
    with caplog.at_level(logging.WARNING, logger="service.serving.folding"):
        fused, count = fuse_convolution_post_ops(module, nhwc(1, 3, 8, 8))
    assert count == 0 and fused is module
    assert logged in caplog.text


def test_a_model_fx_cannot_trace_is_served_unfused(caplog):
    module = BranchesOnItsInput().eval()
    with caplog.at_level(logging.WARNING, logger="service.serving.folding"):
        fused, count = fuse_convolution_post_ops(module, nhwc(1, 3, 8, 8))
    assert count == 0 and fused is module
    assert "convolutions left unfused: torch.fx cannot trace the model" in caplog.text
