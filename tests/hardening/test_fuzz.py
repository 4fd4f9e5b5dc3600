"""Hypothesis fuzzing of the HTTP API, the WebSocket protocol and (lightly) the dashboard
forms against a real gateway: every answer to bad input is a 4xx error (JSON for the
API, HTML for the dashboard), never a 5xx or a stack trace, and the event loop never
stalls for more than 100 ms (measured inside the gateway by tests.hardening.looplag).
Seeded (derandomize) and bounded, so the file runs the same way in well under a minute."""
from __future__ import annotations

import contextlib
import json
import re

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.hardening.conftest import PLUGINS, assert_no_stall, loop_lag_ms
from tests.helpers import start_gateway

ADMIN = ("fuzz-admin@example.com", "fuzz-admin-password-01")
FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_LAG_MS = 100


@pytest.fixture(scope="module")
def fuzz_gw(mongo, tmp_path_factory):
    gw = start_gateway(tmp_path_factory.mktemp("fuzz"), mongo.uri, {
        "plugins": {"modules": PLUGINS},
        "models": [{"name": "sink", "backend": "sink"}],
        "websocket": {"max_message_bytes": 65536},
        "dashboard": {"admin_email": ADMIN[0], "admin_password": ADMIN[1],
                      "argon2_time_cost": 1, "argon2_memory_cost": 8192,
                      "argon2_parallelism": 1, "register_max_per_ip": 100000,
                      "login_max_failures": 100000, "login_max_failures_ip": 100000},
    })
    gw.key = gw.create_key("fuzz@example.com")
    loop_lag_ms(gw)
    yield gw
    gw.stop()


def assert_clean_log(gw) -> None:
    log = gw.log()
    for bad in ("Traceback", "unhandled", "Uncaught exception", "internal_error"):
        assert bad not in log, log[log.index(bad) - 500: log.index(bad) + 500]


# -- strategies ---------------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
JSON = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4)
                    | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=12)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "developer", "x"])},
    optional={"content": st.text(max_size=40) | JSON | st.lists(
        st.fixed_dictionaries({"type": st.sampled_from(["text", 3])},
                              optional={"text": st.text(max_size=20) | JSON}), max_size=3),
        "name": st.text(max_size=10) | JSON})
FIELDS = {
    "model": st.sampled_from(["sink", "nope", ""]) | JSON,
    "messages": st.lists(MESSAGE, max_size=3) | JSON,
    "prompt": st.text(max_size=40) | st.lists(st.text(max_size=10), max_size=3) | JSON,
    "stream": st.booleans() | JSON,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | JSON,
                                                          "x": JSON}) | JSON,
    "max_tokens": st.integers(-5, 5000) | JSON,
    "max_completion_tokens": st.integers(-5, 5000) | JSON,
    "temperature": st.floats(-3, 3) | JSON,
    "top_p": st.floats(-1, 2) | JSON,
    "n": st.integers(0, 3) | JSON,
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=6) | JSON,
    "presence_penalty": st.floats(-3, 3) | JSON,
    "frequency_penalty": st.floats(-3, 3) | JSON,
    "seed": st.integers(-2**70, 2**70) | JSON,
    "user": st.text(max_size=10) | JSON,
    "logit_bias": JSON, "logprobs": JSON, "metadata": JSON, "tools": JSON,
    "response_format": JSON, "tool_choice": JSON, "echo": JSON, "suffix": JSON,
}
BODY = st.fixed_dictionaries({}, optional=FIELDS).flatmap(
    lambda body: st.dictionaries(st.text(max_size=8), JSON, max_size=2).map(
        lambda extra: {**extra, **body}) | st.just(body))


def _mutate(raw: str, where: int, what: str) -> str:
    where %= len(raw) + 1
    return raw[:where] + what + raw[where:]


VALID = st.fixed_dictionaries({"model": st.just("sink"), "messages": st.lists(
    st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=20)}),
    min_size=1, max_size=2)})
GOOD_FIELDS = {
    "stream": st.booleans(), "temperature": st.floats(0, 2), "top_p": st.floats(0, 1),
    "max_tokens": st.integers(1, 50), "stop": st.lists(st.text(max_size=4), max_size=4),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    "seed": st.integers(-2**63, 2**63), "user": st.text(max_size=8)}
GOOD = st.builds(lambda body, extra: {**body, **extra}, VALID,
                 st.fixed_dictionaries({}, optional=GOOD_FIELDS))
RAW = st.one_of(
    GOOD.map(lambda b: json.dumps(b).encode()),
    BODY.map(lambda b: json.dumps(b).encode()),
    st.binary(max_size=200),
    st.tuples(BODY, st.integers(0, 10_000), st.sampled_from(
        ["NaN", "Infinity", "-Infinity", "1e999", "[" * 100, "}", "\x00", "\ud800", '"',
         ",", "{" * 70 + "}" * 70, "\\u0000", "9" * 5000])).map(
        lambda t: _mutate(json.dumps(t[0]), t[1], t[2]).encode("utf-8", "surrogatepass")),
)
POISON = st.one_of(
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-2E+308", "1" * 320 + ".0"]),
    st.tuples(st.integers(65, 6000), st.sampled_from("[{")).map(
        lambda t: ("[" * t[0] + "]" * t[0]) if t[1] == "[" else '{"a":' * t[0] + "1" + "}" * t[0]),
)


def poisoned(body: dict, field: str, poison: str, wrap: bool) -> str:
    """``body`` with ``poison`` (raw JSON text) as ``field``, or inside it."""
    value = '{"x": [0, ' + poison + "]}" if wrap else poison
    return json.dumps({k: v for k, v in body.items() if k != field})[:-1] + \
        f', "{field}": {value}}}'


POISONED = st.builds(poisoned, VALID, st.sampled_from(
    ["temperature", "top_p", "presence_penalty", "frequency_penalty", "seed", "metadata",
     "logit_bias", "tools", "response_format", "user"]), POISON, st.booleans())
# A corpus of large hostile bodies, replayed on top of the random ones.
HUGE = [
    b'{"model":"sink","messages":[{"role":"user"}],"stop":[' + b",".join([b"1"] * 300_000) + b"]}",
    b'{"model":"sink","messages":[{"role":"user"}],"metadata":{"a":' + b"[" * 20_000 +
    b"]" * 20_000 + b"}}",
    b'{"model":"sink","messages":[' + b",".join([b'{"role":"user","content":"hi"}'] * 25_000)
    + b',{"role":7}]}',
]


# -- the HTTP API --------------------------------------------------------------------------

@settings(FUZZ, max_examples=300)
@given(raw=RAW, path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
       key=st.sampled_from(["good", "good", "good", "bad", None]))
def test_fuzz_http_api(fuzz_gw, http, raw, path, key):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = "Bearer " + (fuzz_gw.key if key == "good" else "ayct_x" + key)
    resp = http.post(fuzz_gw.url + path, content=raw, headers=headers)
    assert resp.status_code < 500, (resp.status_code, resp.text[:300])
    assert "Traceback" not in resp.text
    if resp.status_code >= 400:
        assert resp.headers["content-type"].startswith("application/json")
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and len(resp.content) < 2048
    else:
        assert resp.status_code == 200


@settings(FUZZ, max_examples=80)
@given(raw=POISONED)
def test_fuzz_non_finite_numbers_and_deep_nesting_are_400(fuzz_gw, http, raw):
    """Anywhere in an otherwise valid body (before: 200 for NaN, 500 for deep nesting)."""
    resp = http.post(fuzz_gw.url + "/v1/chat/completions", content=raw.encode(),
                     headers={"Authorization": f"Bearer {fuzz_gw.key}"})
    assert resp.status_code == 400, (resp.status_code, resp.text[:300])
    assert resp.json()["error"]["code"] == "invalid_json"


@pytest.fixture(scope="module")
def http():
    with httpx.Client(timeout=60) as client:
        yield client


def test_http_fuzzing_left_no_trace_and_no_stall(fuzz_gw, http):
    """After the random bodies, the large hostile corpus; then the verdicts."""
    for raw in HUGE:
        resp = http.post(fuzz_gw.url + "/v1/chat/completions", content=raw,
                         headers={"Authorization": f"Bearer {fuzz_gw.key}"})
        assert resp.status_code == 400 and len(resp.content) < 2048, resp.text[:300]
    assert_no_stall(fuzz_gw, MAX_LAG_MS)
    assert_clean_log(fuzz_gw)


# -- the WebSocket protocol ----------------------------------------------------------------

class Socket:
    """One WebSocket, reconnected when the server closes it (e.g. a failed auth)."""

    def __init__(self, gw) -> None:
        self.gw, self.conn, self.n, self.errors = gw, None, 0, []
        self.sockets = contextlib.ExitStack()

    def ensure(self):
        if self.conn is None:
            url = self.gw.url.replace("http://", "ws://") + "/v1/chat/ws"
            self.conn = self.sockets.enter_context(connect(
                url, additional_headers={"Authorization": f"Bearer {self.gw.key}"},
                compression=None, max_size=None, proxy=None))
            check_message(json.loads(self.conn.recv(timeout=30)))
        return self.conn

    def exchange(self, frame) -> None:
        """Send ``frame``, then a ping; check everything the server says until the pong."""
        self.n += 1
        self.errors = []
        sentinel = f"sentinel-{self.n}"
        conn = self.ensure()
        try:
            conn.send(frame)
            conn.send(json.dumps({"type": "ping", "id": sentinel}))
            while True:
                msg = json.loads(conn.recv(timeout=30))
                check_message(msg)
                if msg["type"] == "error":
                    self.errors.append(msg)
                if msg == {"type": "pong", "id": sentinel}:
                    return
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            assert code in (4401, 1009), f"closed with {code}"
            self.conn = None


def check_message(msg: dict) -> None:
    assert msg["type"] in ("ready", "authenticated", "start", "delta", "done", "cancelled",
                           "error", "pong"), msg
    if msg["type"] == "error":
        assert 400 <= msg["status"] < 500, msg
        assert set(msg["error"]) == {"message", "type", "param", "code"}
        assert "Traceback" not in msg["error"]["message"]


@pytest.fixture(scope="module")
def ws(fuzz_gw):
    sock = Socket(fuzz_gw)
    with sock.sockets:
        yield sock


IDS = st.text(max_size=5) | st.integers(-3, 3) | JSON
TYPES = st.sampled_from(["chat", "chat", "cancel", "ping", "auth"]) | JSON
FRAME = st.one_of(
    st.fixed_dictionaries({"type": TYPES}, optional={
        "id": IDS, "body": GOOD | BODY | JSON, "api_key": st.text(max_size=10) | JSON,
    }).map(json.dumps),
    JSON.map(json.dumps),
    st.text(max_size=60),
    st.binary(max_size=60),
)


@settings(FUZZ, max_examples=200)
@given(frame=FRAME)
def test_fuzz_websocket(ws, frame):
    ws.exchange(frame)


@settings(FUZZ, max_examples=60)
@given(raw=POISONED)
def test_fuzz_websocket_poisoned_chats_are_400(ws, raw):
    ws.exchange('{"type": "chat", "id": "p", "body": ' + raw + "}")
    assert any(e["status"] == 400 and e["error"]["code"] == "invalid_json"
               for e in ws.errors), ws.errors


def test_websocket_fuzzing_left_no_trace_and_no_stall(fuzz_gw, ws):
    ws.exchange(json.dumps({"type": "chat", "id": "big", "body": {
        "model": "sink", "messages": [{"role": "user"}], "stop": [1] * 30_000}}))
    ws.exchange(b"[" * 30_000)
    assert_no_stall(fuzz_gw, MAX_LAG_MS)
    assert_clean_log(fuzz_gw)


# -- the dashboard forms (lightly) -----------------------------------------------------------

CSRF = re.compile(r'name="_csrf" value="([^"]+)"')
FORMS = {
    "/dashboard/login": ["email", "password"],
    "/dashboard/register": ["email", "password", "tier"],
    "/dashboard/forgot": ["email"],
    "/dashboard/reset": ["token", "password"],
    "/dashboard/keys": ["name"],
    "/dashboard/keys/revoke": ["key_id"],
    "/dashboard/account/password": ["current_password", "new_password", "confirm"],
}
VALUE = st.text(max_size=40) | st.text(max_size=3000) | st.emails() | st.just(ADMIN[1])


@pytest.fixture(scope="module")
def browser(fuzz_gw):
    """A signed-in admin's session (cookie + CSRF token), like a browser's."""
    with httpx.Client(base_url=fuzz_gw.url, timeout=60, headers={"Accept": "text/html"}) as c:
        token = CSRF.search(c.get("/dashboard/login").text).group(1)
        assert c.post("/dashboard/login", data={"_csrf": token, "email": ADMIN[0],
                                                "password": ADMIN[1]}).status_code == 303
        c.csrf = CSRF.search(c.get("/dashboard/keys").text).group(1)
        yield c


@settings(FUZZ, max_examples=50)
@given(path=st.sampled_from(sorted(FORMS)), data=st.data(),
       csrf=st.sampled_from(["good", "good", "good", "bad", None]))
def test_fuzz_dashboard_forms(browser, path, data, csrf):
    form = {name: data.draw(VALUE, label=name) for name in FORMS[path]
            if data.draw(st.booleans(), label=f"send {name}") or name == "email"}
    form.update(data.draw(st.dictionaries(st.text(max_size=8), VALUE, max_size=2), label="extra"))
    assume("_csrf" not in form)
    if csrf:
        form["_csrf"] = browser.csrf if csrf == "good" else "forged"
    resp = browser.post(path, data=form)
    assert resp.status_code < 500, (resp.status_code, resp.text[:300])
    assert "Traceback" not in resp.text
    if resp.status_code >= 400:
        assert resp.headers["content-type"].startswith("text/html"), resp.headers


def test_dashboard_fuzzing_left_no_trace_and_no_stall(fuzz_gw):
    assert_no_stall(fuzz_gw, MAX_LAG_MS)
    assert_clean_log(fuzz_gw)
