"""Small `ModelProto -> ModelProto` checks and passes used after export (onnx-simplifier's shape).

The simplifiers (onnxslim, onnxsim) already fold Conv+BatchNormalization and
constants; these helpers only *check* what export promised (BN folded, a single
file, stable names) and fold Conv+BN themselves when simplification is off or
failed, so a `--no-simplify` export still has no BatchNormalization after a Conv.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import numpy_helper


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def _consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def conv_bn_pairs(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(Conv, BatchNormalization) pairs where the BN reads the Conv's output: foldable, so never deployed."""
    producer = {out: node for node in model.graph.node for out in node.output}
    pairs = []
    for node in model.graph.node:
        if node.op_type == "BatchNormalization" and node.input and node.input[0] in producer:
            prev = producer[node.input[0]]
            if prev.op_type == "Conv":
                pairs.append((prev, node))
    return pairs


def fold_conv_bn(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Fold inference-mode BatchNormalization into the Conv before it; returns (model, pairs folded).

    Only pairs whose weights are initializers and whose Conv output feeds the BN
    alone are folded (anything else would change another consumer's input).
    W' = W * g / sqrt(v + eps) per output channel; b' = (b - m) * g / sqrt(v + eps) + beta.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {init.name: init for init in model.graph.initializer}
    users = _consumers(model)
    graph_outputs = {out.name for out in model.graph.output}
    folded = 0
    remove: list[onnx.NodeProto] = []
    for conv, bn in conv_bn_pairs(model):
        conv_out = conv.output[0]
        if len(users.get(conv_out, [])) != 1 or conv_out in graph_outputs:
            continue
        names = [conv.input[1], *bn.input[1:5]]
        if len(conv.input) > 2 and conv.input[2]:
            names.append(conv.input[2])
        if not all(name in inits for name in names):
            continue
        eps = next((attr.f for attr in bn.attribute if attr.name == "epsilon"), 1e-5)
        weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
        bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 and conv.input[2] else np.zeros_like(mean)
        factor = gamma / np.sqrt(var + eps)
        new_w = (weight * factor.reshape(-1, *([1] * (weight.ndim - 1)))).astype(np.float32)
        new_b = ((bias - mean) * factor + beta).astype(np.float32)
        w_name, b_name = f"{conv.name or conv_out}_bnfold_w", f"{conv.name or conv_out}_bnfold_b"
        model.graph.initializer.extend([numpy_helper.from_array(new_w, w_name), numpy_helper.from_array(new_b, b_name)])
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = bn.output[0]
        remove.append(bn)
        folded += 1
    for node in remove:
        model.graph.node.remove(node)
    if folded:
        _drop_unused_initializers(model)
    return model, folded


def bias_for_add_fusion(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A zero bias on every bias-less Conv whose output feeds one Add alone; returns (model, biases
    added), the model a copy when any was added, else the one given.

    Why: ONNX Runtime's CPU fusion of Conv + Add (+ activation) into one FusedConv
    (`ConvAddActivationFusion`) skips a Conv without a bias, and the dynamo exporter's optimizer drops
    a bias that is all zeros (a BatchNormalization folded from its initial statistics), as does a
    `bias=False` conv with no norm after it (a pre-activation residual block). The NCHWc path fuses
    either way; off it (channel counts off the blocked width, a CPU without it) a random-weight
    ResNet-18's off-grid plan at 224 ran 41 kernels instead of 25. The outputs are unchanged.
    """
    inits = {init.name: init for init in model.graph.initializer}
    users = _consumers(model)
    graph_outputs = {out.name for out in model.graph.output}

    def needs_bias(conv: onnx.NodeProto) -> bool:
        if conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx") or (len(conv.input) > 2 and conv.input[2]):
            return False
        consumers = users.get(conv.output[0], [])
        return len(conv.input) > 1 and conv.input[1] in inits and conv.output[0] not in graph_outputs and len(consumers) == 1 and consumers[0].op_type == "Add"

    todo = [i for i, node in enumerate(model.graph.node) if needs_bias(node)]
    if not todo:  # a trained model's folded BatchNorms left a bias everywhere: no copy of its weights
        return model, 0
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {init.name: init for init in model.graph.initializer}
    taken = set(inits) | {name for node in model.graph.node for name in [*node.input, *node.output]}
    added = 0
    for index in todo:
        conv = model.graph.node[index]
        weight = inits[conv.input[1]]
        name, k = f"{conv.name or conv.output[0]}_zero_bias", 0
        while name in taken:
            k += 1
            name = f"{conv.name or conv.output[0]}_zero_bias_{k}"
        taken.add(name)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(weight.data_type)
        model.graph.initializer.append(numpy_helper.from_array(np.zeros(weight.dims[0], dtype), name))
        if len(conv.input) == 2:
            conv.input.append(name)
        else:
            conv.input[2] = name
        added += 1
    return model, added


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input} | {out.name for out in model.graph.output}
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)


def rename_value(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename a tensor everywhere (graph I/O, node inputs/outputs, value_info)."""
    if old == new:
        return
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        if value.name == old:
            value.name = new


def io_shapes(model: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    """[{name, shape (ints or dim names), dtype}] for graph inputs (not initializers) and outputs."""
    inits = {init.name for init in model.graph.initializer}

    def describe(value: onnx.ValueInfoProto) -> dict:
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
        return {"name": value.name, "shape": dims, "dtype": dtype}

    inputs = [describe(v) for v in model.graph.input if v.name not in inits]
    return inputs, [describe(v) for v in model.graph.output]


def pooling_as_reduce_mean(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """GlobalAveragePool as ReduceMean over the spatial axes (keepdims), and a Flatten(axis=1) of
    its output as a Reshape to (N, -1): how the dynamo exporter writes adaptive average pooling to
    1x1, so a TorchScript export of the same model builds to the kernels that deploy (in INT8 a
    GlobalAveragePool stays quantized in ONNX Runtime, a ReduceMean runs in float between a DQ and
    a Q). Returns (model, pools rewritten); the opset must take ReduceMean's axes as an input (>= 18)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 18:
        return model, 0
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*inferred.graph.value_info, *inferred.graph.input] if v.type.tensor_type.HasField("shape")}
    # 2-D pooling only: the spatial axes of an (N, C, H, W) tensor are its last two
    pools = [n for n in model.graph.node if n.op_type == "GlobalAveragePool" and ranks.get(n.input[0]) == 4]
    if not pools:
        return model, 0
    users = _consumers(model)
    taken = {init.name for init in model.graph.initializer} | {out for n in model.graph.node for out in n.output}

    def constant(stem: str, values: list[int]) -> str:
        name, i = stem, 0
        while name in taken:
            i += 1
            name = f"{stem}_{i}"
        taken.add(name)
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    rewritten = 0
    for pool in pools:
        axes = constant("pooling_as_reduce_mean_axes", [-1, -2])
        index = list(model.graph.node).index(pool)
        mean = onnx.helper.make_node("ReduceMean", [pool.input[0], axes], list(pool.output), name=pool.name, keepdims=1)
        model.graph.node.remove(pool)
        model.graph.node.insert(index, mean)
        rewritten += 1
        for user in users.get(pool.output[0], []):
            axis = next((onnx.helper.get_attribute_value(a) for a in user.attribute if a.name == "axis"), 1)
            if user.op_type != "Flatten" or axis != 1:
                continue
            at = list(model.graph.node).index(user)
            reshape = onnx.helper.make_node("Reshape", [user.input[0], constant("pooling_as_reduce_mean_shape", [0, -1])], list(user.output), name=user.name)
            model.graph.node.remove(user)
            model.graph.node.insert(at, reshape)
    return model, rewritten
