"""The ticket encoder is upgraded; the article index still holds vectors from the old one.

Story: the search team refits the ticket encoder on recent ticket text and rolls version 2 out to
the retrieval service. It has the same 64 dimensions as version 1, so the service starts, FAISS
accepts the query vectors, and nothing errors. But the help-center index was built with version 1
and nobody rebuilt it: queries and articles now live in two different vector spaces. Inner products
are close to noise, the suggested articles stop matching the ticket, agents stop clicking them, and
many more tickets end unresolved. Customers left with an unresolved problem are far more likely to
cancel, so churn rises a few days later, while the churn model and its features look healthy.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, Literal

import duckdb
import polars as pl
from pydantic import Field, field_validator

from sandbox.clock import Calendar
from sandbox.difficulty import DEFAULT, Tier
from sandbox.faults.base import (
    AnswerKey,
    Check,
    Fault,
    FaultParams,
    HookContext,
    Step,
    hook,
)
from sandbox.faults.measure import visible_end
from sandbox.faults.toolkit import fmt, num, window
from sandbox.pipeline import retrieve

TOP1_DROP = 0.10  # the top-1 similarity falls by at least this much (it falls by ~0.2)
CLICK_RATIO = 0.5  # click-through after onset at most this fraction of before
UNRESOLVED_RISE = 0.15  # the unresolved share of tickets rises by at least this much
FEATURE_LAG_DAYS = 3  # unresolved tickets show in the next days' features
CHURN_RATIO = 1.2  # churn of customers with an unresolved ticket vs those whose were resolved
MIN_CHURNERS = 30  # distinct churners among them before the churn comparison counts


class Params(FaultParams):
    ramp_days: int = Field(
        0,
        ge=0,
        le=21,
        description="Must be 0: the retrieval service loads one encoder version at a time, so "
        "the switch is a step change at onset.",
    )
    encoder_version: int = Field(
        2,
        ge=2,
        le=9,
        description="Version number of the refitted ticket encoder the service switches to (each "
        "version is its own fit, with the same 64 dimensions as version 1).",
    )

    @field_validator("ramp_days")
    @classmethod
    def _step_only(cls, v: int) -> int:
        if v != 0:
            raise ValueError(
                "must be 0: the encoder switch is a step change (the retrieval service loads one "
                "encoder per day, and its search log records that one version)"
            )
        return v


class EmbeddingIndexMismatch(Fault[Params]):
    id: ClassVar[str] = "embedding-index-mismatch"
    title: ClassVar[str] = "Ticket encoder upgraded while the article index still holds old vectors"
    rating: ClassVar[Literal["easy", "medium", "hard"]] = "medium"
    observation: ClassVar[str] = (
        "Support-article suggestions stop being clicked and more tickets go unresolved, then churn "
        "creeps up; the retrieval service reports no errors and the churn model looks unchanged."
    )

    def __init__(self, params: Params, tier: Tier = DEFAULT) -> None:
        super().__init__(params, tier)
        self._encoders: dict[int, retrieve.Encoder] = {}  # seed -> the upgraded encoder

    def upgraded_encoder(self, seed: int) -> retrieve.Encoder:
        """The new encoder version, fitted once per world seed (deterministic)."""
        if seed not in self._encoders:
            self._encoders[seed] = retrieve.fit_encoder(seed, version=self.params.encoder_version)
        return self._encoders[seed]

    @hook("retrieve.query_encoder")
    def upgrade_query_encoder(
        self, encoder: retrieve.Encoder, ctx: HookContext
    ) -> retrieve.Encoder:
        if ctx.day < self.params.onset_day:
            return encoder
        return self.upgraded_encoder(ctx.seed)

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        onset, version = self.params.onset_day, self.params.encoder_version
        return [
            {
                "day": onset - 1,
                "hour": 17.0,
                "kind": "deploy",
                "service": "retrieval",
                "title": f"retrieval: ticket-encoder v{version} rollout",
                "body": "Encoder refit on last quarter's ticket text (new product names, more "
                "device slang). Same 64-dim output, so it is a drop-in swap; goes live with "
                "tonight's retrieval-service restart. Registry alias production moved.",
                "author": "search-team",
            },
            {
                "day": onset + 4,
                "hour": 11.0,
                "kind": "oncall",
                "service": "support",
                "title": "support leads: suggested articles less useful this week",
                "body": "Agents say the suggestion panel shows unrelated articles more often; "
                "handle times up. Search team asked to take a look.",
                "author": "support-ops",
            },
        ]

    def answer_key(self, calendar: Calendar) -> AnswerKey:
        w = window(calendar, self.params.onset_day)
        start = w.start
        version = self.params.encoder_version
        return AnswerKey(
            fault_id=self.id,
            title=self.title,
            root_cause=(
                f"From {start} the retrieval service encodes ticket queries with ticket-encoder "
                f"v{version} (registered in MLflow, alias production moved to it), but the FAISS "
                "index of help articles was built with v1 and never rebuilt (its metadata, "
                "candidate/indexes/help_articles.json, and every search_log row's index_version "
                "still say e1). Both encoders output 64 dimensions, so nothing errors; the query "
                "and article vectors simply live in different spaces. Top-1 similarity falls from "
                "~0.57 to ~0.35, the suggested articles stop matching the problem, agents stop "
                "clicking them, and over 40% of tickets now end unresolved instead of ~1%. "
                "Unresolved tickets raise a customer's churn hazard, so churn rises among "
                "customers who contacted support (their 14-day churn rate roughly doubles). The "
                "churn model itself is fine: it scores them higher, as it should, so nothing in "
                "the model's metrics points at retrieval."
            ),
            propagation=[
                f"deploy: ticket-encoder v{version} rolled out to the retrieval service; the "
                "article index still holds v1 vectors",
                "retrieval: query vectors in a different space; top-1 similarity drops, the top-k "
                "articles are effectively random",
                "support desk: agents rarely click a suggestion; click-through falls from ~97%",
                "tickets: without a useful article over 40% go unresolved (agents alone solve ~55%)",
                "customers: an unresolved problem raises the churn hazard for weeks",
                "churn model: unresolved_tickets_30d rises for these customers and their scores "
                "rise with it; the model is not the problem",
                "business: cancellations among support contacts rise; the retrieval service shows "
                "no errors, and the click-through alert fires without saying why",
            ],
            evidence=[
                w.column(
                    "encoder-version",
                    "retrieval.search_log.encoder_version",
                    f"searches switch to encoder v{version} while index_version stays at e1",
                ),
                w.column(
                    "index-version",
                    "retrieval.search_log.index_version",
                    "the index the searches ran against was built with encoder v1",
                ),
                w.column(
                    "top1-score",
                    "retrieval.search_log.top1_score",
                    "top-1 similarity falls by about 0.2 at onset",
                ),
                w.column(
                    "clicks",
                    "retrieval.search_log.clicked_article_id",
                    "clicked suggestions collapse for searches by the new encoder",
                ),
                w.column(
                    "unresolved",
                    "raw.support_tickets.resolved_at",
                    "the share of tickets never resolved jumps from ~1%",
                ),
                w.column(
                    "unresolved-feature",
                    "serving.predictions.unresolved_tickets_30d",
                    "more scored customers carry unresolved tickets, and they churn "
                    "about twice as often as customers whose tickets were resolved",
                ),
                w.metric(
                    "similarity-metric",
                    "top1_similarity",
                    "hourly mean top-1 similarity steps down at onset",
                ),
                w.metric(
                    "ctr-metric",
                    "click_through_rate",
                    "hourly click-through rate steps down at onset",
                ),
                w.column(
                    "ctr-alert",
                    "monitoring.alerts.alert",
                    "RetrievalClickThroughLow fires (a symptom; it does not say why)",
                ),
                w.changelog(
                    "encoder-rollout",
                    f"retrieval: ticket-encoder v{version} rollout",
                    "the deploy that swapped the encoder without rebuilding the index",
                    start=start - dt.timedelta(days=1),
                ),
            ],
            acceptable_fixes=[
                "Roll the retrieval service back to encoder v1 (matches the index) right away.",
                f"Or rebuild the article index with encoder v{version} and deploy encoder and "
                "index together, as one versioned artifact.",
                "Make the service refuse to start (or alert) when the query encoder version differs "
                "from the index's encoder_version; check it in the deploy pipeline too.",
                "Reach out to customers whose tickets went unresolved in the window; re-open them.",
            ],
            probes=[
                "Nothing errored: which artifact told you the two vector spaces differ?",
                "Why does an identical dimension make this failure silent, and how would you guard "
                "against it?",
                "How would you show that unresolved tickets, not something else, drove the churn?",
                "What is the next experiment you would run before re-enabling v2 (offline "
                "retrieval eval on labelled tickets, shadow traffic)?",
                "The click-through alert fired: why did it not lead anyone to the cause?",
            ],
        )

    def investigation(self, calendar: Calendar) -> list[Step]:
        return [
            Step(
                question="Did the support-article suggestions get worse?",
                sql="""
                    SELECT date_trunc('week', request_ts) AS week, count(*) AS searches,
                           round(avg(top1_score), 3) AS top1,
                           round(avg((clicked_article_id IS NOT NULL)::INT), 3) AS click_through
                    FROM retrieval.search_log GROUP BY 1 ORDER BY 1""",
                evidence="clicks",
                finding="click-through and top-1 similarity step down from the onset week",
                found=lambda f: (
                    num(f["click_through"].max()) >= 0.9 and num(f["click_through"].min()) <= 0.6
                ),
            ),
            Step(
                question="Which encoder served the queries, against which index?",
                sql="""
                    SELECT encoder_version, index_version, min(request_ts) AS first_search,
                           max(request_ts) AS last_search, count(*) AS searches,
                           round(avg(top1_score), 3) AS top1,
                           round(avg((clicked_article_id IS NOT NULL)::INT), 3) AS click_through
                    FROM retrieval.search_log GROUP BY 1, 2 ORDER BY first_search""",
                evidence="encoder-version",
                finding="from onset the queries use a newer encoder than the index's e1 vectors, "
                "with far lower similarity and clicks",
                found=lambda f: (
                    f.filter(
                        pl.col("encoder_version")
                        != pl.col("index_version").str.extract(r"-e(\d+)$").cast(pl.Int64)
                    ).height
                    >= 1
                ),
            ),
            Step(
                question="What happened to the tickets?",
                sql="""
                    SELECT date_trunc('week', created_at) AS week, count(*) AS tickets,
                           round(avg((resolved_at IS NULL)::INT), 3) AS unresolved_share
                    FROM raw.support_tickets GROUP BY 1 ORDER BY 1""",
                evidence="unresolved",
                finding="the unresolved share jumps from ~1% to over 40%",
                found=lambda f: (
                    num(f["unresolved_share"].min()) <= 0.05
                    and num(f["unresolved_share"].max()) >= 0.2
                ),
            ),
            Step(
                question="Do customers left with an unresolved ticket churn more?",
                sql=f"""
                    SELECT CASE WHEN p.unresolved_tickets_30d > 0 THEN 'unresolved ticket'
                                WHEN p.tickets_30d > 0 THEN 'tickets all resolved'
                                ELSE 'no ticket' END AS support_contact,
                           count(*) AS scored,
                           count(DISTINCT p.customer_id) FILTER (WHERE l.churned = 1) AS churners,
                           round(avg(p.score), 4) AS mean_score,
                           round(avg(l.churned), 4) AS churn_rate
                    FROM serving.predictions p JOIN labels.churn_labels l
                      ON l.customer_id = p.customer_id AND l.score_date = p.request_ts::DATE
                    WHERE p.source = 'batch'
                      AND p.request_ts >= TIMESTAMP '{calendar.midnight(self.params.onset_day)}'
                    GROUP BY 1 ORDER BY 1""",
                evidence="unresolved-feature",
                finding="thousands of scores for customers with an unresolved ticket; they churn "
                "about twice as often as customers whose tickets were resolved",
                found=lambda f: (
                    _group(f, "unresolved ticket", "scored") >= 1000
                    and _group(f, "unresolved ticket", "churn_rate")
                    >= CHURN_RATIO * _group(f, "tickets all resolved", "churn_rate")
                ),
            ),
        ]

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        onset = calendar.midnight(self.params.onset_day)
        version = self.params.encoder_version
        row = con.execute(
            r"""
            SELECT count(*) FILTER (WHERE request_ts < $onset),
                   avg((encoder_version = idx)::INT) FILTER (WHERE request_ts < $onset),
                   count(*) FILTER (WHERE request_ts >= $onset),
                   avg((encoder_version = $version AND idx <> $version)::INT)
                       FILTER (WHERE request_ts >= $onset),
                   avg(top1_score) FILTER (WHERE request_ts < $onset),
                   avg(top1_score) FILTER (WHERE request_ts >= $onset),
                   avg((clicked_article_id IS NOT NULL)::INT) FILTER (WHERE request_ts < $onset),
                   avg((clicked_article_id IS NOT NULL)::INT) FILTER (WHERE request_ts >= $onset)
            FROM (SELECT *, regexp_extract(index_version, '-e(\d+)$', 1)::INT AS idx
                  FROM retrieval.search_log)
            """,
            {"onset": onset, "version": version},
        ).fetchall()[0]
        n_before, matched_before, n_after, mismatched_after = row[:4]
        top1_before, top1_after, ctr_before, ctr_after = row[4:]
        checks = [
            Check(
                name="queries use a newer encoder than the index after onset only",
                passed=n_after > 0
                and (mismatched_after or 0) >= 0.99
                and (n_before == 0 or (matched_before or 0) >= 0.99),
                detail=f"{n_before} searches before onset, {fmt(matched_before, '.1%')} with the "
                f"index's encoder; {n_after} after, {fmt(mismatched_after, '.1%')} with encoder "
                f"v{version} against a v1 index",
            )
        ]
        checks.append(
            Check(
                name="top-1 similarity falls at onset",
                passed=_drop(top1_before, top1_after) >= TOP1_DROP,
                detail=f"mean top-1 similarity {fmt(top1_before, '.3f')} before onset, "
                f"{fmt(top1_after, '.3f')} after (expected a drop of at least {TOP1_DROP})",
            )
        )
        checks.append(
            Check(
                name="click-through collapses at onset",
                passed=ctr_before is not None
                and ctr_after is not None
                and ctr_after <= CLICK_RATIO * ctr_before,
                detail=f"click-through {fmt(ctr_before, '.3f')} before onset, "
                f"{fmt(ctr_after, '.3f')} after (expected at most {CLICK_RATIO}x)",
            )
        )
        un_before, un_after = con.execute(
            """
            SELECT avg((resolved_at IS NULL)::INT) FILTER (WHERE created_at < $onset),
                   avg((resolved_at IS NULL)::INT) FILTER (WHERE created_at >= $onset)
            FROM raw.support_tickets
            """,
            {"onset": onset},
        ).fetchall()[0]
        checks.append(
            Check(
                name="more tickets end unresolved",
                passed=un_after is not None and un_after >= (un_before or 0.0) + UNRESOLVED_RISE,
                detail=f"unresolved share of tickets {fmt(un_before, '.3f')} before onset, "
                f"{fmt(un_after, '.3f')} after (expected a rise of at least {UNRESOLVED_RISE})",
            )
        )
        share_before, share_after = con.execute(
            """
            SELECT avg((unresolved_tickets_30d > 0)::INT) FILTER (WHERE request_ts < $onset),
                   avg((unresolved_tickets_30d > 0)::INT) FILTER (WHERE request_ts >= $lagged)
            FROM serving.predictions WHERE source = 'batch'
            """,
            {
                "onset": onset,
                "lagged": calendar.midnight(self.params.onset_day + FEATURE_LAG_DAYS),
            },
        ).fetchall()[0]
        checks.append(
            Check(
                name="customers with unresolved tickets pile up in the churn model's inputs",
                passed=share_after is not None
                and share_after >= 3 * (share_before or 0.0)
                and share_after - (share_before or 0.0) >= 0.005,
                detail="share of scored customers with unresolved_tickets_30d > 0: "
                f"{fmt(share_before, '.1%')} before onset, {fmt(share_after, '.1%')} from "
                f"{FEATURE_LAG_DAYS} days after (expected at least 3x)",
            )
        )
        checks.append(self._churn_check(con, calendar))
        return checks

    def _churn_check(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> Check:
        """The business end: after onset, customers carrying an unresolved ticket churn more than
        customers whose tickets were resolved (on labels matured by the last visible day)."""
        rows = con.execute(
            """
            SELECT p.unresolved_tickets_30d > 0 AS unresolved, count(*) AS n,
                   count(DISTINCT p.customer_id) FILTER (WHERE l.churned = 1) AS churners,
                   avg(l.churned) AS churn_rate
            FROM serving.predictions p JOIN labels.churn_labels l
              ON l.customer_id = p.customer_id AND l.score_date = p.request_ts::DATE
            WHERE p.source = 'batch' AND p.tickets_30d > 0
              AND p.request_ts >= $onset AND l.label_available_at <= $visible
            GROUP BY 1
            """,
            {
                "onset": calendar.midnight(self.params.onset_day),
                "visible": visible_end(calendar),
            },
        ).fetchall()
        groups = {unresolved: (n, churners, rate) for unresolved, n, churners, rate in rows}
        n_un, churners_un, rate_un = groups.get(True, (0, 0, None))
        n_res, churners_res, rate_res = groups.get(False, (0, 0, None))
        name = "customers left with an unresolved ticket churn more"
        detail = (
            f"14-day churn rate after onset: {fmt(rate_un, '.3f')} for customers with an "
            f"unresolved ticket ({churners_un} churners in {n_un} scores), "
            f"{fmt(rate_res, '.3f')} for those whose tickets were resolved ({churners_res} in "
            f"{n_res})"
        )
        if churners_un < MIN_CHURNERS or churners_res < MIN_CHURNERS:
            return Check(
                name=name,
                outcome="not measurable",
                detail=f"not measurable yet (labels mature 14 days late): {detail}",
            )
        return Check(
            name=name,
            passed=rate_un is not None
            and rate_res is not None
            and rate_un >= CHURN_RATIO * rate_res,
            detail=f"{detail} (expected at least {CHURN_RATIO}x)",
        )


def _group(frame: pl.DataFrame, contact: str, column: str) -> float:
    row = frame.filter(pl.col("support_contact") == contact)
    return float(row[column][0]) if row.height and row[column][0] is not None else 0.0


def _drop(before: float | None, after: float | None) -> float:
    return before - after if before is not None and after is not None else 0.0
