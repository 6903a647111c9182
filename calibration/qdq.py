"""Write a QDQ (QuantizeLinear/DequantizeLinear) graph from a float ONNX model and our ranges.

onnxruntime.quantization inserts the Q/DQ nodes; we never let it calibrate. Our
`ActivationRanges` are written into ORT's own calibration-cache JSON (`TensorsData`,
MinMax form: the range we chose IS the final range) and `quantize_static` is called
with `calibration_cache_path=` and no data reader - the supported way, since ORT 1.2x,
to quantize from precomputed ranges.

Two forms x two placements:
* form: `qdq_s8s8` (int8 activations, zero point 0) or `qdq_u8s8` (uint8 activations,
  asymmetric); weights are always int8, symmetric, per output channel (axis 0) unless
  `per_channel=False` (one scale per tensor, what ORT's quantize_static does by default).
* placement `tensorrt` (default for qdq_s8s8): Q/DQ only where TensorRT fuses - the
  inputs of Conv/Gemm/MatMul, never their outputs (so Conv+BN+ReLU fuse and no Q/DQ
  sits between a conv and its ReLU), biases left in float (TensorRT quantizes them
  itself), plus one Q/DQ on each residual Add's skip input so Conv+Add fuse (TensorRT's
  "quantize the residual input" rule).
* placement `onnxruntime` (default for qdq_u8s8): ORT's full QDQ placement (Conv
  outputs, Add, pools, int32 biases) so its CPU graph transformer can fuse every
  node into QLinearConv/QLinearAdd/... kernels; a TensorRT-placed graph runs
  mostly in float on ORT CPU (measured in docs/int8.md).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hadmc_deploy.calibration.collect import float_tensor_names
from hadmc_deploy.calibration.ranges import ActivationRanges
from hadmc_deploy.errors import DataError, UsageError
from hadmc_deploy.fileio import atomic_path

FORMS = ("qdq_s8s8", "qdq_u8s8")
PLACEMENTS = ("tensorrt", "onnxruntime")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
DEFAULT_PLACEMENT = {"qdq_s8s8": "tensorrt", "qdq_u8s8": "onnxruntime"}


def write_qdq(
    float_onnx: str | Path,
    ranges: ActivationRanges,
    out_path: str | Path,
    *,
    form: str = "qdq_s8s8",
    float_nodes: Iterable[str] = (),
    reduce_range: bool = False,
    placement: str | None = None,
    per_channel: bool = True,
) -> Path:
    """Quantize `float_onnx` with `ranges` into `out_path` (atomic); `float_nodes` stay in float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    if form not in FORMS:
        raise UsageError(f"unknown INT8 form {form!r}", hint=f"use one of {', '.join(FORMS)}")
    placement = placement or DEFAULT_PLACEMENT[form]
    if placement not in PLACEMENTS:
        raise UsageError(f"unknown Q/DQ placement {placement!r}", hint=f"use one of {', '.join(PLACEMENTS)}")
    model = onnx.load(str(float_onnx))
    _fold_weight_identities(model)
    _constants_to_initializers(model)
    _fold_initializer_computations(model)
    needed = float_tensor_names(model)
    missing = [n for n in needed if n not in ranges]
    if missing:
        raise DataError(
            f"the ranges have no entry for tensor {missing[0]!r} of {Path(float_onnx).name} ({len(missing)} missing)",
            hint="the scales were collected on another model: recalibrate",
        )
    symmetric = form == "qdq_s8s8"
    data = {}
    for name in needed:
        rng = ranges.tensors[name]
        lo, hi = (-rng.amax, rng.amax) if symmetric else rng.clipped()
        data[name] = TensorData(lowest=np.array(lo, np.float32), highest=np.array(hi, np.float32))
    extra: dict = {"WeightSymmetric": True, "ActivationSymmetric": symmetric}
    if placement == "tensorrt":
        op_types = list(WEIGHTED_OPS)
        extra |= {"QuantizeBias": False, "OpTypesToExcludeOutputQuantization": list(WEIGHTED_OPS)}
    else:
        op_types = None  # every op ORT has a QDQ handler for
    float_nodes = list(float_nodes)
    unknown = sorted(set(float_nodes) - {n.name for n in model.graph.node})
    if unknown:
        raise UsageError(f"float_nodes names {unknown[0]!r}, which is not a node of {Path(float_onnx).name}")
    excluded = float_nodes + (_multi_axis_norms(model) if per_channel and placement == "onnxruntime" else [])
    with tempfile.TemporaryDirectory(prefix="hadmc-qdq-") as tmp:
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
        source = Path(tmp) / "float.onnx"
        onnx.save(model, str(source))
        quantized = Path(tmp) / "qdq.onnx"
        root = logging.getLogger()
        root.addFilter(_below_error)  # ORT logs "consider pre-processing" per call, on the root logger
        try:
            quantize_static(
                str(source),
                str(quantized),
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=str(cache),
                extra_options=extra,
            )
        finally:
            root.removeFilter(_below_error)
        qmodel = onnx.load(str(quantized))
    if placement == "tensorrt":
        add_residual_qdq(qmodel, ranges, skip_nodes=set(float_nodes))
    qmodel.producer_name = "hadmc-deploy"
    helper.set_model_props(qmodel, {"hadmc.int8_form": form, "hadmc.qdq_placement": placement, "hadmc.calibration": ranges.method})
    onnx.checker.check_model(qmodel)
    with atomic_path(out_path) as tmp_out:
        onnx.save(qmodel, str(tmp_out))
    return Path(out_path)


def _multi_axis_norms(model: onnx.ModelProto) -> list[str]:
    """LayerNormalization nodes whose scale spans several axes (`nn.LayerNorm([C, H, W])`): kept in
    float, as ORT 1.32's per-channel int32-bias adjustment indexes such a bias by its first axis and
    fails ("truth value of an array ... is ambiguous"). ORT's CPU EP has no INT8 LayerNorm kernel:
    the node ran in float between a DQ and a Q either way."""
    ranks = {t.name: len(t.dims) for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "LayerNormalization" and len(n.input) > 1 and ranks.get(n.input[1], 1) > 1]


def _below_error(record: logging.LogRecord) -> bool:
    """A root-logger filter rather than root.setLevel: setLevel takes logging's module lock and clears
    every logger's level cache, process-wide state other threads may be using mid-call; the filter
    touches only the records ORT's quantizer logs on the root logger."""
    return record.levelno >= logging.ERROR


def cpu_reduce_range(isa: str) -> bool:
    """7-bit weights where u8 x s8 products can saturate int16 (x86 without VNNI), as ORT's docs advise."""
    return isa in ("avx2", "avx512", "generic")


def _fold_weight_identities(model: onnx.ModelProto) -> None:
    """Point consumers of `Identity(initializer)` at the initializer itself.

    The legacy exporter routes shared weights through Identity nodes; ORT's quantizer
    would then treat such a weight as an activation. Simplified exports have none.
    """
    initializers = {i.name for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    rename = {}
    for node in list(model.graph.node):
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in outputs:
            rename[node.output[0]] = node.input[0]
            model.graph.node.remove(node)
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name in rename:
                node.input[k] = rename[name]


def _constants_to_initializers(model: onnx.ModelProto) -> None:
    """Turn `Constant` nodes (tensor-valued) into initializers of the same name.

    The legacy exporter writes GELU's 0.5 and sqrt(2) as Constant nodes; ORT's quantizer would
    then want activation ranges for them (`float_tensor_names` rightly has none: they are
    constants) and fail with "Quantization parameters are not specified". Simplified exports
    already carry them as initializers.
    """
    outputs = {o.name for o in model.graph.output}
    for node in list(model.graph.node):
        if node.op_type != "Constant" or node.output[0] in outputs:
            continue
        value = next((a for a in node.attribute if a.name == "value"), None)
        if value is None:  # value_float / value_ints ...: rare in exports, left as they are
            continue
        tensor = onnx.TensorProto()
        tensor.CopyFrom(value.t)
        tensor.name = node.output[0]
        model.graph.initializer.append(tensor)
        model.graph.node.remove(node)


def _fold_initializer_computations(model: onnx.ModelProto) -> int:
    """Nodes whose every input is an initializer become initializers (evaluated by `onnx.reference`);
    returns how many.

    A weight computed in forward (BiT's weight standardisation, a weight norm not baked) stays a
    subgraph in a TorchScript export without the simplifier; ORT's quantizer then finds no
    initializer for the weight and wants activation ranges for it ("Quantization parameters are
    not specified for param .../Sub_output_0"). ORT's session folds the same nodes at load time,
    so the graph that runs is unchanged.
    """
    from onnx.reference import ReferenceEvaluator

    initializers = {i.name: i for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    opsets = {o.domain or "": o.version for o in model.opset_import}
    folded = 0
    for node in list(model.graph.node):
        inputs = [name for name in node.input if name]
        if (not inputs or any(name not in initializers for name in inputs) or any(o in outputs for o in node.output)
                or node.domain not in ("", "ai.onnx") or node.op_type.startswith("Random")
                or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)):
            continue
        try:
            values = ReferenceEvaluator(node, opsets=opsets).run(None, {name: numpy_helper.to_array(initializers[name]) for name in inputs})
        except Exception:  # an op the reference runtime lacks: left for ORT, as before
            continue
        for name, value in zip(node.output, values, strict=True):
            tensor = numpy_helper.from_array(np.asarray(value), name)
            model.graph.initializer.append(tensor)
            initializers[name] = tensor
        model.graph.node.remove(node)
        folded += 1
    return folded


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _skip_input(add: onnx.NodeProto, producers: dict[str, onnx.NodeProto], kernel: dict[str, int]) -> int | None:
    """Which input of a residual Add is the skip branch (the other one TensorRT fuses into its conv)."""
    ops = [producers[i].op_type if i in producers else None for i in add.input]
    from_conv = [op in WEIGHTED_OPS for op in ops]
    if from_conv == [True, False]:
        return 1
    if from_conv == [False, True]:
        return 0
    if from_conv == [True, True]:  # downsample block: the 1x1 shortcut conv is the skip
        k0, k1 = (kernel.get(producers[i].name, 0) for i in add.input)
        return 0 if k0 < k1 else 1
    return None


def add_residual_qdq(model: onnx.ModelProto, ranges: ActivationRanges, skip_nodes: set[str] = frozenset()) -> int:
    """Insert (or reuse) a symmetric int8 Q/DQ on each residual Add's skip input; returns how many."""
    initializers = {i.name for i in model.graph.initializer}
    producers = _producers(model)
    dq_of = {}  # float tensor -> output of an existing DequantizeLinear of it
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in producers and producers[node.input[0]].op_type == "QuantizeLinear":
            dq_of[producers[node.input[0]].input[0]] = node.output[0]
    kernel = {}
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.name == "kernel_shape":
                kernel[node.name] = int(np.prod(attr.ints))
        if node.op_type in ("Conv", "ConvTranspose") and node.name not in kernel and node.input[1] in initializers:
            w = next(i for i in model.graph.initializer if i.name == node.input[1])
            kernel[node.name] = int(np.prod(w.dims[2:]))
    new_nodes: list[tuple[int, list[onnx.NodeProto]]] = []
    count = 0
    for index, node in enumerate(model.graph.node):
        if node.op_type != "Add" or node.name in skip_nodes or any(i in initializers for i in node.input):
            continue
        which = _skip_input(node, producers, kernel)
        if which is None:
            continue
        tensor = node.input[which]
        if tensor in dq_of:
            node.input[which] = dq_of[tensor]
        elif tensor in ranges:
            scale = max(ranges.amax(tensor), 1e-12) / 127.0
            base = f"{tensor}_residual"
            model.graph.initializer.extend([
                numpy_helper.from_array(np.array(scale, np.float32), f"{base}_scale"),
                numpy_helper.from_array(np.array(0, np.int8), f"{base}_zero_point"),
            ])
            q = helper.make_node("QuantizeLinear", [tensor, f"{base}_scale", f"{base}_zero_point"], [f"{base}_q"], name=f"{base}_QuantizeLinear")
            dq = helper.make_node("DequantizeLinear", [f"{base}_q", f"{base}_scale", f"{base}_zero_point"], [f"{base}_dq"], name=f"{base}_DequantizeLinear")
            new_nodes.append((index, [q, dq]))
            dq_of[tensor] = dq.output[0]
            node.input[which] = dq.output[0]
        else:
            continue
        count += 1
    for index, nodes in reversed(new_nodes):  # insert before the Add, keeping topological order
        for offset, n in enumerate(nodes):
            model.graph.node.insert(index + offset, n)
    return count
