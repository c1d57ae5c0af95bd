"""Precision plans: which nodes run in int8, fp8 (E4M3), fp16 or fp32.

A :class:`PrecisionPlan` is a default precision plus overrides. Each override matches nodes
by one pattern:

* ``name:conv_1`` or a bare name: exactly that node;
* ``glob:/blocks.1/*`` or a bare pattern holding ``*``, ``?`` or ``[``: node names (shell glob);
* ``re:^/blocks\\.1[0-5]/``: node names (Python regex, ``re.search``);
* ``op:Softmax`` or a bare word that is an ONNX op type (``Conv``, ``MatMul``): op type.

Precedence, from strongest to weakest: an exact name, then a glob or regex, then an op
type, then the default. When several overrides of the same strength match one node, the
safer precision wins (fp32 over fp16 over fp8 over int8 over int4w), whatever their order: plans read the
same from a file and from flags.

Resolution (:meth:`PrecisionPlan.resolve`) turns the plan into one :class:`NodePrecision`
per node, with the reason when the node cannot have what was asked:

* int8 and fp8 apply to the ops trtq places Q/DQ pairs on (:data:`quantize.rules.QDQ_RULES`,
  the same placement for both); other nodes asked for them run in fp32 (TensorRT fuses
  most of them into the quantized kernels anyway);
* int4w (weight-only INT4, block-wise) applies to MatMul and Gemm nodes with a constant 2-D
  weight; their activations stay float; other nodes asked for it run in fp32;
* numerically sensitive ops (:data:`SENSITIVE_OPS`: Softmax, normalizations, reductions,
  Exp/Log/Pow/Sqrt, Div...) stay in fp32 when fp16 comes from the default or a pattern;
  naming the node exactly, or its op type, puts it in fp16 anyway;
* a node whose constant weights or calibrated activations exceed the fp16 range (65504)
  stays in fp32; when the node was named exactly, that is an error instead.
"""

from __future__ import annotations

import enum
import fnmatch
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import onnx

from trtq.calibration.table import CalibrationTable
from trtq.quantize.graph import GraphIndex, get_attr
from trtq.quantize.rules import QDQ_RULES, Rule
from trtq.core.errors import QuantizationError
from trtq.core.fileio import atomic_write_text

PLAN_FORMAT = "trtq.precision-plan"
PLAN_VERSION = 1
FP16_MAX = 65504.0

#: Ops kept in fp32 unless the user names them (their fp16 results drift or overflow).
SENSITIVE_OPS = frozenset({
    "Softmax", "LogSoftmax", "LayerNormalization", "BatchNormalization", "InstanceNormalization",
    "GroupNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "ReduceProd",
    "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Div", "Erf", "CumSum", "Einsum",
})
#: Nodes never converted to fp16 (they produce or consume types by attribute, hold
#: subgraphs, or are the int8 machinery itself).
NEVER_FP16 = frozenset({
    "Cast", "CastLike", "Constant", "ConstantOfShape", "Shape", "Size", "Range", "EyeLike",
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
    "QuantizeLinear", "DequantizeLinear", "If", "Loop", "Scan", "NonZero",
})


class Precision(str, enum.Enum):
    INT4W = "int4w"  # weight-only INT4, block-wise scales (MatMul/Gemm weights; see quantize.qdq)
    INT8 = "int8"
    FP8 = "fp8"  # E4M3, scales amax / 448 (see quantize.qdq)
    FP16 = "fp16"
    FP32 = "fp32"

    @classmethod
    def parse(cls, value: "str | Precision") -> "Precision":
        try:
            return cls(str(value.value if isinstance(value, Precision) else value).lower())
        except ValueError:
            raise QuantizationError(f"unknown precision '{value}': use int4w, int8, fp8, fp16 or fp32") from None


_SAFETY = {Precision.INT4W: -1, Precision.INT8: 0, Precision.FP8: 1, Precision.FP16: 2, Precision.FP32: 3}
_STRENGTH = {"name": 3, "glob": 2, "regex": 2, "op": 1}


@dataclass(frozen=True)
class PrecisionRule:
    """One override: nodes matching ``pattern`` (see the module docstring) get ``precision``."""

    pattern: str
    precision: Precision

    @property
    def kind(self) -> str:
        prefix, sep, _ = self.pattern.partition(":")
        if sep and prefix in ("name", "glob", "re", "op"):
            return "regex" if prefix == "re" else prefix
        if any(c in self.pattern for c in "*?["):
            return "glob"
        return "op" if onnx.defs.has(self.pattern) else "name"

    @property
    def value(self) -> str:
        prefix, sep, rest = self.pattern.partition(":")
        return rest if sep and prefix in ("name", "glob", "re", "op") else self.pattern

    def matches(self, node: onnx.NodeProto) -> bool:
        kind, value = self.kind, self.value
        if kind == "name":
            return node.name == value
        if kind == "glob":
            return fnmatch.fnmatchcase(node.name, value)
        if kind == "regex":
            return re.search(value, node.name) is not None
        return node.op_type == value


@dataclass(frozen=True)
class NodePrecision:
    """What one node runs in, which rule decided (``default`` or a pattern), and why if not as asked."""

    node: str
    op_type: str
    precision: Precision
    asked: Precision
    rule: str
    reason: str = ""


@dataclass(frozen=True)
class PrecisionPlan:
    """A default precision plus overrides (see the module docstring for precedence)."""

    default: Precision = Precision.INT8
    overrides: tuple[PrecisionRule, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "default", Precision.parse(self.default))
        rules = tuple(r if isinstance(r, PrecisionRule) else PrecisionRule(*r) for r in self.overrides)
        object.__setattr__(self, "overrides", tuple(PrecisionRule(r.pattern, Precision.parse(r.precision))
                                                    for r in rules))
        for r in self.overrides:
            if r.kind == "regex":
                try:
                    re.compile(r.value)
                except re.error as exc:
                    raise QuantizationError(f"bad regular expression in precision rule '{r.pattern}': {exc}") from exc

    @classmethod
    def from_flags(cls, default: str = "int8", *, int8: Iterable[str] = (), fp16: Iterable[str] = (),
                   fp32: Iterable[str] = (), fp8: Iterable[str] = (), int4w: Iterable[str] = ()) -> "PrecisionPlan":
        """Overrides from comma-separated lists, as ``--int8 'Conv,Gemm' --fp16 '/blocks.1/*'`` give them."""
        rules = []
        for precision, items in ((Precision.INT4W, int4w), (Precision.INT8, int8), (Precision.FP8, fp8),
                                 (Precision.FP16, fp16),
                                 (Precision.FP32, fp32)):
            for item in items:
                rules.extend(PrecisionRule(p.strip(), precision) for p in str(item).split(",") if p.strip())
        return cls(Precision.parse(default), tuple(rules))

    def with_overrides(self, rules: Iterable[PrecisionRule]) -> "PrecisionPlan":
        return PrecisionPlan(self.default, (*self.overrides, *rules))

    # -- persistence -----------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "default": self.default.value,
                "overrides": [{"pattern": r.pattern, "precision": r.precision.value} for r in self.overrides]}

    @classmethod
    def from_json(cls, data: Mapping) -> "PrecisionPlan":
        """A plan from its JSON form, or from the ``precision.json`` ``trtq quantize`` writes
        (its ``plan``: the same plan, searched or given, so the same model comes out).
        Unknown keys are refused with their names: a misspelled key must not be ignored."""
        if not isinstance(data, Mapping):
            raise QuantizationError("a precision plan must be a mapping with 'default' and 'overrides'")
        if "plan" in data and "nodes" in data:  # trtq quantize's precision.json
            _refuse_unknown(data, _REPORT_KEYS, "precision.json")
            return cls.from_json(data["plan"])
        _refuse_unknown(data, _PLAN_KEYS, "a precision plan")
        if data.get("format", PLAN_FORMAT) != PLAN_FORMAT or int(data.get("version", PLAN_VERSION)) > PLAN_VERSION:
            raise QuantizationError(f"not a precision plan this trtq reads (format {data.get('format')!r}, "
                                    f"version {data.get('version')!r})")
        overrides = data.get("overrides") or []
        if isinstance(overrides, Mapping):  # YAML shorthand: {pattern: precision}
            overrides = [{"pattern": k, "precision": v} for k, v in overrides.items()]
        if not isinstance(overrides, (list, tuple)):
            raise QuantizationError(f"'overrides' must be a list (or a pattern: precision mapping), got "
                                    f"{type(overrides).__name__}")
        for i, o in enumerate(overrides):
            _refuse_unknown(o, {"pattern", "precision"}, f"override {i + 1}")
        try:
            rules = tuple(PrecisionRule(str(o["pattern"]), Precision.parse(o["precision"])) for o in overrides)
        except (KeyError, TypeError) as exc:
            raise QuantizationError("each override needs 'pattern' and 'precision'") from exc
        return cls(Precision.parse(data.get("default", "int8")), rules)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PrecisionPlan":
        """Read a plan from JSON or YAML (``.yaml``/``.yml``, needs PyYAML)."""
        path = Path(path)
        if not path.is_file():
            raise QuantizationError(f"precision plan {path} does not exist")
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise QuantizationError("reading a YAML plan needs PyYAML: pip install pyyaml") from None
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise QuantizationError(f"precision plan {path} is not valid YAML: {exc}") from exc
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise QuantizationError(f"precision plan {path} is not valid JSON: {exc}") from exc
        return cls.from_json(data)

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(Path(path), json.dumps(self.to_json(), indent=2) + "\n")

    # -- resolution ------------------------------------------------------------------------
    def unmatched(self, model: onnx.ModelProto) -> list[str]:
        """The override patterns that match no node of ``model`` (a typo, or a name from another export)."""
        nodes = list(model.graph.node)
        return [r.pattern for r in self.overrides if not any(r.matches(n) for n in nodes)]

    def asked(self, node: onnx.NodeProto) -> tuple[Precision, str]:
        """The precision asked for ``node`` and the rule that decided it."""
        best: tuple[int, int] | None = None
        chosen = (self.default, "default")
        for rule in self.overrides:
            if rule.matches(node):
                key = (_STRENGTH[rule.kind], _SAFETY[rule.precision])
                if best is None or key > best:
                    best, chosen = key, (rule.precision, rule.pattern)
        return chosen

    def resolve(self, model: onnx.ModelProto, table: CalibrationTable | None = None,
                rules: Mapping[str, Rule] = QDQ_RULES) -> dict[str, NodePrecision]:
        """One :class:`NodePrecision` per named node (in graph order); ``rules``: the Q/DQ
        rules of the target runtime (which nodes can be int8)."""
        g = GraphIndex(model.graph)
        out: dict[str, NodePrecision] = {}
        refused = []
        for node in model.graph.node:
            if node.op_type in ("Constant", "QuantizeLinear", "DequantizeLinear"):
                continue
            asked, rule = self.asked(node)
            got, reason = asked, ""
            if asked is Precision.INT4W and not int4_weight_node(node, g):
                got, reason = Precision.FP32, "int4w is for MatMul/Gemm nodes with a constant 2-D weight"
            elif asked in (Precision.INT8, Precision.FP8) and not _quantizable(node, g, rules):
                got, reason = Precision.FP32, f"no {asked.value} rule for {node.op_type}"
            elif asked is Precision.FP16:
                kind = "default" if rule == "default" else PrecisionRule(rule, asked).kind
                explicit = kind in ("name", "op")
                if node.op_type in NEVER_FP16:
                    got, reason = Precision.FP32, f"{node.op_type} is never converted to fp16"
                elif node.op_type in SENSITIVE_OPS and not explicit:
                    got, reason = Precision.FP32, f"{node.op_type} is sensitive; name it to force fp16"
                elif (over := fp16_overflow(node, g, table)):
                    if kind == "name":
                        refused.append(f"'{node.name}' ({over})")
                    got, reason = Precision.FP32, over
            out[node.name] = NodePrecision(node.name, node.op_type, got, asked, rule, reason)
        if refused:
            raise QuantizationError(f"cannot put {len(refused)} node(s) in fp16, values exceed its range "
                                    f"(±{FP16_MAX:g}): " + "; ".join(refused[:5]))
        return out


_PLAN_KEYS = frozenset({"format", "version", "default", "overrides"})
_REPORT_KEYS = frozenset({"plan", "summary", "int8_mac_share", "mac_shares", "relative_cost", "nodes", "search"})


def _refuse_unknown(data: Any, known: frozenset | set, what: str) -> None:
    if not isinstance(data, Mapping):
        raise QuantizationError(f"{what} must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise QuantizationError(f"{what} has unknown key{'s' if len(unknown) > 1 else ''} "
                                f"{', '.join(repr(k) for k in unknown)}; the keys are {', '.join(sorted(known))}")


def int4_weight_node(node: onnx.NodeProto, g: GraphIndex) -> bool:
    """A MatMul/Gemm whose weight (input 1) is a constant 2-D float matrix: what int4w applies to."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or g.is_constant(node.input[0]):
        return False
    if node.op_type == "Gemm" and get_attr(node, "transA", 0):
        return False
    w = g.constant(node.input[1])
    return w is not None and w.ndim == 2 and w.dtype == np.float32


def _quantizable(node: onnx.NodeProto, g: GraphIndex, rules: Mapping[str, Rule]) -> bool:
    rule = rules.get(node.op_type)
    return rule is not None and bool(rule(node, g))


def fp16_overflow(node: onnx.NodeProto, g: GraphIndex, table: CalibrationTable | None) -> str:
    """Why ``node`` cannot run in fp16 (a weight or a calibrated activation too large), or ``""``."""
    for name in node.input:
        if not name:
            continue
        value = g.constant(name)
        if value is not None:
            if value.dtype.kind == "f" and value.size and float(np.max(np.abs(value))) > FP16_MAX:
                return f"weight '{name}' reaches {float(np.max(np.abs(value))):.3g}"
        elif table is not None and name in table and table[name].amax > FP16_MAX:
            return f"input '{name}' reaches {table[name].amax:.3g} in calibration"
    for name in node.output:
        if table is not None and name in table and table[name].amax > FP16_MAX:
            return f"output '{name}' reaches {table[name].amax:.3g} in calibration"
    return ""


def plan_summary(resolved: Mapping[str, NodePrecision]) -> dict[str, int]:
    """How many nodes run in each precision."""
    counts = {p.value: 0 for p in Precision}
    for n in resolved.values():
        counts[n.precision.value] += 1
    return counts


def assignments_json(resolved: Mapping[str, NodePrecision]) -> list[dict]:
    return [{"node": n.node, "op_type": n.op_type, "precision": n.precision.value, "asked": n.asked.value,
             "rule": n.rule, **({"reason": n.reason} if n.reason else {})} for n in resolved.values()]


__all__ = ["FP16_MAX", "NodePrecision", "Precision", "PrecisionPlan", "PrecisionRule", "SENSITIVE_OPS",
           "assignments_json", "fp16_overflow", "plan_summary"]
