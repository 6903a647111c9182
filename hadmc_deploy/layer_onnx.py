"""One layer as a tiny ONNX graph, so a backend can time it exactly as it runs in deployment.

The graph holds the layer and the activation fused after it (backends fuse
conv + relu into one kernel, so timing them apart would double-count a memory
pass). INT8 layers are written in QDQ form, the way the deployed model is: the
graph input and output are already quantized (uint8 or int8 tensors), so the
backend fuses DQ -> op -> Q into its integer kernel (QLinearConv, an INT8
TensorRT tactic) and the timing includes no float<->int conversion that the
deployed model would not have.

Written with `onnx.helper` rather than by exporting a torch module because a
torch export per grid point costs ~100x more, and because QDQ form must match the
target's INT8 form exactly, which the exporter does not produce.

Long because it holds one small ONNX builder per op kind (conv, grouped and depthwise conv,
conv-transpose, linear, pooling) in each timing form (float, QDQ); a registry is clearer in one place.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hadmc_deploy.errors import LatencyModelError
from hadmc_deploy.specs import LayerSpec

INT8_FORMS = ("qdq_s8s8", "qdq_u8s8")
_ACT_SCALE = 0.05


class _Builder:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self, seed: int) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, stem: str, array: np.ndarray) -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def node(self, op: str, inputs: list[str], stem: str | None = None, **attrs) -> str:  # noqa: ANN003
        out = self.name(stem or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def weight(self, shape: tuple[int, ...]) -> np.ndarray:
        fan_in = max(int(np.prod(shape[1:])), 1)
        return (self.rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


# -- activations (a registry, not an if-chain) --------------------------------------
def _relu(b: _Builder, x: str) -> str:
    return b.node("Relu", [x])


def _relu6(b: _Builder, x: str) -> str:
    return b.node("Clip", [x, b.const("min", np.array(0.0, np.float32)), b.const("max", np.array(6.0, np.float32))])


def _silu(b: _Builder, x: str) -> str:
    return b.node("Mul", [x, b.node("Sigmoid", [x])])


def _gelu(b: _Builder, x: str) -> str:
    # Erf form: Gelu is an ONNX op only from opset 20; ORT fuses this pattern.
    inner = b.node("Div", [x, b.const("sqrt2", np.array(np.sqrt(2.0), np.float32))])
    erf = b.node("Add", [b.node("Erf", [inner]), b.const("one", np.array(1.0, np.float32))])
    return b.node("Mul", [b.node("Mul", [x, erf]), b.const("half", np.array(0.5, np.float32))])


ACTIVATIONS: dict[str, Callable[[_Builder, str], str]] = {
    "relu": _relu,
    "relu6": _relu6,
    "silu": _silu,
    "swish": _silu,
    "gelu": _gelu,
    "sigmoid": lambda b, x: b.node("Sigmoid", [x]),
    "tanh": lambda b, x: b.node("Tanh", [x]),
    "hardswish": lambda b, x: b.node("HardSwish", [x]),
    "hardsigmoid": lambda b, x: b.node("HardSigmoid", [x]),
    "leaky_relu": lambda b, x: b.node("LeakyRelu", [x], alpha=0.01),
    "elu": lambda b, x: b.node("Elu", [x]),
}
#: activations whose output is >= 0: an unsigned quantized output can start at 0.
_NON_NEGATIVE = {"relu", "relu6", "sigmoid", "hardsigmoid"}


def _apply_activation(b: _Builder, x: str, name: str | None) -> str:
    if name is None:
        return x
    fn = ACTIVATIONS.get(name.lower())
    if fn is None:
        raise LatencyModelError(f"cannot build a timing graph for activation {name!r}", hint=f"known: {', '.join(sorted(ACTIVATIONS))}")
    return fn(b, x)


# -- ops --------------------------------------------------------------------------
def _conv_weights(b: _Builder, spec: LayerSpec, int8: _Quant | None, transpose: bool = False) -> list[str]:
    kh, kw = spec.kernel
    if transpose:
        shape = (spec.in_channels, spec.out_channels // spec.groups, kh, kw)
    else:
        shape = (spec.out_channels, spec.in_channels // spec.groups, kh, kw)
    w = b.weight(shape)
    bias = (b.rng.standard_normal(spec.out_channels) * 0.01).astype(np.float32) if spec.bias else None
    if int8 is None:
        names = [b.const("w", w)]
        if bias is not None:
            names.append(b.const("bias", bias))
        return names
    # Symmetric int8 weights, per output channel (axis 0 for Conv, 1 for ConvTranspose).
    axis = 1 if transpose else 0
    reduce_axes = tuple(i for i in range(4) if i != axis)
    w_scale = (np.abs(w).max(axis=reduce_axes) / 127.0 + 1e-8).astype(np.float32)
    bshape = [1, 1, 1, 1]
    bshape[axis] = -1
    wq = np.clip(np.round(w / w_scale.reshape(bshape)), -127, 127).astype(np.int8)
    names = [b.node("DequantizeLinear", [b.const("wq", wq), b.const("w_scale", w_scale), b.const("w_zp", np.zeros_like(wq, shape=w_scale.shape))], axis=axis)]
    if bias is not None:
        b_scale = (w_scale * int8.in_scale).astype(np.float32) if w_scale.shape[0] == spec.out_channels else np.float32(int8.in_scale * w_scale.max())
        bq = np.round(bias / b_scale).astype(np.int32)
        names.append(b.node("DequantizeLinear", [b.const("bq", bq), b.const("b_scale", np.asarray(b_scale, np.float32)), b.const("b_zp", np.zeros(np.shape(b_scale), np.int32))], axis=0))
    return names


def _conv(b: _Builder, spec: LayerSpec, xs: list[str], q: _Quant | None) -> str:
    attrs = dict(
        kernel_shape=list(spec.kernel),
        strides=list(spec.stride),
        pads=[spec.padding[0], spec.padding[1], spec.padding[0], spec.padding[1]],
        dilations=list(spec.dilation),
        group=spec.groups,
    )
    if spec.op == "convtranspose":
        return b.node("ConvTranspose", [xs[0], *_conv_weights(b, spec, q, transpose=True)], output_shape=list(spec.out_hw), **attrs)
    return b.node("Conv", [xs[0], *_conv_weights(b, spec, q)], **attrs)


def _linear(b: _Builder, spec: LayerSpec, xs: list[str], q: _Quant | None) -> str:
    w = b.weight((spec.out_channels, spec.in_channels))
    # a channels-last (N, rows, C) input deploys as MatMul + Add, as torch exports it (Gemm is 2-D
    # only): its weight is stored (in, out)
    matmul = spec.rows_per_sample() > 1
    if matmul:
        w = np.ascontiguousarray(w.T)
    if q is None:
        w_name = b.const("w", w)
    else:  # per-tensor: ORT's QDQ Gemm fusion takes a scalar weight scale
        scale = np.float32(np.abs(w).max() / 127.0 + 1e-8)
        wq = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        w_name = b.node("DequantizeLinear", [b.const("wq", wq), b.const("w_scale", np.array(scale)), b.const("w_zp", np.array(0, np.int8))])
    bias = (b.rng.standard_normal(spec.out_channels) * 0.01).astype(np.float32) if spec.bias else None
    if matmul:
        y = b.node("MatMul", [xs[0], w_name])
        return b.node("Add", [y, b.const("bias", bias)]) if bias is not None else y
    inputs = [xs[0], w_name]
    if bias is not None:
        if q is None:
            inputs.append(b.const("bias", bias))
        else:
            b_scale = np.float32(q.in_scale * scale)
            bq = np.round(bias / b_scale).astype(np.int32)
            inputs.append(b.node("DequantizeLinear", [b.const("bq", bq), b.const("b_scale", np.array(b_scale)), b.const("b_zp", np.array(0, np.int32))]))
    return b.node("Gemm", inputs, transB=1)


def _pads(spec: LayerSpec) -> list[int]:
    return [spec.padding[0], spec.padding[1], spec.padding[0], spec.padding[1]]


def _maxpool(b: _Builder, spec: LayerSpec, xs: list[str], q: _Quant | None) -> str:
    return b.node("MaxPool", [xs[0]], kernel_shape=list(spec.kernel), strides=list(spec.stride), pads=_pads(spec))


def _avgpool(b: _Builder, spec: LayerSpec, xs: list[str], q: _Quant | None) -> str:
    return b.node("AveragePool", [xs[0]], kernel_shape=list(spec.kernel), strides=list(spec.stride), pads=_pads(spec))


def _globalpool(b: _Builder, spec: LayerSpec, xs: list[str], q: _Quant | None) -> str:
    return b.node("GlobalAveragePool", [xs[0]])


def _eltwise(op: str) -> Callable[[_Builder, LayerSpec, list[str], _Quant | None], str]:
    def build(b: _Builder, spec: LayerSpec, xs: list[str], q: _Quant | None) -> str:
        out = xs[0]
        for x in xs[1:]:
            out = b.node(op, [out, x])
        return out

    return build


def _concat(b: _Builder, spec: LayerSpec, xs: list[str], q: _Quant | None) -> str:
    return b.node("Concat", xs, axis=1)


def _act(b: _Builder, spec: LayerSpec, xs: list[str], q: _Quant | None) -> str:
    # A standalone activation: the spec's own `activation` names it (relu by default),
    # and `_apply_activation` must not add it a second time.
    return _apply_activation(b, xs[0], spec.activation or dict(spec.extra).get("act", "relu"))


def _upsample(b: _Builder, spec: LayerSpec, xs: list[str], q: _Quant | None) -> str:
    mode = str(dict(spec.extra).get("mode", "nearest"))
    sizes = b.const("sizes", np.array([spec.batch, spec.out_channels, *spec.out_hw], np.int64))
    return b.node("Resize", [xs[0], "", "", sizes], mode=mode)


def _norm(b: _Builder, spec: LayerSpec, xs: list[str], q: _Quant | None) -> str:
    c = spec.out_channels
    params = [b.const(n, v) for n, v in (("gamma", np.ones(c, np.float32)), ("beta", np.zeros(c, np.float32)), ("mean", np.zeros(c, np.float32)), ("var", np.ones(c, np.float32)))]
    return b.node("BatchNormalization", [xs[0], *params])


OP_BUILDERS: dict[str, Callable[[_Builder, LayerSpec, list[str], _Quant | None], str]] = {
    "conv": _conv,
    "dwconv": _conv,
    "gconv": _conv,
    "convtranspose": _conv,
    "linear": _linear,
    "maxpool": _maxpool,
    "avgpool": _avgpool,
    "globalpool": _globalpool,
    "add": _eltwise("Add"),
    "mul": _eltwise("Mul"),
    "concat": _concat,
    "act": _act,
    "upsample": _upsample,
    "norm": _norm,
}


def concat_input_channels(spec: LayerSpec) -> list[int]:
    """Per-input channel counts of a concat: from `extra` when the graph recorded them, else an even split."""
    extra = dict(spec.extra)
    for key in ("in_channels", "input_channels", "inputs"):
        value = extra.get(key)
        if isinstance(value, (list, tuple)) and len(value) == spec.n_inputs and sum(int(v) for v in value) == spec.out_channels:
            return [int(v) for v in value]
    n = max(spec.n_inputs, 1)
    base, rem = divmod(spec.out_channels, n)
    return [base + (1 if i < rem else 0) for i in range(n)]


def input_shapes(spec: LayerSpec) -> list[tuple[int, ...]]:
    if spec.op == "linear":
        rows = spec.rows_per_sample()
        return [(spec.batch, rows, spec.in_channels) if rows > 1 else (spec.batch, spec.in_channels)]
    h, w = spec.in_hw
    if spec.op == "concat":
        return [(spec.batch, c, h, w) for c in concat_input_channels(spec)]
    n = spec.n_inputs if spec.op in ("add", "mul") else 1
    return [(spec.batch, spec.in_channels, h, w)] * max(n, 1)


class _Quant:
    """Quantization parameters of a layer's quantized input and output tensors."""

    def __init__(self, form: str, activation: str | None) -> None:
        if form not in INT8_FORMS:
            raise LatencyModelError(f"unknown INT8 form {form!r}", hint=f"use one of {', '.join(INT8_FORMS)}")
        self.unsigned = form == "qdq_u8s8"
        self.dtype = TensorProto.UINT8 if self.unsigned else TensorProto.INT8
        self.np_dtype = np.uint8 if self.unsigned else np.int8
        self.in_scale = np.float32(_ACT_SCALE)
        self.in_zp = 128 if self.unsigned else 0
        # After relu-like activations an unsigned output starts at 0 so the backend can
        # drop the activation into the integer kernel, as a calibrated model would.
        act = (activation or "").lower()
        self.out_zp = 0 if self.unsigned and act in _NON_NEGATIVE else self.in_zp
        # A relu6 output calibrates to [0, 6]: with that scale the clip is a no-op the backend removes.
        self.out_scale = np.float32(6.0 / 255.0) if self.unsigned and act == "relu6" else self.in_scale

    def zp(self, b: _Builder, value: int) -> str:
        return b.const("zp", np.array(value, self.np_dtype))


def layer_model(spec: LayerSpec, int8_form: str | None = None, opset: int = 18, seed: int = 0) -> onnx.ModelProto:
    """A checked ONNX model of `spec` (+ its fused activation); int8 specs in `int8_form` QDQ.

    For `spec.precision == "int8"` the form defaults to "qdq_s8s8". The graph's
    inputs are named `input`, `input_1`, ...; its output `output`. fp16 specs stay
    float32 graphs: a backend that builds in fp16 (TensorRT) casts them itself, as it
    does with the deployed model.
    """
    if spec.op not in OP_BUILDERS:
        raise LatencyModelError(f"no timing graph for op kind {spec.op!r}")
    b = _Builder(seed)
    q = _Quant(int8_form or "qdq_s8s8", spec.activation) if spec.precision == "int8" else None
    in_dtype = q.dtype if q else TensorProto.FLOAT
    shapes = input_shapes(spec)
    names = ["input"] + [f"input_{i}" for i in range(1, len(shapes))]
    inputs = [helper.make_tensor_value_info(n, in_dtype, list(s)) for n, s in zip(names, shapes, strict=True)]
    xs = list(names)
    if q is not None:
        scale = b.const("x_scale", np.array(q.in_scale, np.float32))
        xs = [b.node("DequantizeLinear", [x, scale, q.zp(b, q.in_zp)]) for x in xs]
    y = OP_BUILDERS[spec.op](b, spec, xs, q)
    if spec.op != "act":
        y = _apply_activation(b, y, spec.activation)
    out_dtype = in_dtype
    if q is not None:
        y = b.node("QuantizeLinear", [y, b.const("y_scale", np.array(q.out_scale, np.float32)), q.zp(b, q.out_zp)])
    b.nodes.append(helper.make_node("Identity", [y], ["output"], name="output_identity"))
    if spec.op == "linear":
        out_shape = [spec.batch, *([spec.rows_per_sample()] if spec.rows_per_sample() > 1 else []), spec.out_channels]
    else:
        out_shape = [spec.batch, spec.out_channels, *spec.out_hw]
    output = helper.make_tensor_value_info("output", out_dtype, out_shape)
    graph = helper.make_graph(b.nodes, f"layer_{spec.op}", inputs, [output], initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="hadmc-deploy-latency")
    model.ir_version = min(model.ir_version, 9)  # readable by every onnxruntime this project supports
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise LatencyModelError(f"timing graph for {spec.key()} is invalid: {str(exc).splitlines()[0]}") from exc
    return model


def example_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds matching the graph's declared input types and shapes (for timing)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        t = value.type.tensor_type
        shape = [d.dim_value for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            feeds[value.name] = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds
