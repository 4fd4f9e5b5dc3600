"""Usage for the dashboard: the last 30 days per day and per model, from the daily
rollups (requests, tokens in/out, errors), plus the SVG chart."""
from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

from dashboard.chart import stacked_bars

FIELDS = ("requests", "prompt_tokens", "completion_tokens", "errors")


async def usage_summary(store, account_id: str, days: int = 30,
                        today: datetime | None = None) -> dict:
    """Per-day totals (every day, zeros included), per day-and-model rows, per-model
    totals, overall totals and the chart SVG."""
    today = today or datetime.now(UTC)
    docs = await store.usage.daily_for_account(account_id, days, today)
    labels = [(today - timedelta(days=days - 1 - i)).strftime("%Y-%m-%d") for i in range(days)]
    per_day = {d: dict.fromkeys(FIELDS, 0) for d in labels}
    rows: dict[tuple[str, str], dict] = defaultdict(lambda: dict.fromkeys(FIELDS, 0))
    per_model: dict[str, dict] = defaultdict(lambda: dict.fromkeys(FIELDS, 0))
    for doc in docs:
        day, model = doc["day"], doc.get("model") or "?"
        for f in FIELDS:
            v = int(doc.get(f, 0) or 0)
            if day in per_day:
                per_day[day][f] += v
            rows[(day, model)][f] += v
            per_model[model][f] += v
    total = {f: sum(d[f] for d in per_day.values()) for f in FIELDS}
    chart = stacked_bars(
        [d[5:] for d in labels],
        [("tokens in", "#4c78a8", [per_day[d]["prompt_tokens"] for d in labels]),
         ("tokens out", "#f58518", [per_day[d]["completion_tokens"] for d in labels])],
        title=f"Tokens per day, last {days} days")
    return {"days": labels, "per_day": per_day,
            "rows": [{"day": d, "model": m, **v} for (d, m), v in sorted(rows.items(),
                                                                        reverse=True)],
            "per_model": dict(sorted(per_model.items())), "total": total, "chart": chart}
