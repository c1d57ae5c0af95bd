"""A thin view over an ONNX graph: producers, consumers, constants, unique names.

Passes copy the model they are given (``copy_model``) and edit the copy; a pass never
mutates its input unless it says so.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held by ``node``'s attributes (``If`` branches, ``Loop``/``Scan`` bodies)."""
    out = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            out.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            out.extend(attr.graphs)
    return out


def outer_reads(node: onnx.NodeProto) -> set[str]:
    """Names ``node``'s subgraphs (at any depth) read from the enclosing scopes."""
    reads: set[str] = set()
    for graph in subgraphs(node):
        local = {t.name for t in graph.initializer} | {i.name for i in graph.input}
        for inner in graph.node:
            reads |= {i for i in inner.input if i and i not in local}
            reads |= {i for i in outer_reads(inner) if i not in local}
            local |= set(inner.output)
        reads |= {o.name for o in graph.output if o.name not in local}
    return reads


def rename_outer_reads(node: onnx.NodeProto, mapping: dict[str, str]) -> None:
    """Make ``node``'s subgraphs read ``mapping[name]`` wherever they read the outer tensor ``name``
    (a name a subgraph defines itself shadows the outer one and is left alone)."""
    for graph in subgraphs(node):
        local = {t.name for t in graph.initializer} | {i.name for i in graph.input}
        for inner in graph.node:
            for i, name in enumerate(inner.input):
                if name in mapping and name not in local:
                    inner.input[i] = mapping[name]
            rename_outer_reads(inner, {k: v for k, v in mapping.items() if k not in local})
            local |= set(inner.output)
        for out in graph.output:
            if out.name in mapping and out.name not in local:
                raise ValueError(f"subgraph output {out.name} is an outer tensor; cannot rename it")


def all_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name in ``graph`` and its subgraphs (new names must avoid them all)."""
    names = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {o.name for o in graph.output}
    for node in graph.node:
        names |= set(node.output) | {node.name}
        for sub in subgraphs(node):
            names |= all_names(sub)
    return names


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


class GraphIndex:
    """Lookups over ``graph``, rebuilt by calling :meth:`refresh` after edits.

    A node whose subgraphs read an outer tensor counts among that tensor's consumers, so no
    transform treats the tensor as unused or as feeding only the nodes it rewrites.
    """

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.refresh()

    def refresh(self) -> None:
        g = self.graph
        self.initializers = {t.name: t for t in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        self.constant_nodes: dict[str, onnx.NodeProto] = {}
        for node in g.node:
            for o in node.output:
                self.producer[o] = node
            for i in node.input:
                if i:
                    self.consumers[i].append(node)
            for i in outer_reads(node) - set(node.input):
                self.consumers[i].append(node)
            if node.op_type == "Constant":
                self.constant_nodes[node.output[0]] = node
        self.graph_outputs = {o.name for o in g.output}
        self.names = all_names(g)

    def is_constant(self, name: str) -> bool:
        return name in self.initializers or name in self.constant_nodes

    def constant(self, name: str) -> np.ndarray | None:
        """The value of an initializer or Constant-node output, else ``None``."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.constant_nodes.get(name)
        if node is not None:
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
        return None

    def unique(self, base: str) -> str:
        """A name not used yet by any tensor or node; reserves it."""
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        name = self.unique(base)
        tensor = numpy_helper.from_array(np.asarray(value), name)
        self.graph.initializer.append(tensor)
        self.initializers[name] = tensor
        return name


def get_attr(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def insert_before(graph: onnx.GraphProto, new_nodes: dict[int, list[onnx.NodeProto]]) -> None:
    """Place each list of new nodes right before the node at that index (its first consumer)."""
    nodes = []
    for index, node in enumerate(graph.node):
        nodes.extend(new_nodes.get(index, []))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def remove_unused_initializers(graph: onnx.GraphProto) -> None:
    """Drop initializers (and their graph-input entries) that no node, subgraph or output uses."""
    used = {i for n in graph.node for i in (*n.input, *outer_reads(n))} | {o.name for o in graph.output}
    unused = {t.name for t in graph.initializer} - used
    keep = [t for t in graph.initializer if t.name not in unused]
    inputs = [i for i in graph.input if i.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    del graph.input[:]
    graph.input.extend(inputs)


def truncated(model: onnx.ModelProto, outputs: list[str]) -> onnx.ModelProto:
    """The model cut down to the nodes ``outputs`` depend on, with ``outputs`` as its outputs."""
    producer = {o: n for n in model.graph.node for o in n.output}
    needed, stack = set(), list(outputs)
    while stack:
        node = producer.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(i for i in (*node.input, *outer_reads(node)) if i)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    keep = [n for n, original in zip(g.node, model.graph.node) if id(original) in needed]
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in keep for i in (*n.input, *outer_reads(n))}
    inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.output[:]
    g.output.extend(onnx.ValueInfoProto(name=o) for o in outputs)
    return out


def float_session(model: onnx.ModelProto, outputs: list[str]):
    """An ONNX Runtime session computing ``outputs`` of ``model`` (truncated to what they need),
    with any Q/DQ executed in float."""
    from trtq.core.errors import require
    from trtq.core.runtime import ort_session

    ort = require("onnxruntime", "cpu")
    exposed = truncated(model, outputs)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.disable_quant_qdq", "1")  # Q/DQ in float: TensorRT's math
    return ort_session(exposed, opts)
