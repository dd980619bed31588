"""Arbitration: incremental value, the stable holdout, and exploration with logged propensities.

Pure and deterministic: randomness comes only from the seed (derived from the request key) and
holdout membership only from the customer's keyed bucket, so a logged decision replays exactly.
Exploration only ever picks among actions that already passed every guardrail.

Policy (documented in docs/decisions.md): with ε = the catalog's exploration_rate and A = the
eligible offer × variant candidates whose value clears the floor, plus NO_OFFER, the greedy
action g is the candidate in A with the highest value, or NO_OFFER if there is none; each action
a in A is taken with probability π(a) = (1 − ε)·[a = g] + ε/|A| (and π(NO_OFFER) = 1 when A holds
nothing else); candidates below the floor have π = 0. The logged propensity is π(chosen).
"""

from __future__ import annotations

import hmac
import random
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import sha256

NO_OFFER = "no_offer"


def action_key(offer_id: str, variant_id: str) -> str:
    return f"{offer_id}/{variant_id}"


@dataclass(frozen=True)
class Scored:
    """One eligible candidate with its model scores and value (minor currency units)."""

    offer_id: str
    variant_id: str
    p_accept: float
    p_anyway: float
    value: float

    @property
    def key(self) -> str:
        return action_key(self.offer_id, self.variant_id)


def incremental_value(
    p_accept: float, margin: float, p_anyway: float, full_margin: float, lever: float
) -> float:
    """Expected margin this offer adds over doing nothing, times the business lever.

    p(accept)·margin(variant) − p(buys anyway)·margin(full price): a customer who would buy at
    full price anyway is worth little to offer to, and less still to discount for.
    """
    return lever * (p_accept * margin - p_anyway * full_margin)


def holdout_bucket(key: bytes, customer_id: str) -> float:
    """The customer's stable position in [0, 1): a keyed hash of the resolved customer id.

    Holdout is bucket < share, so raising the share only moves treated customers to holdout.
    """
    digest = hmac.new(key, b"offerdesk/holdout\x00" + customer_id.encode(), sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def seed_from(request_key_hash: str) -> int:
    """The decision's random seed: 60 bits of the (keyed) request-key hash."""
    return int(request_key_hash[:15], 16)


@dataclass(frozen=True)
class Arbitration:
    greedy: str
    chosen: str
    explored: bool
    probabilities: tuple[tuple[str, float], ...]

    @property
    def propensity(self) -> float:
        return dict(self.probabilities)[self.chosen]


def arbitrate(scored: Sequence[Scored], *, floor: float, epsilon: float, seed: int) -> Arbitration:
    """Pick one action: the best value above the floor, or NO_OFFER; explore with rate ε."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be within [0, 1], got {epsilon}")
    # Only actions worth at least the floor are ever taken, exploration included: exploring
    # never pays a customer who would buy anyway, and the floor is a form of restraint.
    worth = [s for s in scored if s.value >= floor]
    greedy = NO_OFFER
    if worth:
        # max() keeps the first of equal values: ties go to catalog order.
        greedy = max(worth, key=lambda s: s.value).key
    actions = [s.key for s in worth] + [NO_OFFER]
    share = epsilon / len(actions) if len(actions) > 1 else 0.0
    taken = {a: (1.0 - epsilon) * (a == greedy) + share for a in actions}
    if len(actions) == 1:
        taken = {NO_OFFER: 1.0}
    probabilities = (
        *((s.key, taken.get(s.key, 0.0)) for s in scored),
        (NO_OFFER, taken[NO_OFFER]),
    )
    rng = random.Random(seed)
    u_explore, u_pick = rng.random(), rng.random()
    explore = len(actions) > 1 and u_explore < epsilon
    chosen = actions[int(u_pick * len(actions))] if explore else greedy
    return Arbitration(greedy, chosen, chosen != greedy, probabilities)
