"""A thin view over an ONNX graph: producers, consumers, constants, unique names.

Passes copy the model they are given (``copy_model``) and edit the copy; a pass never
mutates its input unless it says so.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


class GraphIndex:
    """Lookups over ``graph``, rebuilt by calling :meth:`refresh` after edits."""

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
            if node.op_type == "Constant":
                self.constant_nodes[node.output[0]] = node
        self.graph_outputs = {o.name for o in g.output}
        self.names = set(self.initializers) | set(self.producer) | {i.name for i in g.input}
        self.names |= {n.name for n in g.node}

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
    """Drop initializers (and their graph-input entries) that no node or output uses."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    unused = {t.name for t in graph.initializer} - used
    keep = [t for t in graph.initializer if t.name not in unused]
    inputs = [i for i in graph.input if i.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    del graph.input[:]
    graph.input.extend(inputs)
