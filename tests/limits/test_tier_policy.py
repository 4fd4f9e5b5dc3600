"""One tier policy (``gateway.relay.tier_policy.TierPolicy``) for ``/v1/models`` and the tier
limiter: which tier an account has, which models it may use. Unit tests, no database:
the model checks come before any quota is touched."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from gateway.config import Config, LimitsConfig, ModelConfig, TierConfig
from gateway.relay.tier_policy import TierPolicy
from gateway.types import GenerationRequest, Principal
from plugins.limits.tiers import TierLimiter

MODELS = ["small", "big", "embed"]


def config() -> Config:
    return Config(models=[ModelConfig(name=n, backend="echo") for n in MODELS],
                  tiers={"free": TierConfig(models=["small", "embed"]),
                         "pro": TierConfig(),
                         "narrow": TierConfig(models=["big"])},
                  limits=LimitsConfig(default_tier="free"))


def who(tier: str, allowed: tuple[str, ...] = ()) -> Principal:
    return Principal(account_id="acc_1", tier=tier, allowed_models=allowed)


CASES = [
    (who("free"), ["small", "embed"]),
    (who("pro"), MODELS),
    (who("narrow"), ["big"]),
    (who("gone"), ["small", "embed"]),          # unknown tier: the default tier
    (who(""), ["small", "embed"]),
    (who("pro", ("big", "nope")), ["big"]),       # a key's list narrows the tier's
    (who("free", ("big",)), []),                 # ...and never widens it
    (None, MODELS),                              # no caller: every model
]


@pytest.mark.parametrize("principal,usable", CASES)
def test_models_for(principal, usable):
    assert TierPolicy.from_config(config()).models_for(principal, MODELS) == usable


def test_tier_resolution_and_limits():
    policy = TierPolicy.from_config(config())
    assert policy.tier("pro") == TierConfig()
    assert policy.tier("nope") == policy.tier("free") == TierConfig(models=["small", "embed"])
    assert policy.tier_for(who("narrow")).models == ["big"]
    assert TierPolicy.tier_allows(TierConfig(), "anything")
    assert not TierPolicy.key_allows(who("pro", ("small",)), "big")


@pytest.mark.parametrize("principal,usable", [c for c in CASES if c[0] is not None])
def test_the_limiter_admits_exactly_what_models_for_lists(principal, usable):
    cfg = config()
    limiter = TierLimiter(cfg, SimpleNamespace(counters=None))
    listed = TierPolicy.from_config(cfg).models_for(principal, MODELS)
    assert listed == usable
    for model in MODELS:
        req = GenerationRequest(kind="chat", model=model, body={"messages": []})
        admission = asyncio.run(limiter.admit(principal, req))
        assert admission.allowed == (model in listed), model
        if not admission.allowed:
            assert admission.status == 403 and admission.limit == "model_not_allowed"
