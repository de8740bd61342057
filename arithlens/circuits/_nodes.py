"""Node lists shared by knockout, END attention and precise SFT (internal).

Every component is a [`Node`][arithlens.names.Node]: `Node(layer, head)` for an attention
head, `Node(layer)` for a whole MLP layer.
"""

from __future__ import annotations

from typing import Any, Sequence

from arithlens.names import Node


def as_node(value: Any) -> Node:
    """A `Node` from anything `Node.parse` accepts, or the old `(layer, "mlp")` pair."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[1], str) and value[1].lower() == "mlp":
        return Node(value[0])
    return Node.parse(value)


def parse_nodes(values: Any, name: str, *, heads_only: bool = False) -> list[Node]:
    """Validate a non-empty list of distinct components (no model needed)."""
    if isinstance(values, (str, Node)) or not isinstance(values, Sequence):
        raise ValueError(f"{name}={values!r} must be a list of components, e.g. [Node(17, 2), Node(20)] or ['17.2', 'MLP 20']")
    nodes = [as_node(v) for v in values]
    if not nodes:
        raise ValueError(f"{name} is empty: give at least one component")
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"{name} has repeated components: {[n.name for n in nodes]}")
    if heads_only and any(n.is_mlp for n in nodes):
        raise ValueError(f"{name} must be attention heads, got {[n.name for n in nodes if n.is_mlp]}")
    return nodes


def all_nodes(model: Any) -> list[Node]:
    """Every head and every MLP of `model`, in layer order (heads, then the MLP)."""
    return [Node(L, h) for L in range(model.n_layers) for h in [*range(model.n_heads), None]]


def top_nodes(patching: Any, k: int, *, heads_only: bool = False) -> list[Node]:
    """The `k` strongest nodes (largest |effect|) of a path-patching result, heads only if asked."""
    return [as_node(n) for n in patching.top_nodes(k, kind="head" if heads_only else None)]
