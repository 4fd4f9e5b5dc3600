"""A test plugin implementing the hooks no other test plugin does, each leaving a trace
a test can read from a real gateway process through the route it registers:

- ``config_sections``: claims ``[witness]`` (``account``, ``token``), built with the
  public ``gateway.config.build_section``;
- ``register_authenticators``: ``X-Witness-Token: <token>`` is the principal ``account``;
- ``register_services``: a service that records its start and stop;
- ``on_usage``: keeps every usage event in memory;
- ``register_routes``: ``GET /witness`` shows all of the above as JSON.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import tornado.web

from gateway.config import build_section
from gateway.hookspecs import hookimpl
from gateway.types import Principal

EVENTS: list[dict] = []


@dataclass
class WitnessConfig:
    account: str = "acc_witness"
    token: str = ""

    @classmethod
    def from_config(cls, config) -> "WitnessConfig":
        return build_section(cls, dict(config.extra.get("witness", {})), "witness")


class WitnessAuthenticator:
    name = "witness"

    def __init__(self, cfg: WitnessConfig, tier: str) -> None:
        self.cfg = cfg
        self.tier = tier
        self.calls = 0

    async def authenticate(self, request) -> Principal | None:
        self.calls += 1
        sent = request.headers.get("X-Witness-Token")
        if not self.cfg.token or sent != self.cfg.token:
            return None
        return Principal(account_id=self.cfg.account, tier=self.tier, via="witness")


class WitnessService:
    name = "witness"

    def __init__(self) -> None:
        self.started = False
        self.stopped = False

    async def start(self, gateway) -> None:
        self.started = gateway is not None

    async def stop(self) -> None:
        self.stopped = True


class WitnessHandler(tornado.web.RequestHandler):
    def initialize(self, gateway, service: WitnessService) -> None:
        self.gateway = gateway
        self.service = service

    def get(self) -> None:
        auth = next(a for a in self.gateway.authenticators if a.name == "witness")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({
            "section": WitnessConfig.from_config(self.gateway.config).account,
            "authenticator_calls": auth.calls,
            "service_started": self.service.started,
            "usage_events": EVENTS,
        }, default=str))


SERVICE = WitnessService()


@hookimpl
def config_sections():
    return ["witness"]


@hookimpl
def register_authenticators(register, config, store):
    register(WitnessAuthenticator(WitnessConfig.from_config(config), config.limits.default_tier))


@hookimpl
def register_services(register, config, store):
    register(SERVICE)


@hookimpl
def register_routes(register, config):
    register(r"/witness", WitnessHandler, {"service": SERVICE})


@hookimpl
def on_usage(event):
    EVENTS.append(dict(event))
