"""The operator overview page (/dashboard/admin/overview), through a real gateway: real
requests fill the usage rollups and the fair queue, and every figure on the page is
checked against the gateway's own per-request usage log (the opt-in ``events_file``,
on in tests): requests, errors, tokens, tokens per minute, time to first token p50/p95
per model; slots busy and waiting requests while one request holds the only slot and
another waits; tokens and shares per tier; the top accounts; the 24-hour chart."""
from __future__ import annotations

import math
import re
import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import httpx
import pytest

from gateway.store.usage import TTFT_BUCKETS_MS
from tests.admin.conftest import admin_sections, bearer, make_account
from tests.dashboard.support import HTML, wait_until
from tests.helpers import start_gateway

QUEUED, UNQUEUED = "echo", "echo-b"     # one slot and a fair queue; no known capacity
URL = "/dashboard/admin/overview"


def overview_sections(smtp_port: int) -> dict:
    sections = admin_sections(smtp_port)
    sections["models"] = [
        {"name": QUEUED, "backend": "echo", "max_concurrency": 1, "options": {"delay": 0.02}},
        {"name": UNQUEUED, "backend": "echo"}]
    sections["tiers"] = {**sections["tiers"],
                         "pro": {**sections["tiers"]["pro"], "weight": 2.0}}
    sections["queue"] = {"max_wait": 30.0, "keepalive": 0.5}
    return sections


@pytest.fixture(scope="module")
def overview_gw(mongo, admin_inbox, tmp_path_factory):
    gw = start_gateway(tmp_path_factory.mktemp("overview"), mongo.uri,
                       overview_sections(admin_inbox.port))
    yield gw
    gw.stop()


# --- reading the page ------------------------------------------------------------------
class Tables(HTMLParser):
    """The page's tables by id: each body row as ``{"attrs": {...}, <td class>: text}``;
    and the text of elements by id."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: dict[str, list[dict]] = {}
        self.texts: dict[str, str] = {}
        self._table = self._row = self._cell = None
        self._in_body = False
        self._ids: list[list] = []          # [id, tag, depth, text parts]
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "br":                      # a line break in a cell reads as " | "
            if self._cell is not None:
                self._cell[1].append(" | ")
            return
        for entry in self._ids:
            if entry[1] == tag:
                entry[2] += 1
        if a.get("id") and tag not in ("input", "meta"):
            self._ids.append([a["id"], tag, 1, []])
        if tag == "table" and a.get("id"):
            self._table = self.tables.setdefault(a["id"], [])
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table is not None:
            self._row = {"attrs": a}
            self._table.append(self._row)
        elif tag == "td" and self._row is not None:
            self._cell = [a.get("class", "").split()[0] if a.get("class") else
                          f"col{len(self._row)}", []]

    def handle_endtag(self, tag):
        for entry in list(self._ids):
            if entry[1] == tag:
                entry[2] -= 1
                if entry[2] == 0:
                    self.texts[entry[0]] = " ".join("".join(entry[3]).split())
                    self._ids.remove(entry)
        if tag == "td" and self._cell is not None:
            self._row[self._cell[0]] = " ".join("".join(self._cell[1]).split())
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None


    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1].append(data)
        for entry in self._ids:
            entry[3].append(data)

    def rows(self, table: str, key: str) -> dict[str, dict]:
        return {r["attrs"].get(key): r for r in self.tables[table] if key in r["attrs"]}


def page(client) -> Tables:
    r = client.get(URL, headers=HTML)
    assert r.status_code == 200, r.text[:500]
    assert "script" not in r.text.lower()             # server-rendered, no JavaScript
    return Tables(r.text)


def as_of(t: Tables) -> datetime:
    text = re.search(r"As of (\S+ \S+) UTC", t.texts["as-of"]).group(1)
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def num(text: str) -> int:
    return int(text.replace(",", ""))


# --- expectations from the per-request usage log ----------------------------------------
def ttft_bucket(values: list[float], q: float) -> str:
    """The bucket of the nearest-rank quantile of ``values`` (how the page reports it)."""
    v = sorted(values)[max(math.ceil(q * len(values)) - 1, 0)]
    bound = next((b for b in TTFT_BUCKETS_MS if v <= b), None)
    return f"≤ {bound} ms" if bound else f"> {TTFT_BUCKETS_MS[-1]} ms"


def ts(event: dict) -> datetime:
    return datetime.fromisoformat(event["ts"])


def tokens(event: dict) -> int:
    return int(event.get("prompt_tokens") or 0) + int(event.get("completion_tokens") or 0)


# --- traffic ----------------------------------------------------------------------------
def chat(gw, key: str, model: str, text: str, stream: bool = False) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", headers=bearer(key), timeout=60,
                      json={"model": model, "stream": stream,
                            "messages": [{"role": "user", "content": text}]})


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def test_overview_shows_queues_latency_errors_tiers_and_top_accounts(overview_gw,
                                                                      admin_client_of):
    gw = overview_gw
    client = admin_client_of(gw)
    heavy, (heavy_key,) = make_account(gw, tier="pro")
    light, (light_key,) = make_account(gw, tier="free")
    other, (other_key,) = make_account(gw, tier="free")
    tier_of = {heavy["_id"]: "pro", light["_id"]: "free", other["_id"]: "free"}
    email_of = {heavy["_id"]: heavy["email"], light["_id"]: light["email"],
                other["_id"]: other["email"]}

    # Before any traffic: the queue is idle, the other model has none.
    t = page(client)
    models = t.rows("models", "data-model")
    assert models[QUEUED]["slots"] == "0 / 1" and models[QUEUED]["waiting"] == "0"
    assert models[UNQUEUED]["slots"] == "no queue (capacity unknown)"
    assert "waiting" not in models[UNQUEUED]

    # One request holds the queued model's only slot; another account's waits.
    holder = threading.Thread(target=chat, args=(gw, heavy_key, QUEUED, words(250), True))
    holder.start()
    wait_until(lambda: page(client).rows("models", "data-model")[QUEUED]["slots"] == "1 / 1",
               what="the slot taken")
    waiter = threading.Thread(target=chat, args=(gw, light_key, QUEUED, words(3)))
    waiter.start()
    t = wait_until(lambda: (p := page(client)).rows("models", "data-model")[QUEUED]
                   ["waiting"] == "1" and p, what="a request waiting")
    assert t.rows("models", "data-model")[QUEUED]["slots"] == "1 / 1"
    tiers = t.rows("tiers", "data-tier")
    assert tiers["free"]["waiting"] == "1" and tiers["pro"]["waiting"] == "0"
    holder.join(60)
    waiter.join(60)

    # More traffic: unqueued model requests of three sizes, and one backend failure.
    for _ in range(3):
        assert chat(gw, light_key, UNQUEUED, words(7)).status_code == 200
    for _ in range(2):
        assert chat(gw, other_key, UNQUEUED, words(30)).status_code == 200
    assert chat(gw, other_key, UNQUEUED, "a FAIL b").status_code >= 500

    events = wait_until(lambda: (e := gw.usage_events()) and len(e) == 8 and e,
                        what="8 usage events")

    def flushed():
        p = page(client)
        got = sum(num(r["requests"]) for r in p.rows("models", "data-model").values())
        return got == len(events) and p
    t = wait_until(flushed, what="the rollups to hold every request")

    # --- per model -----------------------------------------------------------------------
    now = as_of(t)
    since = now.replace(minute=0, second=0) - timedelta(hours=1)
    models = t.rows("models", "data-model")
    assert models[QUEUED]["slots"] == "0 / 1" and models[QUEUED]["waiting"] == "0"
    for name in (QUEUED, UNQUEUED):
        mine = [e for e in events if e["model"] == name]
        row = models[name]
        assert row["replicas"] == "1"
        assert num(row["requests"]) == len(mine)
        assert num(row["tokens"]) == sum(tokens(e) for e in mine)
        per_min = sum(tokens(e) for e in mine) / ((now - since).total_seconds() / 60)
        assert abs(float(row["tokens-per-min"]) - per_min) <= 0.15, (row, per_min)
        ttft = [e["ttft_ms"] for e in mine if e.get("ttft_ms") is not None]
        assert row["ttft-p50"] == ttft_bucket(ttft, 0.5)
        assert row["ttft-p95"].split(" | ")[0] == ttft_bucket(ttft, 0.95)
        assert row["ttft-p95"].split(" | ")[1] == f"mean {sum(ttft) / len(ttft):.0f} ms"
        errors = [e for e in mine if int(e["status"]) >= 400]
        rate, detail = row["errors"].split(" | ")
        assert rate == f"{len(errors) / len(mine) * 100:.1f}%"
        assert detail.startswith(f"{len(errors)} of {len(mine)}")
    # The waiter's time to first token includes its wait (the 250-token hold, 5 s).
    assert models[QUEUED]["ttft-p95"].startswith(("≤ 5000", "> 5000"))
    assert models[UNQUEUED]["errors"].split(" | ")[1] == "1 of 6: 1 5xx, 0 4xx"

    # --- per tier: today's tokens by each account's tier, and shares ------------------------
    today = [e for e in events if ts(e).strftime("%Y-%m-%d") == now.strftime("%Y-%m-%d")]
    per_tier: dict[str, int] = defaultdict(int)
    for e in today:
        per_tier[tier_of[e["account_id"]]] += tokens(e)
    total = sum(per_tier.values())
    tiers = t.rows("tiers", "data-tier")
    assert list(tiers) == ["free", "pro", "narrow"]          # the configured order
    for name, expected in per_tier.items():
        assert num(tiers[name]["tokens"]) == expected
        assert tiers[name]["share"] == f"{expected / total * 100:.1f}%"
        assert tiers[name]["waiting"] == "0"
    assert tiers["pro"]["weight"] == "2" and tiers["free"]["weight"] == "1"
    assert num(tiers["free"]["accounts"]) == 2 and num(tiers["pro"]["accounts"]) == 1
    assert tiers["narrow"]["share"] == "0.0%"

    # --- top accounts, today and over the last 7 days (the same here) ----------------------
    per_account: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in today:
        per_account[e["account_id"]][0] += tokens(e)
        per_account[e["account_id"]][1] += 1
    expected = [(email_of[a], tier_of[a], v[0], v[1]) for a, v in
                sorted(per_account.items(), key=lambda kv: (-kv[1][0], kv[0]))]
    for table in ("top-today", "top-week"):
        got = [(r["email"], r["tier"], num(r["tokens"]), num(r["requests"]))
               for r in t.tables[table]]
        assert got == expected

    # --- the 24-hour chart: this hour's bar per model --------------------------------------
    svg = client.get(URL, headers=HTML).text
    bars = dict(re.findall(r"<title>(\d\d:00 [^:<]+): ([\d.]+k?)</title></rect>", svg))
    per_hour: dict[str, int] = defaultdict(int)
    for e in events:
        per_hour[f"{ts(e).strftime('%H')}:00 {e['model']}"] += tokens(e)
    assert {k: float(v) for k, v in bars.items()} == {k: float(v) for k, v in per_hour.items()}
    assert svg.count("<svg") == 1 and 'class="chart"' in svg


def test_overview_is_for_admins_only(overview_gw):
    from tests.dashboard.support import Browserless
    gw = overview_gw
    acc, _ = make_account(gw, tier="free")
    anonymous = httpx.get(gw.url + URL, headers=HTML, follow_redirects=False)
    assert anonymous.status_code == 302 and "/dashboard/login" in anonymous.headers["Location"]
    assert httpx.get(gw.url + URL).status_code == 401
    # a signed-in account that is not an admin
    from tests.dashboard.test_accounts import PASSWORD
    from tests.helpers import db_run

    async def set_password(store):
        from dashboard.passwords import Passwords
        await store.accounts.update(acc["_id"], password_hash=await Passwords(
            time_cost=2, memory_cost=8192, parallelism=1).hash(PASSWORD))
    db_run(gw.db_uri, gw.db_name, set_password)
    user = Browserless(gw.url)
    assert user.login(acc["email"], PASSWORD).status_code == 303
    assert user.get(URL).status_code == 403
    user.close()


@pytest.fixture
def admin_client_of():
    from tests.dashboard.conftest import ADMIN
    from tests.dashboard.support import Browserless
    clients = []

    def make(gw):
        c = Browserless(gw.url)
        assert c.login(*ADMIN).status_code == 303
        clients.append(c)
        return c
    yield make
    for c in clients:
        c.close()


def test_overview_counts_the_queues_of_every_gateway_process(mongo, admin_inbox, tmp_path,
                                                              admin_client_of):
    """Two gateway processes share the queued model's one slot: the page served by a
    shows the request running and the one waiting on b, and that two processes share."""
    sections = overview_sections(admin_inbox.port)
    a = start_gateway(tmp_path / "a", mongo.uri, sections, db_name="overview_two")
    b = start_gateway(tmp_path / "b", mongo.uri, sections, db_name="overview_two")
    try:
        client = admin_client_of(a)
        _, (heavy_key,) = make_account(b, tier="pro")
        _, (light_key,) = make_account(b, tier="free")
        holder = threading.Thread(target=chat, args=(b, heavy_key, QUEUED, words(250), True))
        holder.start()
        wait_until(lambda: page(client).rows("models", "data-model")[QUEUED]["slots"]
                   .startswith("1 / 1"), what="b's request in the slot, seen from a")
        waiter = threading.Thread(target=chat, args=(b, light_key, QUEUED, words(3)))
        waiter.start()
        t = wait_until(lambda: (p := page(client)).rows("models", "data-model")[QUEUED]
                       ["waiting"] == "1" and p, what="b's waiting request, seen from a")
        assert t.rows("models", "data-model")[QUEUED]["slots"] == \
            "1 / 1 | 2 gateway processes"
        assert t.rows("tiers", "data-tier")["free"]["waiting"] == "1"
        holder.join(60)
        waiter.join(60)
        wait_until(lambda: page(client).rows("models", "data-model")[QUEUED]["waiting"] == "0",
                   what="the queue empty again")
    finally:
        a.stop()
        b.stop()
