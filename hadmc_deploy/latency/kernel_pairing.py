"""Which profiled kernel ran which layer: ONNX Runtime's weighted kernels paired with the source
graph's weighted nodes, by the names ORT keeps for them first, then by kind and kernel size.

Why its own module: the pairing decides whose time each layer gets in the context fit and in the
mixed variant's choice (latency/ort_profile.py reads the profile; this says who ran what), and the
order ORT runs kernels in is not the source's (see `pair_kernels`).
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx


def _resolve_wildcards(left: list[tuple], right: list[tuple]) -> list[tuple]:
    """Right-hand keys with the kernel size filled in where elimination allows: when the
    left-hand keys of a kind that no specific right-hand key accounts for are all one key,
    every wildcard of that kind is that key (quantized kernels do not report their size)."""
    from collections import Counter

    keys = [k for _, k in right]
    for kind in {k[:1] for k in keys if len(k) == 1}:
        rest = Counter(k for _, k in left if k[:1] == kind and len(k) > 1)
        rest.subtract(Counter(k for k in keys if k[:1] == kind and len(k) > 1))
        remaining = {k for k, n in rest.items() if n > 0}
        if len(remaining) == 1:
            full = remaining.pop()
            keys = [full if k == kind else k for k in keys]
    return [(item, k) for (item, _), k in zip(right, keys, strict=True)]


def _compatible(a: tuple, b: tuple) -> bool:
    """Same kind, and the same kernel size where both know it."""
    return a[:1] == b[:1] and (len(a) == 1 or len(b) == 1 or a == b)


def match_by_key(left: list[tuple], right: list[tuple]) -> list[tuple[int, int]] | None:
    """Pairs (i, j): the k-th item of a key in `left` with the k-th of that key in `right`
    (items are (anything, key); unknown kernel sizes resolved by elimination, else matched in
    order within their kind); None when they cannot all pair up."""
    right = _resolve_wildcards(left, right)
    used = [False] * len(right)
    pairs = []
    for i, (_, key) in enumerate(left):
        j = next((j for j, (_, k) in enumerate(right) if not used[j] and k == key), None)
        if j is None:
            j = next((j for j, (_, k) in enumerate(right) if not used[j] and _compatible(key, k)), None)
        if j is None:
            return None
        used[j] = True
        pairs.append((i, j))
    return pairs if len(pairs) == len(right) else None


#: ops a fused kernel's output may pass through after its weighted node (ORT fuses activations,
#: residual adds and folded batch norms into the conv, and the kernel takes the last one's output name)
FUSABLE_AFTER_WEIGHTS = frozenset({
    "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Softplus",
    "Mul", "Add", "Sum", "BatchNormalization", "Identity",
})
#: how ONNX Runtime's NCHWc transformer names a conv it rewrites: after its output tensor
NCHWC_SUFFIX = "_nchwc"
#: producer steps walked back from a kernel's output tensor at most
MAX_FUSION_DEPTH = 6


def named_after(kernel: str, nodes: Sequence[str]) -> int | None:
    """Index of the source node a kernel is named after: its own name, or ORT's name for a node it
    made from it (`<source name>_token_<n>`, e.g. the QLinearConv that replaces a QDQ Conv)."""
    best = None
    for i, node in enumerate(nodes):
        if node and (kernel == node or kernel.startswith(node + "_token_")) and (best is None or len(node) > len(nodes[best])):
            best = i
    return best


def producing_nodes(producer: dict[str, onnx.NodeProto], tensor: str, weighted: dict[str, int]) -> set[int]:
    """The weighted nodes (indices in `weighted`, by node name) nearest upstream of `tensor` through
    ops ORT fuses after a conv (`FUSABLE_AFTER_WEIGHTS`; `producer`: tensor -> the node writing it):
    what computes a fused kernel's output. A residual add with a shortcut conv gives two; the
    caller's keys tell them apart."""
    frontier, seen = [tensor], set()
    for _ in range(MAX_FUSION_DEPTH):
        found, upstream = set(), []
        for t in frontier:
            node = producer.get(t)
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if node.name in weighted:
                found.add(weighted[node.name])
            elif node.op_type in FUSABLE_AFTER_WEIGHTS:
                upstream += [i for i in node.input if i]
        if found:
            return found
        frontier = upstream
    return set()


def pair_kernels(nodes: list[tuple], kernel_names: list[str], kernels: list[tuple], graph: onnx.GraphProto | None = None) -> list[tuple[int, int]] | None:
    """Pairs (node index, kernel index): by name where it names one source node, then the rest by
    key in order (`match_by_key`); None when they cannot all pair up. A kernel names a node by its
    own name or `<node>_token_<n>` (ORT's QLinearConv made from a QDQ Conv), or, given the source
    `graph`, by the tensor it writes (an NCHWc conv is `<output tensor>_nchwc`), traced back to the
    nearest weighted node of a matching key.

    Why names first: keys alone pair kernels of one key in execution order, which is not the
    source's. Quantized kernels report no kernel size, and ORT runs a ResNet block's 1x1 shortcut
    after its 3x3 path: every INT8 layer after the first shortcut took a neighbour's time (the demo
    CNN's INT8 plans priced the shortcut of layer 3 with its 3x3 conv's cost; 13-17% off on narrow
    plans at batch 32). In an Inception-like block ORT ran the FP32 branches in another order than
    the source too, and a 3x3 conv of 8 -> 16 channels took a 48 -> 64 one's time."""
    names = [n for n, _ in nodes]
    weighted = {n: i for i, n in enumerate(names) if n}
    producer = {out: node for node in graph.node for out in node.output} if graph is not None else {}
    by_name: dict[int, int] = {}
    for j, kernel in enumerate(kernel_names):
        direct = named_after(kernel, names)
        candidates = {direct} if direct is not None else set()
        if not candidates and producer:
            candidates = producing_nodes(producer, kernel.removesuffix(NCHWC_SUFFIX), weighted)
        candidates = {i for i in candidates if _compatible(nodes[i][1], kernels[j][1]) and i not in by_name.values()}
        if len(candidates) == 1:
            by_name[j] = candidates.pop()
    rest_nodes = [i for i in range(len(nodes)) if i not in by_name.values()]
    rest_kernels = [j for j in range(len(kernels)) if j not in by_name]
    rest = match_by_key([nodes[i] for i in rest_nodes], [kernels[j] for j in rest_kernels])
    if rest is None:
        return None
    pairs = [(i, j) for j, i in by_name.items()] + [(rest_nodes[a], rest_kernels[b]) for a, b in rest]
    return sorted(pairs)
