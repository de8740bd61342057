"""One vocabulary: hook names, positions and model components.

Every analysis builds the TransformerLens hook names it reads or writes through these
functions, so a renamed hook is changed in one place. `Position` is the one option for
"which positions" across interventions, head ablation and path patching, and
[`Component`][arithlens.core.names.Component] names a component — an attention head or a whole MLP layer —
everywhere a result lists components.

Example:
    ```python
    from arithlens.core import names
    names.resid_mid(3)            # 'blocks.3.hook_resid_mid'
    names.Component.parse("17.2")      # Component(layer=17, head=2)
    ```
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

from arithlens.core import validate

# A TransformerLens hook: (hook name, function of (activation, hook)).
Hook = tuple[str, Callable]

Position = Literal["all", "last"]
POSITIONS: tuple[str, ...] = ("all", "last")

FINAL_SCALE = "ln_final.hook_scale"
"""The final norm's scale (RMSNorm / LayerNorm denominator) per position."""


def check_position(value: Any, name: str = "position") -> str:
    """`"all"` or `"last"`."""
    return validate.choice(value, name, POSITIONS)


def resid_pre(layer: int) -> str:
    """Residual stream entering block `layer`."""
    return f"blocks.{layer}.hook_resid_pre"


def resid_mid(layer: int) -> str:
    """Residual stream after block `layer`'s attention (`x + A`), entering its MLP."""
    return f"blocks.{layer}.hook_resid_mid"


def resid_post(layer: int) -> str:
    """Residual stream leaving block `layer`."""
    return f"blocks.{layer}.hook_resid_post"


def attn_out(layer: int) -> str:
    """Block `layer`'s attention output (all heads summed)."""
    return f"blocks.{layer}.hook_attn_out"


def mlp_out(layer: int) -> str:
    """Block `layer`'s MLP output."""
    return f"blocks.{layer}.hook_mlp_out"


def mlp_in(layer: int) -> str:
    """The (normalised) input of block `layer`'s MLP."""
    return f"blocks.{layer}.ln2.hook_normalized"


def z(layer: int) -> str:
    """Per-head attention output [`z`][arithlens.core.names.z] of block `layer`, `[batch, pos, head, d_head]`."""
    return f"blocks.{layer}.attn.hook_z"


def pattern(layer: int) -> str:
    """Attention pattern of block `layer`, `[batch, head, query, key]`."""
    return f"blocks.{layer}.attn.hook_pattern"


def post(layer: int) -> str:
    """FFN coefficient scores `m_k` of block `layer` (`mlp.hook_post`)."""
    return f"blocks.{layer}.mlp.hook_post"


def ln1_scale(layer: int) -> str:
    """Scale of block `layer`'s pre-attention norm."""
    return f"blocks.{layer}.ln1.hook_scale"


def ln2_scale(layer: int) -> str:
    """Scale of block `layer`'s pre-MLP norm."""
    return f"blocks.{layer}.ln2.hook_scale"


def attn_post_scale(layer: int) -> str:
    """Scale of block `layer`'s post-attention norm (Gemma 2/3, OLMo 2: the attention output is normalised before it is added)."""
    return f"blocks.{layer}.ln1_post.hook_scale"


def mlp_post_scale(layer: int) -> str:
    """Scale of block `layer`'s post-MLP norm (Gemma 2/3, OLMo 2)."""
    return f"blocks.{layer}.ln2_post.hook_scale"


def layer_of(hook_name: str) -> int:
    """The block index in a `blocks.L.…` hook name."""
    parts = hook_name.split(".")
    if len(parts) < 2 or parts[0] != "blocks" or not parts[1].isdigit():
        raise ValueError(f"{hook_name!r} is not a per-block hook name")
    return int(parts[1])


@functools.total_ordering
@dataclass(frozen=True)
class Component:
    """A model component: attention head `layer.head`, or the MLP of `layer` (`head=None`).

    Attributes:
        layer: Block index.
        head: Query-head index, or `None` for the block's MLP.
    """

    layer: int
    head: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer", validate.non_negative_int(self.layer, "layer"))
        if self.head is not None:
            object.__setattr__(self, "head", validate.non_negative_int(self.head, "head"))

    @property
    def is_mlp(self) -> bool:
        """Whether this is a whole MLP layer rather than a head."""
        return self.head is None

    @property
    def kind(self) -> str:
        """`"head"` or `"mlp"`."""
        return "mlp" if self.head is None else "head"

    @property
    def name(self) -> str:
        """`"L.H"` for a head, `"MLP L"` for an MLP (the label tables and plots show)."""
        return f"MLP {self.layer}" if self.head is None else f"{self.layer}.{self.head}"

    def __str__(self) -> str:
        return self.name

    def _key(self) -> tuple[int, int, int]:
        # Within a layer its heads come first, then its MLP (the order of computation).
        return (self.layer, 1 if self.head is None else 0, -1 if self.head is None else self.head)

    def __lt__(self, other: "Component") -> bool:
        if not isinstance(other, Component):
            return NotImplemented
        return self._key() < other._key()

    def check(self, model: Any) -> "Component":
        """Raise `ValueError` unless this component exists in `model`."""
        validate.integer(self.layer, "layer", low=0, high=model.n_layers - 1)
        if self.head is not None:
            validate.integer(self.head, "head", low=0, high=model.n_heads - 1)
        return self

    @classmethod
    def parse(cls, value: Any) -> "Component":
        """A [`Component`][arithlens.core.names.Component], `"L.H"`, `"mlpL"` / `"MLP L"` / `"L.mlp"`, a `(layer, head)` pair, `(layer, None)` or `(layer, "mlp")`."""
        if isinstance(value, Component):
            return value
        if isinstance(value, str):
            text = value.strip()
            low = text.lower().replace(" ", "")
            if low.startswith("mlp") and low[3:].isdigit():
                return cls(int(low[3:]))
            if low.endswith(".mlp") and low[:-4].isdigit():
                return cls(int(low[:-4]))
            parts = text.split(".")
            if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
                return cls(int(parts[0]), int(parts[1]))
            raise ValueError(f"component {value!r} is not of the form 'LAYER.HEAD' (e.g. '17.2') or 'MLP LAYER'")
        if isinstance(value, (tuple, list)) and len(value) == 2:
            layer, head = value
            if isinstance(head, str) and head.lower() == "mlp":
                head = None
            return cls(validate.integer(layer, "layer"), None if head is None else validate.integer(head, "head"))
        raise ValueError(f"component {value!r} must be a Component, 'LAYER.HEAD', 'MLP LAYER' or a (layer, head) pair")


def parse_head(value: Any, name: str = "head") -> Component:
    """An attention head from anything [`Component.parse`][arithlens.core.names.Component.parse] takes: `ValueError` for an MLP."""
    component = Component.parse(value)
    if component.is_mlp:
        raise ValueError(f"{name}={value!r} names an MLP, not a head: give an attention head as (layer, head) or 'L.H'")
    return component


def as_component(value: Any) -> Component:
    """A `Component` from anything `Component.parse` accepts, or the old `(layer, "mlp")` pair."""
    if isinstance(value, (tuple, list)) and len(value) == 2 and isinstance(value[1], str) and value[1].lower() == "mlp":
        return Component(value[0])
    return Component.parse(value)


def parse_components(values: Any, name: str, *, heads_only: bool = False) -> list[Component]:
    """Validate a non-empty list of distinct components (no model needed)."""
    if isinstance(values, (str, Component)) or not isinstance(values, Sequence):
        raise ValueError(f"{name}={values!r} must be a list of components, e.g. [Component(17, 2), Component(20)] or ['17.2', 'MLP 20']")
    nodes = [as_component(v) for v in values]
    if not nodes:
        raise ValueError(f"{name} is empty: give at least one component")
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"{name} has repeated components: {[n.name for n in nodes]}")
    if heads_only and any(n.is_mlp for n in nodes):
        raise ValueError(f"{name} must be attention heads, got {[n.name for n in nodes if n.is_mlp]}")
    return nodes


def all_components(model: Any) -> list[Component]:
    """Every head and every MLP of `model`, in layer order (heads, then the MLP)."""
    return [Component(L, h) for L in range(model.n_layers) for h in [*range(model.n_heads), None]]


def top_components(patching: Any, k: int, *, heads_only: bool = False) -> list[Component]:
    """The `k` strongest nodes (largest |effect|) of a path-patching result, heads only if asked."""
    return [as_component(n) for n in patching.top_components(k, kind="head" if heads_only else None)]
