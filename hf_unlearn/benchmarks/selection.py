"""`metric_for_best_model` over benchmark metrics: which way each metric is better, and combinations of them.

A selection is one metric name (``forget_quality``) or a small arithmetic expression over metric names and numbers:
``mean(forget_quality, model_utility)``, ``model_utility - forget_prob``, ``0.7 * model_utility + 0.3 *
forget_truth_ratio``, ``abs(privleak)``. Functions: ``mean``, ``hmean`` (harmonic mean, as TOFU's model utility),
``min``, ``max``, ``abs``. It is parsed by a recursive-descent parser (never ``eval``) when the config is built, so
an unknown name or a combination without a direction fails before any weight is loaded.

The direction (``greater_is_better``) follows from the metrics: each metric is better higher (``forget_quality``,
``model_utility``, ``forget_truth_ratio``), lower (``forget_prob``, ``forget_rouge_l_recall``, ``wmdp_bio_acc``) or
closer to a target (``privleak``: 0, the retain model's leak; select on ``abs(privleak)``). Terms combined by
``+``, ``mean``, ``min``, ... must point the same way (subtracting a term turns it round), so a sum never trades a
better value of one metric for a worse value of another by accident.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass


HIGHER, LOWER, TARGET = 1, -1, 0
# Metric -> direction, for every metric a benchmark in hf_unlearn.benchmarks reports.
METRIC_DIRECTIONS: dict[str, int] = {
    # TOFU (hf_unlearn.benchmarks.tofu): forget-set values fall as the model forgets, the others measure utility.
    "forget_prob": LOWER,
    "forget_rouge_l_recall": LOWER,
    "forget_truth_ratio": HIGHER,  # mean(min(TR, 1/TR)): 1 when true and wrong answers are equally likely
    "forget_extraction_strength": LOWER,
    "forget_quality": HIGHER,
    "model_utility": HIGHER,
    **{f"{s}_{m}": HIGHER for s in ("retain", "real_authors", "world_facts") for m in ("prob", "rouge_l_recall")},
    **{f"{s}_truth_ratio": HIGHER for s in ("retain", "real_authors", "world_facts")},
    # TOFU and MUSE: membership inference, best where the retain model is (privleak 0).
    "mia_min_k_auc": TARGET,
    "privleak": TARGET,
    # MUSE (hf_unlearn.benchmarks.muse)
    "verbmem_f": LOWER,
    "knowmem_f": LOWER,
    "knowmem_r": HIGHER,
    # WMDP (hf_unlearn.benchmarks.wmdp): hazardous-knowledge accuracy falls, general knowledge stays.
    "wmdp_bio_acc": LOWER,
    "wmdp_cyber_acc": LOWER,
    "mmlu_acc": HIGHER,
    # Text sources (hf_unlearn.benchmarks.nll) and a plain eval_dataset's answer NLL.
    "nll/forget": HIGHER,
    "nll/retain": LOWER,
    "loss": LOWER,
}
TARGET_HINTS = {
    "privleak": "privleak is best at 0 (the retain model's leak), not highest or lowest: select on abs(privleak)",
    "mia_min_k_auc": (
        "mia_min_k_auc is best at the retain model's AUC, not highest or lowest: select on abs(privleak), its "
        "distance to it"
    ),
}
FUNCTIONS = ("mean", "hmean", "min", "max", "abs")
_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)|([A-Za-z_][A-Za-z0-9_/]*)|(.))")


@dataclass(frozen=True)
class _Node:
    """A parsed (sub)expression: how to compute it and which way it is better (None for a constant)."""

    compute: Callable[[Mapping[str, float]], float]
    direction: int | None


class MetricSelection:
    """A parsed `metric_for_best_model`: ``MetricSelection("mean(forget_quality, model_utility)")``.

    Attributes:
        text: the expression as given (the key its value is logged under, with Trainer's ``eval_`` prefix).
        names: the metrics it reads, in order of first appearance.
        greater_is_better: the direction Trainer must compare its values in.
    """

    def __init__(self, text: str, known: Mapping[str, int] | None = None):
        self.text = text
        self._known = METRIC_DIRECTIONS if known is None else known
        self.names: list[str] = []
        self._tokens = self._tokenise(text)
        self._pos = 0
        node = self._sum()
        if self._pos < len(self._tokens):
            self._fail(f"unexpected {self._tokens[self._pos][1]!r}")
        if node.direction is None:
            self._fail("it reads no metric")
        if node.direction == TARGET:
            hint = next((TARGET_HINTS[n] for n in self.names if n in TARGET_HINTS), "wrap it in abs()")
            self._fail(hint)
        self._node = node
        self.greater_is_better = node.direction == HIGHER

    @property
    def is_single_metric(self) -> bool:
        return self.text.strip() in self._known

    def __call__(self, values: Mapping[str, float | None]) -> float:
        """The expression's value; NaN when a metric it reads is unavailable (None or NaN), so it is never best."""
        if any(values.get(n) is None or not math.isfinite(values[n]) for n in self.names):
            return math.nan
        return float(self._node.compute(values))

    # ---- parser ------------------------------------------------------------------------------------------------

    def _fail(self, why: str):
        raise ValueError(f"metric_for_best_model={self.text!r}: {why}.")

    def _tokenise(self, text: str) -> list[tuple[str, str]]:
        tokens, pos = [], 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match.end() == pos or not text[pos:].strip():
                break
            number, name, symbol = match.groups()
            if symbol is not None and symbol not in "+-*/(),":
                self._fail(f"unexpected {symbol!r} (use metric names, numbers, + - * /, and {', '.join(FUNCTIONS)})")
            tokens.append(("num", number) if number else ("name", name) if name else ("sym", symbol))
            pos = match.end()
        return tokens

    def _peek(self) -> tuple[str, str] | None:
        return self._tokens[self._pos] if self._pos < len(self._tokens) else None

    def _take(self, symbol: str | None = None) -> tuple[str, str]:
        token = self._peek()
        if token is None:
            self._fail("it ends too early")
        if symbol is not None and token != ("sym", symbol):
            self._fail(f"expected {symbol!r}, got {token[1]!r}")
        self._pos += 1
        return token

    def _sum(self) -> _Node:
        node = self._product()
        while self._peek() in (("sym", "+"), ("sym", "-")):
            sign = 1 if self._take()[1] == "+" else -1
            right = self._product()
            node = _Node(_add(node.compute, right.compute, sign), self._combine([node, _flip(right, sign)], "+/-"))
        return node

    def _product(self) -> _Node:
        node = self._unary()
        while self._peek() in (("sym", "*"), ("sym", "/")):
            op = self._take()[1]
            right = self._unary()
            constant = node if node.direction is None else right if right.direction is None else None
            if constant is None:
                self._fail(f"{op} takes a number on one side (metrics are combined with + - and functions)")
            if op == "/" and right.direction is not None:
                self._fail("a metric can only be divided by a number")
            factor = constant.compute({})
            if factor == 0:
                self._fail(f"{op} by 0")
            other = right if constant is node else node
            compute = _mul(node.compute, right.compute) if op == "*" else _div(node.compute, right.compute)
            node = _Node(compute, _flip(other, 1 if factor > 0 else -1).direction)
        return node

    def _unary(self) -> _Node:
        if self._peek() == ("sym", "-"):
            self._take()
            inner = self._unary()
            return _Node(lambda v, f=inner.compute: -f(v), _flip(inner, -1).direction)
        return self._atom()

    def _atom(self) -> _Node:
        kind, text = self._take()
        if kind == "num":
            value = float(text)
            return _Node(lambda v: value, None)
        if kind == "sym":
            if text != "(":
                self._fail(f"unexpected {text!r}")
            node = self._sum()
            self._take(")")
            return node
        if self._peek() == ("sym", "("):
            return self._call(text)
        if text not in self._known:
            self._fail(f"unknown metric {text!r}; known metrics: {', '.join(sorted(self._known))}")
        if text not in self.names:
            self.names.append(text)
        return _Node(lambda v: v[text], self._known[text])

    def _call(self, name: str) -> _Node:
        if name not in FUNCTIONS:
            self._fail(f"unknown function {name!r}; functions: {', '.join(FUNCTIONS)}")
        self._take("(")
        args = [self._sum()]
        while self._peek() == ("sym", ","):
            self._take()
            args.append(self._sum())
        self._take(")")
        if name == "abs":
            if len(args) != 1 or args[0].direction != TARGET:
                self._fail("abs() takes one term that is best at 0 (privleak, or a metric minus its target)")
            return _Node(lambda v, f=args[0].compute: abs(f(v)), LOWER)
        if any(a.direction is None for a in args):
            self._fail(f"{name}() combines metrics, not numbers")
        direction = self._combine(args, f"{name}()")
        parts = [a.compute for a in args]
        combine = {"mean": _mean, "hmean": _hmean, "min": min, "max": max}[name]
        return _Node(lambda v: combine([f(v) for f in parts]), direction)

    def _combine(self, nodes: list[_Node], what: str) -> int | None:
        directions = {n.direction for n in nodes if n.direction is not None}
        if not directions:
            return None
        if len(directions) == 1:
            return directions.pop()
        if TARGET in directions:
            self._fail(f"{what} mixes a term best at 0 with others; wrap it in abs() first")
        self._fail(
            f"{what} combines a metric that is better higher with one that is better lower ("
            + ", ".join(f"{n}: {'higher' if self._known[n] == HIGHER else 'lower'}" for n in self.names)
            + "); subtract the lower-is-better ones, e.g. model_utility - forget_prob"
        )


def _flip(node: _Node, sign: int) -> _Node:
    if node.direction in (None, TARGET) or sign > 0:
        return node
    return _Node(node.compute, -node.direction)


def _add(left, right, sign: int):
    return lambda v: left(v) + sign * right(v)


def _mul(left, right):
    return lambda v: left(v) * right(v)


def _div(left, right):
    return lambda v: left(v) / right(v)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _hmean(values: list[float]) -> float:
    if any(x < 0 for x in values):
        return math.nan
    return 0.0 if any(x == 0 for x in values) else len(values) / sum(1.0 / x for x in values)


def parse_selection(text: str, known: Mapping[str, int] | None = None) -> MetricSelection:
    """The parsed `metric_for_best_model` (Trainer's ``eval_`` prefix on a single name is accepted and dropped)."""
    text = text.strip()
    if text.startswith("eval_") and text.removeprefix("eval_") in (known or METRIC_DIRECTIONS):
        text = text.removeprefix("eval_")
    return MetricSelection(text, known)


TOFU_METRICS = tuple(n for n in METRIC_DIRECTIONS if n not in ("verbmem_f", "knowmem_f", "knowmem_r", "loss")
                     and not n.endswith("_acc") and not n.startswith("nll/"))  # fmt: skip
# Data source (a recipe's data_source) -> the metrics its benchmark reports.
SOURCE_METRICS: dict[str, tuple[str, ...]] = {
    "tofu": TOFU_METRICS,
    "synthetic": TOFU_METRICS,
    "muse": ("verbmem_f", "knowmem_f", "knowmem_r", "mia_min_k_auc", "privleak"),
    "wmdp": ("wmdp_bio_acc", "wmdp_cyber_acc", "mmlu_acc"),
    "jsonl": ("nll/forget", "nll/retain"),
}
NEEDS_RETAIN_MODEL = ("forget_quality",)


def check_source_selection(text: str, data_source: str, retain_model: str | None) -> MetricSelection:
    """`metric_for_best_model` checked against what `data_source`'s benchmark reports, before any weight loads."""
    names = SOURCE_METRICS[data_source]
    selection = parse_selection(text, {n: METRIC_DIRECTIONS[n] for n in names})
    missing = [n for n in selection.names if n in NEEDS_RETAIN_MODEL and retain_model is None]
    if missing:
        raise ValueError(
            f"metric_for_best_model={text!r} reads {missing[0]}, which needs the retain model's statistics: set "
            "retain_model (a model trained without the forget set), or select on another metric."
        )
    return selection
