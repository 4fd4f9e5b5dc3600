"""The tier policy: which tier an account has, which models it may use, and its limits.

One object answers these questions for everyone who asks them: ``/v1/models`` and the
playground (through ``Gateway.models_for``) list what a caller may use, and the tier
limiter (``plugins.limits.tiers``) admits by the same rules, so what a caller is shown
and what it is admitted to cannot drift apart. It is a read-only view of the config's
``[tiers.*]`` and ``[limits] default_tier``: every instance made from one config answers
the same.

The rules:

- an account's tier is the one its record names; an unknown or empty name means the
  default tier (``[limits] default_tier``, which config loading checks is defined);
- a model is usable when the tier lists it (or ``"*"``) **and**, for a caller that came
  through an API key with a model list, when the key lists it too (a key only narrows);
- the tier's limits are the fields of its ``TierConfig`` (0 means unlimited); the limiter
  applies them, per-key limits on top.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.config import TierConfig
from gateway.types import Principal


@dataclass(frozen=True)
class TierPolicy:
    """Tier resolution and model access for ``/v1/models`` and the tier limiter."""

    tiers: Mapping[str, TierConfig]
    default_tier: str

    @classmethod
    def from_config(cls, config) -> "TierPolicy":
        """The policy of a loaded ``Config`` (its ``tiers`` and ``limits.default_tier``)."""
        return cls(config.tiers, config.limits.default_tier)

    def tier(self, name: str) -> TierConfig | None:
        """The tier called ``name``, or the default tier when there is none by that name
        (``None`` only for a config without its default tier, which loading refuses)."""
        return self.tiers.get(name) or self.tiers.get(self.default_tier)

    def tier_for(self, principal: Principal) -> TierConfig | None:
        """The tier whose limits apply to this caller."""
        return self.tier(principal.tier)

    @staticmethod
    def tier_allows(tier: TierConfig | None, model: str) -> bool:
        """Whether the tier includes ``model`` (``"*"``: every model)."""
        return tier is None or "*" in tier.models or model in tier.models

    @staticmethod
    def key_allows(principal: Principal, model: str) -> bool:
        """Whether the caller's API key allows ``model`` (a key without a model list
        allows all that its tier does)."""
        return not principal.allowed_models or model in principal.allowed_models

    def allows(self, principal: Principal, model: str) -> bool:
        """Whether this caller may use ``model``: its tier and its key both allow it."""
        return self.tier_allows(self.tier_for(principal), model) and \
            self.key_allows(principal, model)

    def models_for(self, principal: Principal | None, names: Iterable[str]) -> list[str]:
        """The ``names`` this caller may use, in their order (all for no caller)."""
        if principal is None:
            return list(names)
        return [n for n in names if self.allows(principal, n)]
