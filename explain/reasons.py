"""Reasons: a candidate's SHAP contributions turned into plain words for the agent's card.

Feature visibility and templates arrive as data (`ReasonSpec`), never from the service. This
module must never invent a reason: only an agent-visible feature with a known value that made
acceptance more likely becomes one, and a template that does not fit its value is skipped.
"""

from __future__ import annotations

import math
import numbers
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from explain.contributions import Contributions

__all__ = ["EXPLORATION_NOTE", "UNKNOWN_CATEGORY", "Reason", "ReasonSpec", "reasons"]

#: what the card says instead of reasons when exploration, not confidence, picked the offer
EXPLORATION_NOTE = (
    "Suggested so we can learn what works for customers like this one; "
    "the model is less sure about this offer."
)

#: a categorical value the feature builder could not know; must equal the marker it writes
#: (service.features.MISSING_CATEGORY), restated here because explain imports nothing of service
UNKNOWN_CATEGORY = "<missing>"

_FORMATTER = string.Formatter()


@dataclass(frozen=True)
class ReasonSpec:
    """How one model feature may appear as a reason; specs come in the model's feature order.

    `template` is a `str.format` string whose only field is `{value}`, with or without a
    format spec ("Using {value:.0%} of their seats"); None means the feature is never a reason.
    """

    feature: str
    agent_visible: bool
    template: str | None

    def __post_init__(self) -> None:
        if not isinstance(self.feature, str) or not self.feature:
            raise ValueError(f"feature: expected a non-empty name, got {self.feature!r}")
        if not isinstance(self.agent_visible, bool):
            raise TypeError(f"{self.feature}.agent_visible: expected a bool")
        if self.template is not None:
            _check_template(self.feature, self.template)


@dataclass(frozen=True)
class Reason:
    """One plain-words reason: `value` as shown, and the (positive) log-odds it contributed."""

    text: str
    feature: str
    value: str
    contribution: float

    def __post_init__(self) -> None:
        if not self.text or not self.feature:
            raise ValueError("text and feature: must not be empty")
        # A reason is something that made acceptance more likely: it has a positive share.
        if type(self.contribution) is not float or not (0.0 < self.contribution < math.inf):
            raise ValueError(
                f"{self.feature}.contribution: expected a positive float, got {self.contribution!r}"
            )


def reasons(
    contrib: Contributions,
    specs: Sequence[ReasonSpec],
    raw_values: Sequence[Any],
    *,
    limit: int = 3,
) -> tuple[Reason, ...]:
    """At most `limit` reasons, strongest contribution first, ties in feature order.

    `specs` and `raw_values` (each feature's value before encoding: float, int, str or None)
    follow the order of `contrib.values`. Returns () when nothing qualifies.
    """
    n = len(contrib.values)
    if len(specs) != n:
        raise ValueError(f"specs: {len(specs)} given for {n} contributions")
    if len(raw_values) != n:
        raise ValueError(f"raw_values: {len(raw_values)} given for {n} contributions")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit: expected a non-negative int, got {limit!r}")

    ranked = sorted(
        (i for i, v in enumerate(contrib.values) if v > 0.0),
        key=lambda i: (-contrib.values[i], i),
    )
    found: list[Reason] = []
    for i in ranked:
        if len(found) == limit:
            break
        spec = specs[i]
        if not spec.agent_visible or spec.template is None:
            continue
        shown = _shown(raw_values[i])
        if shown is None:
            continue
        try:
            text = spec.template.format(value=shown)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            # e.g. a category given to "{value:.0%}": no reason beats a garbled one.
            continue
        found.append(
            Reason(
                text=text, feature=spec.feature, value=str(shown), contribution=contrib.values[i]
            )
        )
    return tuple(found)


def _shown(value: Any) -> str | numbers.Real | None:
    """The value as a template receives it, or None when it is unknown or cannot be shown."""
    if value is None:
        return None
    if isinstance(value, str):
        if value == UNKNOWN_CATEGORY:
            return None
        # Category codes are written for machines: "feature_request" reads "feature request".
        words = " ".join(value.replace("_", " ").split())
        return words or None
    if isinstance(value, numbers.Real):
        # NaN is how the feature builder writes an unknown number; an infinity is no fact
        # about a customer either.
        return value if math.isfinite(value) else None
    return None


def _check_template(feature: str, template: str) -> None:
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise ValueError(f"{feature}.template: {exc}: {template!r}") from None
    fields = [(name, spec) for _, name, spec, _ in parts if name is not None]
    if not fields:
        raise ValueError(f"{feature}.template: has no {{value}} field: {template!r}")
    for name, spec in fields:
        if name != "value":
            raise ValueError(f"{feature}.template: only {{value}} may appear, not {{{name}}}")
        if spec and "{" in spec:
            raise ValueError(f"{feature}.template: nested fields are not allowed: {template!r}")
