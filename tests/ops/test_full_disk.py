"""A full or read-only ``data_dir``, for real: small tmpfs mounts (root and ``mount``
needed; the tests skip, saying so, where mounting is impossible).

- A disk that fills up loses no usage while the process lives: it is held in memory,
  ``/readyz`` and the metrics say it is not being written, and it is written once space
  returns. At exit the spool still gets it (room set aside at start), and the next
  start counts every request.
- If at exit neither the database nor the spool can take it (read-only), one critical
  line says how much is lost; no traceback, no partial spool file.
- The start refuses a read-only or full ``data_dir`` (or one too small for the embedded
  database) with one line that says why.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import sys
from pathlib import Path

import httpx
import pytest

from gateway.store import embedded_db
from tests.helpers import db_run, env, free_port, start_gateway, wait_until, write_config

ECHO = {"plugins": {"modules": ["tests.plugins.echo_backend"]},
        "models": [{"name": "echo", "backend": "echo"}],
        "usage": {"flush_interval": 0.2}}      # no per-request events file on the tmpfs
BODY = {"model": "echo", "messages": [{"role": "user", "content": "count me once"}]}
TOKENS = 6                                     # 3 prompt + 3 completion per request


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size, ro=False)``: a new tmpfs of that size; unmounted after the test."""
    mounted: list[Path] = []

    def mount(size: str = "8m", ro: bool = False) -> Path:
        where = tmp_path / f"tmpfs{len(mounted)}"
        where.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (root and mount needed): "
                        f"{done.stderr.strip() or done.returncode}")
        mounted.append(where)
        return where
    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(where: Path) -> Path:
    """Take every free byte of the file system ``where`` is on."""
    path = where / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1):           # then the last partial blocks
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    assert os.statvfs(where).f_bavail == 0
    return path


def remount_ro(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)


def chat(gw, key, n: int) -> list[int]:
    with httpx.Client(timeout=30) as c:
        return [c.post(gw.url + "/v1/chat/completions", json=BODY,
                       headers={"Authorization": f"Bearer {key}"}).status_code
                for _ in range(n)]


def daily(gw, field: str = "requests") -> int:
    return sum(d.get(field, 0) for d in db_run(
        gw.db_uri, gw.db_name, lambda s: s.usage.daily.find({}).to_list()))


def metric(gw, name: str) -> float:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def test_a_full_disk_holds_usage_in_memory_says_so_and_loses_none(tmpfs, tmp_path):
    """Database and data_dir on one 8 MiB tmpfs that fills up (twice)."""
    disk = tmpfs("8m")
    db = embedded_db.start("sqlite", str(disk / "db" / "db.sqlite"), port=free_port())
    config = {**ECHO, "server": {"data_dir": str(disk / "var")}, "database": {"timeout": 2.0}}
    gw = start_gateway(tmp_path / "gw", db.uri, config)
    try:
        key = gw.create_key("fulldisk@example.com")
        assert chat(gw, key, 10) == [200] * 10
        wait_until(lambda: daily(gw) == 10, 10, what="the first usage")
        filler = fill(disk)
        assert chat(gw, key, 30) == [200] * 30       # the requests themselves go on

        def not_persisting():
            r = httpx.get(gw.url + "/readyz", timeout=10)
            return r if r.status_code == 503 and r.json()["usage"]["unwritten_requests"] \
                == 30 else None
        ready = wait_until(not_persisting, 15, what="/readyz saying usage is not written")
        usage = ready.json()["usage"]
        assert usage["persisting"] is False and usage["unwritten_tokens"] == 30 * TOKENS
        assert usage["unwritten_rollups"] <= 4   # per key, model and hour (sealed + new)
        assert ready.json()["database"] is True       # it answers; it cannot write
        assert "usage is not being written" in ready.json()["error"]["message"]
        assert metric(gw, "ayct_usage_persisting") == 0
        assert metric(gw, "ayct_usage_unwritten_requests") == 30
        assert metric(gw, "ayct_usage_write_failures_total") >= 1
        assert daily(gw) == 10
        assert "usage write failed" in gw.log() and "held in memory" in gw.log()

        filler.unlink()                              # space returns: all of it is written
        wait_until(lambda: daily(gw) == 40, 15, what="the held usage written")
        wait_until(lambda: httpx.get(gw.url + "/readyz").status_code == 200, 10,
                   what="ready again")
        assert metric(gw, "ayct_usage_persisting") == 1
        assert "usage is written again" in gw.log()

        filler = fill(disk)                          # full again, and then SIGTERM
        assert chat(gw, key, 20) == [200] * 20
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(30) == 0
        log = gw.log()
        assert "Traceback" not in log and "LOST" not in log
        assert "spooled to" in log                   # the room set aside took it
        var = sorted(os.listdir(disk / "var"))
        assert "usage-spool.jsonl" in var and not [n for n in var if n.endswith(".tmp")]

        filler.unlink()
        gw = start_gateway(tmp_path / "gw", db.uri, config, db_name=gw.db_name)
        wait_until(lambda: daily(gw) == 60, 15, what="the spool replayed")
        assert daily(gw, "status_2xx") == 60
        print("full disk: 60 of 60 requests counted (before: 10 of 40, a traceback and a "
              "stale .tmp)")
    finally:
        gw.stop()
        db.stop()


def test_usage_nothing_can_take_at_exit_is_reported_lost_in_one_critical_line(
        tmpfs, tmp_path):
    """The database's disk is full and data_dir turned read-only: one line, no traceback."""
    db_disk, data_disk = tmpfs("8m"), tmpfs("1m")
    db = embedded_db.start("sqlite", str(db_disk / "db.sqlite"), port=free_port())
    config = {**ECHO, "server": {"data_dir": str(data_disk / "var")},
              "database": {"timeout": 2.0}}
    gw = start_gateway(tmp_path / "gw", db.uri, config)
    try:
        key = gw.create_key("readonly@example.com")
        assert chat(gw, key, 5) == [200] * 5
        wait_until(lambda: daily(gw) == 5, 10, what="the first usage")
        fill(db_disk)
        remount_ro(data_disk)
        assert chat(gw, key, 12) == [200] * 12
        wait_until(lambda: httpx.get(gw.url + "/readyz").status_code == 503, 15,
                   what="/readyz saying usage is not written")
        gw.proc.send_signal(signal.SIGTERM)
        code = gw.proc.wait(30)
        log = gw.log()
        lost = [line for line in log.splitlines() if "CRITICAL" in line]
        print(lost)
        assert len(lost) == 1
        assert f"usage LOST at exit: 12 request(s), {12 * TOKENS} token(s)" in lost[0]
        assert "read-only" in lost[0].lower()
        assert "Traceback" not in log and code == 0
        assert not [n for n in os.listdir(data_disk / "var") if n.endswith(".tmp")]
    finally:
        gw.stop()
        db.stop()


def _serve(tmp_path: Path, data_dir: Path) -> subprocess.CompletedProcess:
    cfg = write_config(tmp_path / "gateway.toml", {
        **ECHO, "server": {"host": "127.0.0.1", "port": free_port(), "data_dir": str(data_dir)}})
    return subprocess.run([sys.executable, "-m", "gateway.cli", "-c", str(cfg), "serve"],
                          capture_output=True, text=True, env=env(), timeout=60)


def test_the_start_refuses_a_read_only_or_full_data_dir_in_one_line(tmpfs, tmp_path):
    readonly = tmpfs("1m", ro=True)
    done = _serve(tmp_path, readonly / "var")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "data_dir" in lines[0] and "read-only" in lines[0], lines

    full = tmpfs("1m")
    (full / "var").mkdir()
    fill(full)
    done = _serve(tmp_path, full / "var")
    assert done.returncode != 0 and "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no space left" in lines[0], lines

    small = tmpfs("2m")                 # too small for the embedded database to work
    done = _serve(tmp_path, small / "var")
    assert done.returncode != 0 and "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "MiB free" in lines[0], lines

    # The mail plugin, wherever it is started from, says the same in one line.
    from gateway.config import ConfigError, load
    from plugins.mail.mailer import MailSeal
    cfg = load(str(write_config(tmp_path / "mail.toml",
                                {"server": {"data_dir": str(readonly / "var")}})))
    with pytest.raises(ConfigError, match="Read-only file system"):
        MailSeal.for_config(cfg)


def test_a_full_disk_under_the_usage_events_file_drops_its_lines_and_nothing_else(
        tmpfs, tmp_path):
    """The opt-in per-request usage log is on a 1 MiB tmpfs that fills up: requests go
    on (200), the database counts every one, the log has one warning and no traceback,
    and once space returns the file is written again and says how many lines it lost
    (before: a traceback per request from the on_usage hook and one per second from the
    flush, and the lines piled up in memory)."""
    disk = tmpfs("1m")
    db = embedded_db.start("memory")
    config = {**ECHO, "usage": {"flush_interval": 0.2,
                                "events_file": str(disk / "events.jsonl")}}
    gw = start_gateway(tmp_path / "gw", db.uri, config)
    events = disk / "events.jsonl"

    def lines() -> int:
        """How many lines the file has: each one a whole event."""
        text = events.read_text() if events.exists() else ""
        assert not text or text.endswith("\n")              # no line cut short
        return len([json.loads(line) for line in text.splitlines()])
    try:
        key = gw.create_key("eventsfull@example.com")
        assert chat(gw, key, 5) == [200] * 5
        wait_until(lambda: lines() == 5, 10, what="the first events written")
        filler = fill(disk)
        assert chat(gw, key, 30) == [200] * 30
        wait_until(lambda: "usage events file" in gw.log(), 10, what="the warning")
        time.sleep(1.5)                                 # more flushes fail meanwhile
        while_full = lines()                # the file's last page may have taken a few
        assert while_full < 35
        filler.unlink()
        assert chat(gw, key, 5) == [200] * 5
        lost = 35 - while_full
        wait_until(lambda: lines() == 40 - lost, 10, what="the file written again")
        wait_until(lambda: daily(gw) == 40, 10, what="every request in the database")
        log = gw.log()
        assert "Traceback" not in log and "on_usage hook failed" not in log
        assert log.count("cannot be written (No space left on device)") == 1
        assert f"is written again; {lost} events were not written to it" in log
    finally:
        gw.stop()
        db.stop()
