"""Counts MongoDB commands (round trips) for /metrics, by command name."""
from __future__ import annotations

from prometheus_client import Counter
from pymongo import monitoring

DB_COMMANDS = Counter("ayct_db_commands_total", "MongoDB commands sent (round trips)",
                      ["command"])


class CommandCounter(monitoring.CommandListener):
    """A pymongo command listener that counts every command this process sends."""

    def started(self, event) -> None:
        DB_COMMANDS.labels(event.command_name).inc()

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass
