"""Why-not: for every offer that was not picked, the first thing that excluded it, in words.

Pure: receives exclusions and values as data from the decision; imports nothing of service/.
The order of checks (and so which rule is named first) is the decision's, in catalog order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Exclusion:
    """An offer excluded before scoring: code (WhyNotCode name), rule id and plain words."""

    code: str
    rule_id: str
    detail: str


@dataclass(frozen=True)
class WhyNot:
    offer_id: str
    code: str
    rule_id: str
    detail: str
    value: float | None = None


def why_not(
    offer_ids: Sequence[str],
    exclusions: Mapping[str, Exclusion],
    best_values: Mapping[str, float],
    picked_offer: str | None,
    floor: float,
    money: Callable[[float], str],
    *,
    picked_value: float | None = None,
    explored: bool = False,
) -> tuple[WhyNot, ...]:
    """One entry per offer except the policy's pick, in catalog order.

    `best_values` holds each scored offer's best variant value (minor units); `money` renders an
    amount for people; `picked_value` is the value of the variant actually picked; `explored`
    says the pick was exploration, not the best value.
    """
    out: list[WhyNot] = []
    top = picked_value
    for offer_id in offer_ids:
        if offer_id == picked_offer:
            continue
        if offer_id in exclusions:
            e = exclusions[offer_id]
            out.append(WhyNot(offer_id, e.code, e.rule_id, e.detail))
            continue
        value = best_values.get(offer_id)
        if value is None:  # pragma: no cover - every offer is excluded or scored
            raise ValueError(f"offer {offer_id} was neither excluded nor scored")
        if value < floor:
            out.append(
                WhyNot(
                    offer_id,
                    "BELOW_FLOOR",
                    "policy.value_floor",
                    f"Expected to add {money(value)}, below the floor of {money(floor)}.",
                    value,
                )
            )
        elif explored and (top is None or value > top):
            out.append(
                WhyNot(
                    offer_id,
                    "EXPLORED",
                    "policy.exploration",
                    f"Expected to add {money(value)}; this decision explored "
                    "another option to learn what works.",
                    value,
                )
            )
        else:
            detail = (
                f"Expected to add {money(value)}, less than the chosen offer's {money(top)}."
                if top is not None
                else f"Expected to add {money(value)}; not picked this time."
            )
            out.append(WhyNot(offer_id, "LOWER_VALUE", "", detail, value))
    return tuple(out)


#: at most this many why-not entries are kept per decision; the rest are counted by code
MAX_DETAIL = 20


def cap(
    entries: tuple[WhyNot, ...], limit: int = MAX_DETAIL
) -> tuple[tuple[WhyNot, ...], tuple[tuple[str, int], ...]]:
    """The entries worth reading, and how many of each code were left out.

    A catalog of a thousand offers would otherwise put a thousand entries in every record and
    reply. Kept first: the scored offers, highest value first (the close contenders); then the
    excluded ones, in catalog order. The kept entries stay in catalog order; with `limit` or
    fewer entries nothing changes.
    """
    if len(entries) <= limit:
        return entries, ()
    ranked = sorted(
        range(len(entries)),
        key=lambda i: (entries[i].value is None, -(entries[i].value or 0.0), i),
    )
    kept = set(ranked[:limit])
    omitted: dict[str, int] = {}
    for i, e in enumerate(entries):
        if i not in kept:
            omitted[e.code] = omitted.get(e.code, 0) + 1
    return tuple(e for i, e in enumerate(entries) if i in kept), tuple(sorted(omitted.items()))
