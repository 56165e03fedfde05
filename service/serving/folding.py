"""Rewrites of a model, made once at start, that compute the same outputs with less work per
forward pass."""

from __future__ import annotations

import logging
import operator
from collections import Counter

import torch
import torch.fx
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger(__name__)


def _same_padded_layers(module: torch.nn.Module) -> list[tuple[torch.nn.Conv2d, tuple]]:
    """EfficientNet-Lite's convolutions that still pad with a ZeroPad2d before they run, each
    with its padding (left, right, top, bottom)."""
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    return [
        (layer, tuple(layer.static_padding.padding))
        for layer in module.modules()
        if isinstance(layer, Conv2dStaticSamePadding)
        and isinstance(layer.static_padding, torch.nn.ZeroPad2d)
    ]


def fold_symmetric_same_padding(module: torch.nn.Module) -> torch.nn.Module:
    """EfficientNet-Lite's convolutions pad like TensorFlow's "SAME" with a ZeroPad2d before an
    unpadded conv2d: a copy of every activation. Where that padding is the same on both sides
    (every stride-1 layer: 12 of 17), the convolution's own zero padding is the same arithmetic
    without the copy; the stride-2 layers pad one side only, which conv2d cannot, and keep
    theirs. The parameters are untouched, so the state_dict loads as before, and the outputs
    are equal. On a 2-core CPU the forward pass takes 3-7% less (batch 1: 17.7 -> 16.5 ms an
    image, batch 4: 12.8 -> 12.4; medians of six runs, each in a process of its own,
    interleaved, 2026-12-04)."""
    for layer, (left, right, top, bottom) in _same_padded_layers(module):
        if left == right and top == bottom:
            layer.padding = (top, left)
            layer.static_padding = torch.nn.Identity()
    return module


def fold_uneven_same_padding(module: torch.nn.Module) -> int:
    """The stride-2 convolutions that fold_symmetric_same_padding leaves with their ZeroPad2d,
    folded too, in place; how many. Made after the weights are loaded: it changes their shape.

    "SAME" pads a stride-2 layer one more at the end than at the start (3x3: 0 and 1; 5x5: 1
    and 2), which conv2d's padding cannot say. But a kernel one tap longer, its first tap zero,
    with the larger padding on both sides reads the same pixels with the same weights: its
    window starts one pixel earlier, on that zero tap, and the output size is the same. So
    EfficientNet-Lite0's five stride-2 layers (the stem, and four depthwise layers on the
    largest activations) stop copying their input into a padded tensor. The zero tap adds 0 x
    a finite activation, so the outputs are bit for bit the same. On a 2-core CPU the forward
    pass took 6% less an image at batch 8 and 7% at 16 (8.82 -> 8.30 and 8.68 -> 8.08 ms;
    batch 1, 14.64 -> 14.39, within the spread; medians of six runs, each in a process of its
    own, interleaved, 2026-12-06). Where a side is padded otherwise (more than one apart, or
    a dilated kernel), the layer keeps its pad. Not made on a GPU: cuDNN's depthwise kernels
    are tuned for 3x3 and 5x5, and this is not measured there."""
    folded = 0
    for layer, (left, right, top, bottom) in _same_padded_layers(module):
        if tuple(layer.dilation) != (1, 1) or right - left not in (0, 1):
            continue
        if bottom - top not in (0, 1):
            continue
        tap_h, tap_w = bottom - top, right - left  # 1: a zero tap first on that axis
        with torch.no_grad():
            weight = torch.nn.functional.pad(layer.weight, (tap_w, 0, tap_h, 0))
        layer.weight = torch.nn.Parameter(weight, requires_grad=layer.weight.requires_grad)
        layer.padding = (bottom, right)
        layer.kernel_size = tuple(weight.shape[-2:])
        layer.static_padding = torch.nn.Identity()
        folded += 1
    return folded


class _ConvolutionsAsLeaves(torch.fx.Tracer):
    """Keeps every convolution a module call in the graph, subclasses too. torch.fx's default
    tracer does so for torch.nn's own classes only: it traces into EfficientNet-Lite's
    Conv2dStaticSamePadding and leaves a bare conv2d call, with no module to fold into."""

    def is_leaf_module(self, module: torch.nn.Module, qualified_name: str) -> bool:
        return isinstance(module, torch.nn.Conv2d) or super().is_leaf_module(module, qualified_name)


def fold_batch_norm(module: torch.nn.Module) -> tuple[torch.nn.Module, int]:
    """An eval-mode model with each BatchNorm2d that follows a convolution folded into that
    convolution's weights and bias, and how many were folded.

    In eval mode a batch norm is a fixed scale and shift per channel, which the convolution
    before it can apply itself (torch's fuse_conv_bn_eval computes the new weights): one pass
    over every activation fewer, for the 49 of EfficientNet-Lite0 and the 53 of ResNet-50.
    Outputs agree to float32 rounding (1e-6 of the largest logit). Made in float32, before the
    model is cast to float16 on a GPU, so the folded weights are rounded once.

    torch.fx finds which batch norm reads which convolution. torch's own
    `torch.fx.experimental.optimization.fuse` does the same but matches torch.nn.Conv2d
    exactly, so it folds none of EfficientNet-Lite's. A norm is folded only where the
    convolution's output goes to it alone and the convolution is called once; a model fx
    cannot trace (Python control flow on its input) is served unfolded.
    """
    if module.training:
        raise ValueError("fold_batch_norm needs a model in eval mode")
    try:
        graph = _ConvolutionsAsLeaves().trace(module)
    except (RuntimeError, TypeError, ValueError) as exc:  # ValueError: fx's TraceError
        # Control flow on the input (TraceError), len() of it (RuntimeError), an operation
        # a proxy does not support (TypeError).
        log.warning("batch norms left unfolded: torch.fx cannot trace the model: %s", exc)
        return module, 0
    traced = torch.fx.GraphModule(module, graph)
    layers = dict(traced.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    folded = 0
    for node in list(graph.nodes):
        if node.op != "call_module" or not node.args:
            continue
        norm, source = layers[node.target], node.args[0]
        if not (
            isinstance(norm, torch.nn.BatchNorm2d)
            and norm.track_running_stats
            and isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(layers[source.target], torch.nn.Conv2d)
            and len(source.users) == 1
            and calls[source.target] == 1
        ):
            continue
        traced.set_submodule(source.target, fuse_conv_bn_eval(layers[source.target], norm))
        node.replace_all_uses_with(source)
        graph.erase_node(node)
        folded += 1
    if not folded:
        return module, 0
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced, folded


# Elementwise activations with an `inplace` flag; each writes its output over its input.
_ACTIVATIONS = (
    torch.nn.ReLU,
    torch.nn.Hardtanh,  # ReLU6 too
    torch.nn.SiLU,
    torch.nn.Hardswish,
    torch.nn.Hardsigmoid,
    torch.nn.LeakyReLU,
    torch.nn.ELU,
    torch.nn.CELU,
    torch.nn.SELU,
    torch.nn.Mish,
)
# Layers whose output is a tensor of its own, never a view of their input or of a parameter.
_FRESH_OUTPUT = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d)


def activations_in_place(module: torch.nn.Module) -> int:
    """Set `inplace` on every activation module whose every call reads a tensor nothing else
    reads, and say on how many: the activation then writes over the convolution's output
    instead of into a new tensor of the same size, one activation fewer held in memory and
    written (EfficientNet-Lite0: ReLU6, 8% of the forward pass at batches of 8 and 16 on the
    2-core CPU; torchvision's ResNets and MobileNets set it themselves).

    Safe only where the input is read by the activation alone and is a tensor of its own:
    written over, a tensor read later (a residual's input), a view of one, or the model's
    input would change under its other readers. So every call of the module (one module may
    be called at several places, as EfficientNet-Lite's `_swish` is) must read the output of
    a convolution, linear layer or batch norm that nothing else reads. A model torch.fx cannot
    trace is left as it is.
    """
    try:
        graph = _ConvolutionsAsLeaves().trace(module)
    except (RuntimeError, TypeError, ValueError) as exc:
        log.warning("activations left out of place: torch.fx cannot trace the model: %s", exc)
        return 0
    layers = dict(module.named_modules())
    safe: dict[str, bool] = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(layers[node.target], _ACTIVATIONS):
            continue
        source = node.args[0] if node.args else None
        safe[node.target] = safe.get(node.target, True) and (
            len(node.args) == 1
            and not node.kwargs
            and isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(layers[source.target], _FRESH_OUTPUT)
            and len(source.users) == 1
        )
    changed = 0
    for target, is_safe in safe.items():
        if is_safe and not layers[target].inplace:
            layers[target].inplace = True
            changed += 1
    return changed


def _hardtanh(layer: torch.nn.Hardtanh) -> tuple[str, list[float]]:
    return "hardtanh", [layer.min_val, layer.max_val]


# What oneDNN can run as a post-op of a convolution: each activation module's name there and
# its arguments (the names torch's inductor uses when it freezes a graph). By exact class: a
# subclass may compute something else in its forward.
_POST_OPS = {
    torch.nn.ReLU: lambda layer: ("relu", []),
    torch.nn.Hardtanh: _hardtanh,
    torch.nn.ReLU6: _hardtanh,  # a Hardtanh(0, 6)
    torch.nn.SiLU: lambda layer: ("swish", []),
    torch.nn.Hardswish: lambda layer: ("hardswish", []),
    torch.nn.Hardsigmoid: lambda layer: ("hardsigmoid", []),
    torch.nn.Sigmoid: lambda layer: ("sigmoid", []),
    torch.nn.Tanh: lambda layer: ("tanh", []),
}


class OneDnnConvolution(torch.nn.Module):
    """A convolution and what follows it (an activation, or a residual add and maybe a ReLU)
    as one oneDNN call, its weights packed once for the input shape it serves."""

    def __init__(
        self,
        conv: torch.nn.Conv2d,
        input_shape: list[int],
        activation: tuple[str, list[float]] | None,
        adds_residual: bool,
    ):
        super().__init__()
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        with torch.no_grad():
            weight = torch.ops.mkldnn._reorder_convolution_weight(
                conv.weight.detach(), *self._geometry(), input_shape
            )
        self.register_buffer("weight", weight)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach())
        self.activation, self.scalars = activation or ("none", [])
        self.adds_residual = adds_residual

    def _geometry(self) -> tuple:
        return self.padding, self.stride, self.dilation, self.groups

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, *self._geometry(), self.activation, self.scalars, ""
            )
        unary = None if self.activation == "none" else self.activation
        post_op = (unary, self.scalars, None if unary is None else "")
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, self.weight, self.bias, *self._geometry(), "add", 1.0, *post_op
        )

    def extra_repr(self) -> str:
        adds = ", adds residual" if self.adds_residual else ""
        return f"stride={self.stride}, groups={self.groups}, post-op={self.activation}{adds}"


def _plain_convolution(layer: torch.nn.Module) -> bool:
    """A Conv2d whose forward is conv2d of its input and nothing else, with zero padding given
    in numbers: torch's own, or EfficientNet-Lite's once its padding is folded."""
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding
    from efficientnet_lite_pytorch.utils import Identity as LiteIdentity

    if type(layer) is Conv2dStaticSamePadding:
        if not isinstance(layer.static_padding, torch.nn.Identity | LiteIdentity):
            return False
    elif type(layer) is not torch.nn.Conv2d:
        return False  # a subclass may do more in its forward
    return layer.padding_mode == "zeros" and not isinstance(layer.padding, str)


def _post_op(node: torch.fx.Node, layers: dict, source: torch.fx.Node) -> tuple | None:
    """The oneDNN post-op of an activation call reading `source` alone, else None."""
    if node.op != "call_module" or node.args != (source,) or node.kwargs:
        return None
    post_op = _POST_OPS.get(type(layers[node.target]))
    return post_op(layers[node.target]) if post_op else None


def _residual(add: torch.fx.Node, conv: torch.fx.Node, order: dict) -> torch.fx.Node | None:
    """What `add` adds to the convolution's output, where oneDNN can add it: a tensor of the
    output's shape, dtype and layout (no broadcast) computed before the convolution runs."""
    if add.op != "call_function" or add.target not in (operator.add, torch.add) or add.kwargs:
        return None
    if len(add.args) != 2 or add.args.count(conv) != 1:
        return None
    other = add.args[1] if add.args[0] is conv else add.args[0]
    if not isinstance(other, torch.fx.Node) or order[other] > order[conv]:
        return None
    theirs, ours = other.meta.get("tensor_meta"), conv.meta.get("tensor_meta")
    if theirs is None or ours is None:
        return None
    alike = (theirs.shape, theirs.dtype, theirs.memory_format) == (
        ours.shape,
        ours.dtype,
        ours.memory_format,
    )
    return other if alike else None


def fuse_convolution_post_ops(
    module: torch.nn.Module, example: torch.Tensor
) -> tuple[torch.nn.Module, int]:
    """The model with each convolution that an activation, or a residual add (and a ReLU after
    it), alone reads run with it as one oneDNN call, its weights packed once; and how many.

    In eager mode every convolution writes its output, and the activation or add after it
    reads and writes it all again: on EfficientNet-Lite0, ReLU6 alone took 9% of the served
    worker's CPU. oneDNN applies them as post-ops while the convolution's output is still in
    cache, and runs on weights reordered once to its own blocked layout instead of at every
    call. This is what `compile: inductor` does when it freezes a graph, without a compiler or
    a compile at start: the same operators (`torch.ops.mkldnn._convolution_pointwise`, its
    `binary` overload), the same post-op names. They are torch's private operators, so the
    rewritten model is checked against the model on `example` before it is used, and a
    mismatch or an error leaves the model as it was, with a warning in the log.

    CPU float32 only (the caller's choice). `example` is one input of the shape served but
    for the batch: torch.fx's ShapeProp runs it through to learn the shape each convolution
    reads, which the weights are packed for (oneDNN takes other batch sizes as they come).
    A convolution called twice, read by anything else too, or whose add would broadcast or
    read a tensor computed after it, is left as it is.
    """
    if not torch.backends.mkldnn.is_available():
        return module, 0
    try:
        graph = _ConvolutionsAsLeaves().trace(module)
    except (RuntimeError, TypeError, ValueError) as exc:  # as in fold_batch_norm
        log.warning("convolutions left unfused: torch.fx cannot trace the model: %s", exc)
        return module, 0
    fused = torch.fx.GraphModule(module, graph)  # new parents: `module` is left as it is
    try:
        with torch.inference_mode():
            ShapeProp(fused).propagate(example)  # each node's output: node.meta["tensor_meta"]
        count = _fuse_in_place(fused)  # not in inference mode: its weights outlive it
        if not count:
            return module, 0
        with torch.inference_mode():
            expected, got = module(example), fused(example)
        close = torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    except RuntimeError as exc:  # packing the weights, or a fused call
        log.warning("convolutions left unfused: oneDNN's fused convolution failed: %s", exc)
        return module, 0
    if not close:
        log.warning("convolutions left unfused: the fused model answered otherwise")
        return module, 0
    return fused, count


def _fuse_in_place(fused: torch.fx.GraphModule) -> int:
    """fuse_convolution_post_ops's rewrite of a traced model whose nodes carry their shapes;
    how many convolutions it fused."""
    graph = fused.graph
    layers = dict(fused.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    order = {node: position for position, node in enumerate(graph.nodes)}
    count = 0
    for node in list(graph.nodes):
        if not (
            node.op == "call_module"
            and _plain_convolution(layers[node.target])
            and calls[node.target] == 1
            and len(node.users) == 1
            and len(node.args) == 1
            and not node.kwargs
            and isinstance(node.args[0], torch.fx.Node)
            and "tensor_meta" in node.args[0].meta
        ):
            continue
        (reader,) = node.users
        residual, activation, last = _residual(reader, node, order), None, reader
        if residual is not None:
            after = next(iter(reader.users)) if len(reader.users) == 1 else None
            if after is not None and _post_op(after, layers, reader) == ("relu", []):
                activation, last = ("relu", []), after  # oneDNN adds, then its ReLU
        else:
            activation = _post_op(reader, layers, node)
            if activation is None:
                continue
        input_shape = list(node.args[0].meta["tensor_meta"].shape)
        fused.set_submodule(
            node.target,
            OneDnnConvolution(layers[node.target], input_shape, activation, residual is not None),
        )
        if residual is not None:
            node.args = (node.args[0], residual)
        last.replace_all_uses_with(node)
        for erased in dict.fromkeys((last, reader)):  # the last reader first: it reads the other
            graph.erase_node(erased)
        count += 1
    if count:
        fused.delete_all_unused_submodules()
        fused.recompile()
    return count
