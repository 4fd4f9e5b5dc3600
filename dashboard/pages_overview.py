"""The operator overview (``/dashboard/admin/overview``): the page an operator opens
first at peak. Rendered on the server (tables and the SVG chart helper, no JavaScript).

Two sources, and the page says which figure comes from which:

- **Now, every gateway process**: slots busy/total and waiting requests, per model and
  per tier, summed over the gateway processes that share the model's slots, as each
  reported them last (every 0.1 s: ``Dispatcher.everywhere``); per replica only when this
  process is the only one. A model without a known capacity has no queue.
- **The usage rollups (all processes)**: time to first token, error rate and tokens per
  minute from the hourly rollups of the previous and the current UTC hour; tokens per
  tier and the top accounts from the daily rollups; the 24-hour chart from the hourly
  rollups. Rollups are written every ``[usage] flush_interval``, so they lag by that.
"""
from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from dashboard.chart import palette, stacked_bars
from dashboard.web import DashboardHandler
from gateway.obs import metrics
from gateway.store.usage import TTFT_BUCKETS_MS

TOP = 10


def hist_quantile(hist: dict[str, float], q: float) -> str | None:
    """The bucket a quantile of a ``le_<bound>`` histogram falls in: ``"≤ 250 ms"``,
    ``"> 5000 ms"``, or None without observations. The smallest bound with at least
    ``q`` of the observations at or below it (the nearest-rank quantile's bucket)."""
    total = sum(hist.values())
    if not total:
        return None
    seen = 0
    for bound in TTFT_BUCKETS_MS:
        seen += hist.get(f"le_{bound}", 0)
        if seen >= q * total:
            return f"≤ {bound} ms"
    return f"> {TTFT_BUCKETS_MS[-1]} ms"


def queued_per_tier() -> dict[str, int]:
    """Requests waiting now in this process's fair queues, per tier (all models)."""
    out: dict[str, int] = {}
    for family in metrics.QUEUE_WAITING.collect():
        for sample in family.samples:
            tier = sample.labels.get("tier", "")
            out[tier] = out.get(tier, 0) + int(sample.value)
    return out


async def queues_now(gateway) -> tuple[dict[str, dict], dict[str, int]]:
    """Each queued model's slots, busy slots, waiting requests and processes, and the
    waiting requests per tier: across the processes sharing the slots, or this process's
    own where it shares nothing."""
    models, tiers, local_tiers = {}, {}, True
    for name, queue in gateway.dispatcher.queues.items():
        every = await gateway.dispatcher.everywhere(name)
        if every is None:
            models[name] = {"slots": queue.slots, "busy": queue.slots_busy,
                            "waiting": queue.waiting, "processes": 1,
                            "per_replica": list(zip(queue.busy, queue.capacity))}
            continue
        local_tiers = False
        models[name] = {"slots": sum(gateway.dispatcher.capacities[name]),
                        "busy": every["busy"], "waiting": every["waiting"],
                        "processes": every["processes"],
                        "per_replica": list(zip(queue.busy, queue.capacity))
                        if every["processes"] <= 1 else []}
        for tier, n in every["tiers"].items():
            tiers[tier] = tiers.get(tier, 0) + n
    return models, (queued_per_tier() if local_tiers else tiers)


def _replicas(backend, queue) -> tuple[int, int | None]:
    """(replicas, how many are up, or None where the backend does not say)."""
    replicas = getattr(backend, "replicas", None)
    if replicas:
        up = [getattr(r, "healthy", None) for r in replicas]
        return len(replicas), None if None in up else sum(up)
    return (len(queue.capacity) if queue is not None else 1), None


async def overview(gateway, now: datetime | None = None) -> dict:
    """Everything the page shows (see the module)."""
    now = now or datetime.now(UTC)
    usage = gateway.store.usage
    hour = now.replace(minute=0, second=0, microsecond=0)
    since = hour - timedelta(hours=1)
    window_min = (now - since).total_seconds() / 60
    today = now.strftime("%Y-%m-%d")
    week_from = (now - timedelta(days=6)).strftime("%Y-%m-%d")

    recent = await usage.per_model_since(since)
    live, waiting = await queues_now(gateway)
    models = []
    for model in gateway.config.models:
        queue = gateway.dispatcher.queues.get(model.name)
        now_q = live.get(model.name)
        n, up = _replicas(gateway.backends.get(model.name), queue)
        r = recent.get(model.name) or {}
        requests, errors = int(r.get("requests", 0)), int(r.get("errors", 0))
        tokens = int(r.get("prompt_tokens", 0) + r.get("completion_tokens", 0))
        hist = r.get("ttft_hist") or {}
        models.append({
            "name": model.name, "replicas": n, "replicas_up": up,
            "queue": now_q is not None,
            "slots": now_q["slots"] if now_q else None,
            "busy": now_q["busy"] if now_q else None,
            "per_replica": now_q["per_replica"] if now_q else [],
            "waiting": now_q["waiting"] if now_q else None,
            "processes": now_q["processes"] if now_q else None,
            "requests": requests, "errors": errors,
            "errors_5xx": int(r.get("status_5xx", 0)), "errors_4xx": int(r.get("status_4xx", 0)),
            "error_rate": errors / requests if requests else None,
            "ttft_p50": hist_quantile(hist, 0.5), "ttft_p95": hist_quantile(hist, 0.95),
            "ttft_mean": r["ttft_ms_sum"] / r["ttft_count"] if r.get("ttft_count") else None,
            "tokens": tokens, "tokens_per_min": tokens / window_min})

    served = await usage.per_tier_on(today)
    total_tokens = sum(t["tokens"] for t in served.values())
    names = list(gateway.config.tiers) + sorted(
        {t for t in served if t and t not in gateway.config.tiers} |
        {t for t in waiting if t and t not in gateway.config.tiers})
    tiers = []
    for name in names + ([None] if None in served else []):
        cfg = gateway.config.tiers.get(name) if name else None
        s = served.get(name) or {"tokens": 0, "requests": 0, "accounts": 0}
        tiers.append({"name": name, "weight": cfg.weight if cfg else None,
                      "priority": cfg.priority if cfg else None,
                      "waiting": waiting.get(name, 0) if name else 0, **s,
                      "share": s["tokens"] / total_tokens if total_tokens else None})

    hours = [hour - timedelta(hours=23 - i) for i in range(24)]
    per_hour: dict[str, dict[datetime, int]] = {}
    for row in await usage.tokens_per_hour_per_model(hours[0]):
        h = row["hour"].astimezone(UTC) if row["hour"].tzinfo else row["hour"].replace(tzinfo=UTC)
        per_hour.setdefault(row["model"], {})
        per_hour[row["model"]][h] = per_hour[row["model"]].get(h, 0) + row["tokens"]
    order = [m.name for m in gateway.config.models if m.name in per_hour] + \
        sorted(m for m in per_hour if m not in {c.name for c in gateway.config.models})
    series = [(m, palette(i), [per_hour[m].get(h, 0) for h in hours])
              for i, m in enumerate(order)]
    chart = stacked_bars([h.strftime("%H:00") for h in hours], series,
                         title="Tokens per hour per model, last 24 hours (UTC)")

    return {"now": now, "since": since, "window_min": window_min, "models": models,
            "tiers": tiers, "tier_tokens": total_tokens, "today": today,
            "week_from": week_from,
            "top_today": await usage.top_accounts(today, TOP),
            "top_week": await usage.top_accounts(week_from, TOP),
            "chart": chart, "chart_tokens": {m: sum(per_hour[m].values()) for m in order},
            "pid": os.getpid(), "worker": gateway.worker}


class AdminOverviewHandler(DashboardHandler):
    """GET: the operator overview (admins only)."""

    access = "admin"

    async def get(self) -> None:
        self.render("admin_overview.html", o=await overview(self.gateway), n=fmt_int,
                    pct=fmt_pct)


def fmt_int(value: float) -> str:
    """1234567 -> "1,234,567"."""
    return f"{round(value):,}"


def fmt_pct(value: float) -> str:
    """A share as a percentage: 0.0123 -> "1.2%"."""
    return f"{value * 100:.1f}%"
