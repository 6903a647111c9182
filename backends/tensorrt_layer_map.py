"""TensorRT engine layer names -> the ONNX nodes they came from; per-layer times -> per-weighted-node times.

Why by name: an engine built with ProfilingVerbosity.DETAILED names each layer after the
ONNX nodes TensorRT fused into it, and that name is all the per-layer profiler reports:

    /conv1/Conv + /relu/Relu                          conv fused with its activation
    /l1/conv2/Conv + /l1/Add + /l1/relu/Relu          conv + residual add + relu
    PWN(PWN(/act/Sigmoid), /act/Mul)                  a pointwise fusion (no weights)
    conv.weight + /q/QuantizeLinear_quantize_scale_node + /conv/Conv    INT8 (8.x style)
    Reformatting CopyNode for Input Tensor 0 to /conv/Conv + /relu/Relu
    {ForeignNode[/conv1/Conv.../fc/Gemm]}             a Myelin subgraph: its first and last node

A name is read as the set of ONNX nodes it mentions (node names, `node_of_<output>` for
unnamed nodes, tensor names, `_clone_N` / `_(de)quantize_scale_node` suffixes dropped, a
ForeignNode as every node from its first to its last in graph order). A layer holding
weighted nodes (Conv, ConvTranspose, Gemm, constant-weight MatMul, exactly as
`latency.ort_profile.source_weighted_nodes` names them, so both backends key one set of
names) has its time split between them, equally or by a caller's `share`. A layer holding
none (reformat, Q/DQ, pooling, an unfused add) is glue, as in `ort_profile.layer_times`:
it goes to the nearest weighted node(s) by graph distance, those it feeds on a tie (a Q
feeds its conv; a residual Q sits next to the conv it quantizes). Q/DQ nodes count no
distance, so the float and the QDQ graph of one model place glue alike. Names that resolve to no ONNX node (TensorRT's "(Unnamed Layer* 3) [Shuffle]", Myelin
kernels, an engine built with verbosity NONE, whose layers are numbers) are totalled apart
as unattributed: never guessed, never an error.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from hadmc_deploy.latency.ort_profile import SOURCE_WEIGHTED, source_weighted_nodes

_REFORMAT = re.compile(r"^Reformatting CopyNode for (?:Input|Output) Tensor \d+ to ")
_FOREIGN = re.compile(r"\{ForeignNode\[(.*?)\]\}")
_SUFFIXES = re.compile(r"(?:_clone_\d+|_quantize_scale_node|_dequantize_scale_node)+$")
#: TensorRT 8.x lowers Gemm to a fully connected layer between shuffles named after it.
_PREFIXES = re.compile(r"^reshape_(?:before|after)_")
#: ops that cost no distance when glue looks for its weighted node.
_FREE_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
_SPLIT = re.compile(r" \+ |[(),]")


@dataclass
class LayerAttribution:
    """Where each profiled layer's time went."""

    #: weighted ONNX node -> ms (its layers plus its share of glue), in graph order.
    node_ms: dict[str, float]
    #: time of layers whose names resolve to no ONNX node, and those layers.
    unattributed_ms: float = 0.0
    unattributed_layers: list[str] = field(default_factory=list)
    #: layers whose time was divided between several weighted nodes (approximate: Myelin subgraphs, shared glue).
    split_layers: dict[str, list[str]] = field(default_factory=dict)
    #: weighted nodes no layer name mentions (fused away, or names lost): their node_ms holds glue only, if any.
    missing_nodes: list[str] = field(default_factory=list)

    @property
    def total_ms(self) -> float:
        return sum(self.node_ms.values()) + self.unattributed_ms


class _Graph:
    """Name lookups and producer/consumer edges of one ONNX graph."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.nodes = list(model.graph.node)
        names = [name for name, _ in source_weighted_nodes(model)]
        self.weighted: dict[int, str] = {}
        for i, n in enumerate(self.nodes):  # the k-th weighted node carries the k-th source name
            k = len(self.weighted)
            if k < len(names) and n.op_type in SOURCE_WEIGHTED and (n.name or f"{n.op_type}_{k}") == names[k]:
                self.weighted[i] = names[k]
        self.by_name: dict[str, int] = {}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for alias in (n.name, f"node_of_{n.output[0]}" if n.output else ""):
                if alias:
                    self.by_name.setdefault(alias, i)
            for t in n.output:
                self.producer[t] = i
            for t in n.input:
                if t:
                    self.consumers.setdefault(t, []).append(i)

    def resolve(self, token: str) -> set[int]:
        """Nodes one name stands for: a node, a tensor's producer, or an initializer's consumers."""
        for name in (token, _PREFIXES.sub("", _SUFFIXES.sub("", token))):
            if not name:
                continue
            if name in self.by_name:
                return {self.by_name[name]}
            if name in self.producer:
                return {self.producer[name]}
            if name in self.consumers:
                return set(self.consumers[name])
        return set()

    def nodes_of(self, layer: str) -> set[int]:
        found: set[int] = set()
        if layer.strip().isdigit():
            return found  # verbosity NONE: a layer index, even where some tensor happens to be named "12"
        rest = _REFORMAT.sub("", layer.strip())
        whole = self.resolve(rest)  # a plain single name, even one holding separators
        if whole:
            return whole

        def foreign(m: re.Match[str]) -> str:
            ends = sorted(set().union(*(self.resolve(e.strip()) for e in m.group(1).split("..."))))
            if ends:
                found.update(range(ends[0], ends[-1] + 1))
            return " + "

        rest = _FOREIGN.sub(foreign, rest)
        for token in _SPLIT.split(rest):
            found |= self.resolve(token.strip())
        return found

    def _nearest(self, start: set[int], forward: bool) -> tuple[float, list[int]]:
        """(distance, the weighted nodes first reached from `start` downstream or upstream)."""
        dist = dict.fromkeys(start, 0)
        heap = [(0, i) for i in sorted(start)]
        best, hits = float("inf"), []
        while heap:
            d, i = heapq.heappop(heap)
            if d > dist[i]:
                continue  # a stale entry: a shorter path reached i since
            if d > best:
                break
            if i in self.weighted and i not in start:
                best = d
                hits.append(i)
                continue  # a weighted node ends its path: glue goes to the first one on it
            n = self.nodes[i]
            if forward:
                step = [j for t in n.output for j in self.consumers.get(t, ())]
            else:
                step = [self.producer[t] for t in n.input if t in self.producer]
            for j in step:
                nd = d + (0 if self.nodes[j].op_type in _FREE_OPS else 1)
                if nd < dist.get(j, nd + 1):
                    dist[j] = nd
                    heapq.heappush(heap, (nd, j))
        return best, sorted(set(hits))

    def targets(self, nodes: set[int]) -> tuple[list[int], bool]:
        """(weighted nodes that get the layer's time, whether the layer names them itself)."""
        own = sorted(i for i in nodes if i in self.weighted)
        if own:
            return own, True
        down_d, down = self._nearest(nodes, True)
        up_d, up = self._nearest(nodes, False)
        return (down if down and down_d <= up_d else up), False


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)


def attribute_layers(
    layer_ms: Mapping[str, float],
    onnx_model: onnx.ModelProto | str | Path,
    share: Mapping[str, float] | None = None,
) -> LayerAttribution:
    """Distribute TensorRT per-layer ms over the weighted nodes of the ONNX graph TensorRT parsed.

    `share`: optional weighted-node name -> relative cost (e.g. MACs) used to divide a layer
    holding several weighted nodes; without it (or when it lacks one of them) they share equally.
    """
    graph = _Graph(_load(onnx_model))
    out = LayerAttribution({})
    acc: dict[str, float] = {}
    named: set[str] = set()
    for layer, ms in layer_ms.items():
        nodes = graph.nodes_of(str(layer))
        targets, own = graph.targets(nodes) if nodes else ([], False)
        if not targets:
            out.unattributed_ms += float(ms)
            out.unattributed_layers.append(str(layer))
            continue
        names = [graph.weighted[i] for i in targets]
        if own:
            named.update(names)
        weights = [float(share.get(n, 0.0)) for n in names] if share else []
        if not weights or min(weights) <= 0:
            weights = [1.0] * len(names)
        for name, w in zip(names, weights, strict=True):
            acc[name] = acc.get(name, 0.0) + float(ms) * w / sum(weights)
        if len(names) > 1:
            out.split_layers[str(layer)] = names
    order = list(graph.weighted.values())
    out.node_ms = {n: acc[n] for n in order if n in acc}
    out.missing_nodes = [n for n in order if n not in named]
    return out


def onnx_node_times(layer_ms: Mapping[str, float], onnx_model: onnx.ModelProto | str | Path) -> dict[str, float]:
    """Weighted ONNX node name -> ms; `attribute_layers` also returns the unattributed rest."""
    return attribute_layers(layer_ms, onnx_model).node_ms
