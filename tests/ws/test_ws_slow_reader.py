"""A client that reads nothing while a long generation runs: the gateway must not buffer
without bound. The client is a raw socket (a library client would keep reading into its
own queue); the gateway and the backend are real processes/plugins."""
import json
import time

import pytest

from tests.helpers import start_gateway, wait_until
from tests.ws.conftest import ws_sections
from tests.ws.rawsocket import RawSocket

TOTAL = 3_000_000   # tokens the backend would produce if nothing pushed back (~150 MB of frames)


@pytest.fixture(scope="module")
def flood_gw(mongo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wsflood")
    state = tmp / "state"
    state.mkdir()
    sections = ws_sections(state, ping_interval=0, send_timeout=10.0)
    sections["models"].append({"name": "flood", "backend": "counting", "options": {
        "tokens": TOTAL, "delay": 0, "state_dir": str(state), "progress_every": 500}})
    gw = start_gateway(tmp, mongo.uri, sections)
    gw.state_dir = state
    gw.key = gw.create_key("flood@example.com")
    yield gw
    gw.stop()


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def state(gw, marker):
    path = gw.state_dir / f"{marker}.json"
    return json.loads(path.read_text()) if path.exists() else None




def test_a_client_that_reads_nothing_pauses_the_generation(flood_gw):
    pid = flood_gw.proc.pid
    before = rss_kb(pid)
    raw = RawSocket(flood_gw, {"Authorization": f"Bearer {flood_gw.key}"}, rcvbuf=4096)
    assert raw.status == 101
    raw.send_json({"type": "chat", "id": 1, "body": {
        "model": "flood", "user": "slow1", "messages": [{"role": "user", "content": "go"}]}})

    # Wait until the backend stops making progress: the relay is blocked on the socket.
    last = {"n": -1, "since": time.monotonic()}

    def stalled():
        s = state(flood_gw, "slow1")
        if s is None:
            return False
        if s["produced"] != last["n"]:
            last.update(n=s["produced"], since=time.monotonic())
            return False
        return time.monotonic() - last["since"] > 1.0 and s
    paused = wait_until(stalled, timeout=120, interval=0.1, what="the backend to pause")
    during = rss_kb(pid)
    frame_bytes = 2 + len('{"type":"delta","id":1,"content":"t12345 "}')  # one delta frame
    print(f"\n[slow reader] backend paused after {paused['produced']} of {TOTAL} tokens "
          f"(~{paused['produced'] * frame_bytes / 1e6:.1f} MB of frames, mostly in kernel socket "
          f"buffers); gateway RSS {before / 1024:.1f} MB -> {during / 1024:.1f} MB "
          f"(+{(during - before) / 1024:.1f} MB)")
    assert paused["closed"] is False and paused["produced"] < TOTAL // 10
    assert during - before < 30 * 1024   # unbounded buffering would need > 100 MB

    # After send_timeout with nothing read, the gateway drops the client and stops the backend.
    final = wait_until(lambda: (s := state(flood_gw, "slow1")) and s["closed"] and s, 60)
    # (progress is written every 500 tokens, so the paused figure may lag by fewer than that)
    assert final["finished"] is False and final["produced"] - paused["produced"] < 500
    raw.close()
    assert "dropping a WebSocket client that read nothing" in flood_gw.log()
