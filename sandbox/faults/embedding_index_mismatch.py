"""The ticket encoder is upgraded; the article index still holds vectors from the old one.

Story: the search team refits the ticket encoder on recent ticket text and rolls version 2 out to
the retrieval service. It has the same 64 dimensions as version 1, so the service starts, FAISS
accepts the query vectors, and nothing errors. But the help-center index was built with version 1
and nobody rebuilt it: queries and articles now live in two different vector spaces. Inner products
are close to noise, the suggested articles stop matching the ticket, agents stop clicking them, and
many more tickets end unresolved. Customers left with an unresolved problem are far more likely to
cancel, so churn rises a few days later, while the churn model and its features look healthy.

Its trail by difficulty: guided's changelog announces the encoder rollout as a same-dimension
drop-in, and every search's index_version names the encoder its index was built with (`-e1`);
standard logs only a routine retrieval-service release, with the same index ids; hard logs no
release at all but ordinary retrieval changes around the onset (among them a rebuild of the
article index with the old encoder the week before), and its index ids name only the build date,
so the mismatch shows only when the searches' encoder switch is read against the index's own
metadata or the registry.
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
    Evidence,
    Fault,
    FaultParams,
    HookContext,
    Step,
    Symptom,
    Verdict,
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
# At hard, the article index is rebuilt (with the encoder serving then, v1) this many days before
# the onset: a routine rebuild, and the build the new encoder's queries then search.
INDEX_REBUILD_DAYS_BEFORE = 6
ON_TOPIC = 0.8  # share of searches whose top article is on the ticket's topic while healthy
OFF_TOPIC = 0.5  # at most this share once queries and articles live in different spaces
# Tells: each alone would point at the cause at the tiers that hide it.
STANDARD_TELLS = ("drop-in", "64-dim", "Encoder refit", "alias production moved")
HARD_TELLS = (*STANDARD_TELLS, "retrieval: service release", '-e1"')


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
    actions: ClassVar[dict[str, Verdict]] = {
        "rebuild-index": "fixes",
        # Back to the encoder the index was built with: the spaces meet again, the index stays
        # unrebuilt for the encoder the team meant to ship.
        "rollback-deploy": "mitigates",
        "set-decision-threshold": "no effect",
        "set-imputation-fill": "no effect",
        "retrain": "no effect",
    }
    rollback_service: ClassVar[str] = "retrieval"
    title: ClassVar[str] = "Ticket encoder upgraded while the article index still holds old vectors"
    rating: ClassVar[Literal["easy", "medium", "hard"]] = "medium"
    observation: ClassVar[str] = (
        "Support-article suggestions stop being clicked and more tickets go unresolved, then churn "
        "creeps up; the retrieval service reports no errors and the churn model looks unchanged."
    )

    def __init__(self, params: Params, tier: Tier = DEFAULT) -> None:
        super().__init__(params, tier)
        self._encoders: dict[int, retrieve.Encoder] = {}  # seed -> the upgraded encoder
        # (seed, build date) -> the article index as that build left it
        self._builds: dict[tuple[int, dt.date], retrieve.ArticleIndex] = {}

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

    @property
    def _rebuild_day(self) -> int | None:
        """At hard, the day the article index is rebuilt with the old encoder (None: never)."""
        return self.params.onset_day - INDEX_REBUILD_DAYS_BEFORE if self.tier == "hard" else None

    @hook("retrieve.index")
    def name_index_builds(
        self, index: retrieve.ArticleIndex, ctx: HookContext
    ) -> retrieve.ArticleIndex:
        # At hard the team's index ids are build dates, and the index was rebuilt (same encoder,
        # same articles: the same vectors) the week before the encoder switch.
        rebuild = self._rebuild_day
        if rebuild is None:
            return index
        if ctx.day >= rebuild:
            built_on = ctx.calendar.date(rebuild)
        else:
            built_on = dt.date.fromisoformat(str(index.meta["built_on"]))
        key = (ctx.seed, built_on)
        if key not in self._builds:
            self._builds[key] = retrieve.rebuilt(index, built_on, names_encoder=False)
        return self._builds[key]

    def tells(self, tier: Tier) -> tuple[str, ...]:
        named = f"ticket-encoder v{self.params.encoder_version}"
        return {"guided": (), "standard": (named, *STANDARD_TELLS), "hard": (named, *HARD_TELLS)}[
            tier
        ]

    def _rollout_title(self) -> str | None:
        """The changelog title of the release that swapped the encoder (None: not logged)."""
        return {
            "guided": f"retrieval: ticket-encoder v{self.params.encoder_version} rollout",
            "standard": "retrieval: service release",
            "hard": None,
        }[self.tier]

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        onset, title = self.params.onset_day, self._rollout_title()
        body = {
            "guided": "Encoder refit on last quarter's ticket text (new product names, more "
            "device slang). Same 64-dim output, so it is a drop-in swap; goes live with "
            "tonight's retrieval-service restart. Registry alias production moved.",
            "standard": "Routine release; goes live with tonight's retrieval-service restart.",
            "hard": "",
        }[self.tier]
        release = [
            {
                "day": onset - 1,
                "hour": 17.0,
                "kind": "deploy",
                "service": "retrieval",
                "title": title,
                "body": body,
                "author": "search-team",
            }
        ]
        return [
            *(release if title is not None else self._retrieval_noise()),
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

    def _retrieval_noise(self) -> list[dict[str, Any]]:
        """At hard, ordinary retrieval changes around the onset; each holds in the data (the
        rebuild is a real one, with the encoder serving that day)."""
        rebuild = self._rebuild_day
        assert rebuild is not None
        onset = self.params.onset_day
        entries = [
            (
                rebuild - 1,
                16.0,
                "deploy",
                "retrieval",
                "retrieval: help-article index rebuilt",
                "Rebuilt from the help-center export; same article count. Live with tonight's "
                "restart.",
            ),
            (
                onset - 3,
                11.0,
                "deploy",
                "retrieval",
                "retrieval: base image and dependency patches",
                "Security patch updates; no API change.",
            ),
            (
                onset + 2,
                15.0,
                "config",
                "support-desk",
                "support desk: suggestion panel layout",
                "Article titles wrap instead of truncating; still "
                f"{retrieve.TOP_K} suggestions per ticket.",
            ),
        ]
        return [
            {
                "day": day,
                "hour": hour,
                "kind": kind,
                "service": service,
                "title": title,
                "body": body,
                "author": "support-ops" if service == "support-desk" else "search-team",
            }
            for day, hour, kind, service, title, body in entries
        ]

    def symptoms(self, calendar: Calendar) -> list[Symptom]:
        searches = {"source": "retrieval.search_log", "where": "TRUE", "rows": "searches"}
        return [
            Symptom(
                id="mean_top1_score",
                title="Mean similarity of the top suggestion",
                unit="score",
                value="avg(top1_score)",
                **searches,
            ),
            Symptom(
                id="click_through",
                title="Share of searches with a suggestion clicked",
                unit="ratio",
                value="avg((clicked_article_id IS NOT NULL)::INTEGER)::DOUBLE",
                **searches,
            ),
        ]

    def answer_key(self, calendar: Calendar) -> AnswerKey:
        w = window(calendar, self.params.onset_day)
        start = w.start
        version = self.params.encoder_version
        rebuild = self._rebuild_day
        if rebuild is None:
            index_trail = (
                "its metadata, candidate/indexes/help_articles.json, and every search_log row's "
                "index_version still say e1"
            )
            switch = f"searches switch to encoder v{version} while index_version stays at e1"
            index_built = "the index the searches ran against was built with encoder v1"
        else:
            built = calendar.date(rebuild)
            index_trail = (
                "its metadata, candidate/indexes/help_articles.json, says encoder_version 1; the "
                f"index ids name only the build date, and the build searched since, rebuilt on "
                f"{built}, served v1's queries in the days before the switch"
            )
            switch = (
                f"searches switch to encoder v{version} on the same index build that served v1 "
                "the days before"
            )
            index_built = (
                f"the index searched after the switch is the build of {built}, made with encoder "
                "v1 (its metadata says so; the id is only a date)"
            )
        return AnswerKey(
            fault_id=self.id,
            title=self.title,
            root_cause=(
                f"From {start} the retrieval service encodes ticket queries with ticket-encoder "
                f"v{version} (registered in MLflow, alias production moved to it), but the FAISS "
                f"index of help articles was built with v1 and not rebuilt with v{version} "
                f"({index_trail}). "
                "Both encoders output 64 dimensions, so nothing errors; the query "
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
                w.column("encoder-version", "retrieval.search_log.encoder_version", switch),
                w.column("index-version", "retrieval.search_log.index_version", index_built),
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
                    "off-topic",
                    "retrieval.help_articles.topic",
                    "the top suggestion's topic stops matching the ticket's topic: the "
                    "suggestions are unrelated, not merely scored lower",
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
                *self._changelog_evidence(calendar),
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

    def _changelog_evidence(self, calendar: Calendar) -> list[Evidence]:
        w = window(calendar, self.params.onset_day)
        title = self._rollout_title()
        if title is not None:
            return [
                w.changelog(
                    "encoder-rollout",
                    title,
                    "the deploy that swapped the encoder without rebuilding the index",
                    start=w.start - dt.timedelta(days=1),
                )
            ]
        rebuild = self._rebuild_day
        assert rebuild is not None
        return [
            w.changelog(
                "index-rebuild",
                "retrieval: help-article index rebuilt",
                "a routine rebuild with the encoder of its day (v1): the build the new encoder's "
                "queries then search; no entry announces the encoder",
                start=calendar.date(rebuild - 1),
            )
        ]

    def investigation(self, calendar: Calendar) -> list[Step]:
        weekly = Step(
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
        )
        versions_sql = """
                SELECT encoder_version, index_version, min(request_ts) AS first_search,
                       max(request_ts) AS last_search, count(*) AS searches,
                       round(avg(top1_score), 3) AS top1,
                       round(avg((clicked_article_id IS NOT NULL)::INT), 3) AS click_through
                FROM retrieval.search_log GROUP BY 1, 2 ORDER BY first_search"""
        tickets = Step(
            question="What happened to the tickets?",
            sql="""
                SELECT date_trunc('week', created_at) AS week, count(*) AS tickets,
                       round(avg((resolved_at IS NULL)::INT), 3) AS unresolved_share
                FROM raw.support_tickets GROUP BY 1 ORDER BY 1""",
            evidence="unresolved",
            finding="the unresolved share jumps from ~1% to over 40%",
            found=lambda f: (
                num(f["unresolved_share"].min()) <= 0.05 and num(f["unresolved_share"].max()) >= 0.2
            ),
        )
        churn = Step(
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
        )
        if self.tier != "hard":
            versions = Step(
                question="Which encoder served the queries, against which index?",
                sql=versions_sql,
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
            )
            return [weekly, versions, tickets, churn]
        # At hard the index ids do not name the encoder: the searches show an encoder switch on
        # an index build that served the old encoder; the index's metadata (or the registry)
        # says which encoder built it, and the suggestions' topics show the spaces no longer meet.
        versions = Step(
            question="Which encoder served the queries, against which index build?",
            sql=versions_sql,
            evidence="encoder-version",
            finding="from onset a newer encoder searches the index build that served the old "
            "one the week before, with far lower similarity and clicks; the index's metadata "
            "says it was built with encoder v1",
            found=lambda f: _encoders_per_build(f) >= 2,
        )
        topics = Step(
            question="Is the top suggestion still about the ticket's problem?",
            sql="""
                SELECT s.encoder_version, s.index_version, count(*) AS searches,
                       round(avg((a.topic = t.topic)::INT), 3) AS top1_on_topic
                FROM retrieval.search_log s
                JOIN raw.support_tickets t ON t.ticket_id = s.ticket_id
                JOIN retrieval.help_articles a ON a.article_id = s.top_k_ids[1]
                GROUP BY 1, 2 ORDER BY min(s.request_ts)""",
            evidence="off-topic",
            finding="with encoder v1 the top article is on the ticket's topic almost always; "
            "with the new encoder on the same index, about as often as chance",
            found=lambda f: (
                num(f["top1_on_topic"].max()) >= ON_TOPIC
                and num(f["top1_on_topic"].min()) <= OFF_TOPIC
            ),
        )
        return [weekly, versions, topics, tickets, churn]

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        onset = calendar.midnight(self.params.onset_day)
        version = self.params.encoder_version
        # The encoder an index build holds is the one its first searches used: a build goes live
        # with the encoder it was made with (the index ids need not name it, and at hard do not).
        row = con.execute(
            """
            WITH builds AS (
                SELECT index_version, arg_min(encoder_version, request_ts) AS idx
                FROM retrieval.search_log GROUP BY 1
            )
            SELECT count(*) FILTER (WHERE request_ts < $onset),
                   avg((encoder_version = idx)::INT) FILTER (WHERE request_ts < $onset),
                   count(*) FILTER (WHERE request_ts >= $onset),
                   avg((encoder_version = $version AND idx <> $version)::INT)
                       FILTER (WHERE request_ts >= $onset),
                   avg(top1_score) FILTER (WHERE request_ts < $onset),
                   avg(top1_score) FILTER (WHERE request_ts >= $onset),
                   avg((clicked_article_id IS NOT NULL)::INT) FILTER (WHERE request_ts < $onset),
                   avg((clicked_article_id IS NOT NULL)::INT) FILTER (WHERE request_ts >= $onset)
            FROM retrieval.search_log JOIN builds USING (index_version)
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
                f"v{version} against an index build first searched with another encoder",
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


def _encoders_per_build(frame: pl.DataFrame) -> float:
    """The most encoder versions one index build served."""
    per_build = frame.group_by("index_version").agg(pl.col("encoder_version").n_unique())
    return num(per_build["encoder_version"].max()) if per_build.height else 0.0


def _drop(before: float | None, after: float | None) -> float:
    return before - after if before is not None and after is not None else 0.0
