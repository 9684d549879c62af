"""The support desk: what tickets are about, and what agents do with the suggested articles."""

from __future__ import annotations

import numpy as np
import polars as pl

from sandbox import rng
from sandbox.clock import Calendar
from sandbox.product import corpus

CLICK_P_BY_RANK = np.array([0.85, 0.7, 0.55, 0.4, 0.3])
AGENT_RESOLVES_P = 0.55  # without a useful suggestion an agent still solves about half
FRUSTRATION_DELAY_DAYS = 3  # an unresolved ticket weighs on the customer once it is closed


def _problem_keys() -> dict[str, np.ndarray]:
    problems = corpus.problems()
    keys = problems["topic"] + "/" + problems["problem"]
    return {
        "billing": keys.filter(problems["topic"] == "billing").to_numpy(),
        "playback": keys.filter(problems["topic"].is_in(["playback", "devices"])).to_numpy(),
        "other": keys.filter(~problems["topic"].is_in(["billing", "playback"])).to_numpy(),
    }


def open_tickets(
    seed: int, day: int, calendar: Calendar, demand: pl.DataFrame, ticket_ids: np.ndarray
) -> pl.DataFrame:
    """Turn today's ticket demand into tickets with a problem and customer-written text."""
    g = rng.stream(seed, "ticket-text", day)
    keys = _problem_keys()
    reason = demand["reason"].to_numpy()
    u = demand["u_problem"].to_numpy()
    problem = np.empty(len(reason), dtype=object)
    for name, options in keys.items():
        mask = reason == name
        problem[mask] = options[(u[mask] * len(options)).astype(int)]
    problem = problem.astype(str)
    text = corpus.ticket_texts(g, problem, demand["device"].to_numpy())
    base = np.datetime64(calendar.midnight(day), "us")
    created = base + (demand["hour"].to_numpy() * 3_600_000_000).astype("timedelta64[us]")
    return pl.DataFrame(
        {
            "ticket_id": ticket_ids,
            "customer_id": demand["customer_id"],
            "created_at": created,
            "device": demand["device"],
            "problem_key": problem,
            "body": text,
            "channel": np.where(g.random(len(ticket_ids)) < 0.7, "chat", "email"),
        }
    ).with_columns(pl.col("problem_key").str.split("/").list.get(0).alias("topic"))


def relevant_mask(
    tickets: pl.DataFrame, ranked_ids: np.ndarray, articles: pl.DataFrame
) -> np.ndarray:
    """True where a suggested article covers the ticket's problem on the ticket's device."""
    lookup = articles.select(
        "article_id", (pl.col("topic") + "/" + pl.col("problem")).alias("key"), "device"
    )
    ranks = ranked_ids.shape[1]
    long = pl.DataFrame(
        {
            "row": np.repeat(np.arange(tickets.height), ranks),
            "article_id": ranked_ids.reshape(-1),
            "want_key": np.repeat(tickets["problem_key"].to_numpy(), ranks),
            "want_device": np.repeat(tickets["device"].to_numpy(), ranks),
        }
    ).join(lookup, on="article_id", how="left", maintain_order="left")
    hit = (long["key"] == long["want_key"]) & (long["device"] == long["want_device"])
    return hit.fill_null(False).to_numpy().reshape(tickets.height, ranks)


def agent_outcomes(
    seed: int, day: int, tickets: pl.DataFrame, ranked_ids: np.ndarray, relevant: np.ndarray
) -> pl.DataFrame:
    """Clicks on suggestions and when (if ever) each ticket was resolved."""
    g = rng.stream(seed, "agents", day)
    n = tickets.height
    ranks = relevant.shape[1]
    clicks = relevant & (g.random((n, ranks)) < CLICK_P_BY_RANK[:ranks])
    clicked_any = clicks.any(axis=1)
    first = np.where(clicked_any, clicks.argmax(axis=1), 0)
    clicked_id = np.where(clicked_any, ranked_ids[np.arange(n), first], 0)
    by_agent = ~clicked_any & (g.random(n) < AGENT_RESOLVES_P)
    delay_h = np.where(clicked_any, g.uniform(0.1, 2.0, n), g.uniform(4.0, 72.0, n))
    created = tickets["created_at"].to_numpy()
    resolved_at = created + (delay_h * 3_600_000_000).astype("timedelta64[us]")
    resolved = clicked_any | by_agent
    return pl.DataFrame(
        {
            "ticket_id": tickets["ticket_id"],
            "clicked_article_id": pl.Series(clicked_id).replace(0, None),
            "click_rank": pl.Series(np.where(clicked_any, first + 1, 0)).replace(0, None),
            "resolved_at": pl.Series(resolved_at).set(pl.Series(~resolved), None),
        }
    )


def frustration_day(day: int) -> int:
    return day + FRUSTRATION_DELAY_DAYS
