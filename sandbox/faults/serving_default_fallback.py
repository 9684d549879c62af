"""At evening peak the model server scores a zero feature vector and still answers 200.

Story: the ML platform team trims tail latency on the account page by lowering the model server's
online feature-store lookup deadline from 50 ms to about 10 ms, rolled out replica by replica. At
quiet hours the lookup finishes well inside that; at the evening peak the store is slower, and a
growing share of lookups miss it. The server's feature client then hands the model an empty
response, and the request vector is built from the wire format's defaults: every feature 0.0.
Zeros rather than training means, because the server ships no training statistics — the "defaults"
are simply what an unset protobuf field reads as. The model scores that vector, the server returns
200 in about the deadline plus scoring time, and nothing logs an error. Batch scoring reads the
online store in bulk at 06:00 and never hits the deadline, so the retention list stays right while
the in-app prompts driven by online scores misfire every evening.

Zeros also make the trace exact: monthly_price 0.0 cannot happen (the cheapest plan is 7.99), so
rows whose features are all zero are the lookups that missed.

Its trail by difficulty: guided logs the deadline cut in the changelog, with the latency budget
behind it; standard logs a model-server config update rolled out replica by replica, without
saying what it set; hard logs neither, but the model server gets ordinary changes in the same
days (a faster response serializer two days before onset, which really takes about half a
millisecond off every online request, and an OS patch after it), so the missed lookups are found
only in the served rows: all-zero vectors at busy hours, at the deadline, for customers whose
stored features are not zero.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, Literal

import duckdb
import numpy as np
import polars as pl
from pydantic import Field

from sandbox import rng
from sandbox.clock import Calendar
from sandbox.difficulty import Tier
from sandbox.faults.base import (
    AnswerKey,
    Check,
    Evidence,
    Fault,
    FaultParams,
    HookContext,
    Rollout,
    Step,
    Symptom,
    Verdict,
    hook,
)
from sandbox.faults.toolkit import (
    PEAK_HOURS,
    QUIET_HOURS,
    at_peak,
    expected_by_hour,
    fmt,
    load_curve,
    num,
    window,
)
from sandbox.pipeline.features import MODEL_FEATURES

PREVIOUS_DEADLINE_MS = 50
CHANGE_HOUR = 11.0  # the config change lands late morning on the onset day
OVERHEAD_MS = (0.3, 1.2)  # scoring and serialisation after the lookup gives up
ALL_ZERO_SQL = " AND ".join(f"{{t}}{c} = 0" for c in MODEL_FEATURES)
# At hard, a response serializer change this many days before onset takes this much off every
# successful online request: a real, harmless latency change on the same service.
SERIALIZER_DAYS_BEFORE = 2
SERIALIZER_HOUR = 14.0
SERIALIZER_SAVING_MS = 0.5
OS_PATCH_DAYS_AFTER = 4
PATCH_HOUR = 10.0
# The stored features of the customers scored on zeros: a price of 0 cannot happen.
STORED_PRICED = 0.99
# Tells: each alone would point at the cause at the tiers that hide it.
STANDARD_TELLS = ("lookup deadline", "feature lookup", "long pole", "p99 budget")
HARD_TELLS = (*STANDARD_TELLS, "account-page config")


def all_zero(table: str = "") -> str:
    """SQL predicate: every model feature of the row is 0 (`table` qualifies the columns)."""
    return ALL_ZERO_SQL.format(t=f"{table}." if table else "")


class Params(FaultParams):
    ramp_days: int = Field(
        3, ge=0, le=21, description="Days for the config to reach every replica (0 = all at once)."
    )
    peak_share: float = Field(
        0.5,
        ge=0.1,
        le=1.0,
        description="Share of online requests in the busiest hour that miss the lookup deadline "
        "and are scored on the zero vector, once every replica has the new config; quieter hours "
        "see less, and none below half of peak traffic.",
    )
    deadline_ms: float = Field(
        10.0,
        ge=4.0,
        le=30.0,
        description="The lowered lookup deadline; requests that miss it return just above it.",
    )


class ServingDefaultFallback(Fault[Params]):
    id: ClassVar[str] = "serving-default-fallback"
    actions: ClassVar[dict[str, Verdict]] = {
        "rollback-deploy": "fixes",
        "set-decision-threshold": "no effect",
        "set-imputation-fill": "no effect",
        "retrain": "harmful",
        "backfill-online-store": "no effect",
    }
    title: ClassVar[str] = "Model server scores a zero feature vector at peak after a deadline cut"
    rating: ClassVar[Literal["easy", "medium", "hard"]] = "hard"
    observation: ClassVar[str] = (
        "Evening online scores disagree with the same customers' morning batch scores, while "
        "error rates, alerts and the batch retention list all look normal."
    )

    def miss_share(self, day: int, hours: np.ndarray) -> np.ndarray:
        """Expected share of online requests scored on zeros, by (day, hour of day)."""
        return self.params.peak_share * self.params.intensity(day) * load_curve(hours)

    @property
    def _serializer_day(self) -> int | None:
        """At hard, the day a faster response serializer reaches the model server (None:
        none)."""
        day = self.params.onset_day - SERIALIZER_DAYS_BEFORE
        return day if self.tier == "hard" and day >= 1 else None

    def _faster_responses(self, value: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
        """From the serializer change on, successful online requests take a little less."""
        day = self._serializer_day
        if day is None or ctx.day < day or "latency_ms" not in value.columns:
            return value
        if not ctx.rolled_out(ctx.calendar.at(day, SERIALIZER_HOUR)):
            return value  # rolled back past it
        faster = (
            (pl.col("source") == "online")
            & (pl.col("status") == "ok")
            & (pl.col("request_ts") >= ctx.calendar.at(day, SERIALIZER_HOUR))
        )
        return value.with_columns(
            pl.when(faster)
            .then((pl.col("latency_ms") - SERIALIZER_SAVING_MS).clip(lower_bound=0.5).round(2))
            .otherwise(pl.col("latency_ms"))
            .alias("latency_ms")
        )

    @hook("serve.features")
    def time_out_lookups(self, value: pl.DataFrame, ctx: HookContext) -> pl.DataFrame:
        if value.height == 0:
            return value
        value = self._faster_responses(value, ctx)
        if self.params.intensity(ctx.day) == 0 or not ctx.rolled_out(self._change_at(ctx.calendar)):
            return value
        hours = value["request_ts"].dt.hour().to_numpy().astype(int)
        g = rng.stream(ctx.seed, "model-server-lookup", ctx.day)
        draw = g.random(value.height)
        overhead = g.uniform(*OVERHEAD_MS, value.height)
        missed = (
            (pl.col("source") == "online")
            & (pl.col("status") == "ok")
            & (pl.col("request_ts") >= ctx.calendar.at(ctx.day, CHANGE_HOUR))
            & pl.Series(draw < self.miss_share(ctx.day, hours))
        )
        zeros = [
            pl.when(missed).then(0.0).otherwise(pl.col(c)).cast(value.schema[c]).alias(c)
            for c in MODEL_FEATURES
            if c in value.columns
        ]
        latency = pl.Series(np.round(self.params.deadline_ms + overhead, 2))
        return value.with_columns(
            *zeros,
            pl.when(missed).then(latency).otherwise(pl.col("latency_ms")).alias("latency_ms"),
        )

    def tells(self, tier: Tier) -> tuple[str, ...]:
        return {"guided": (), "standard": STANDARD_TELLS, "hard": HARD_TELLS}[tier]

    def _change_title(self) -> str | None:
        """The changelog title of the deadline change at this tier (None: not logged)."""
        return {
            "guided": f"model-server: feature lookup deadline {PREVIOUS_DEADLINE_MS} ms -> "
            f"{self.params.deadline_ms:g} ms",
            "standard": "model-server: account-page config update",
            "hard": None,
        }[self.tier]

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        if self.tier == "hard":
            return self._maintenance()
        days = max(self.params.ramp_days, 1)
        body = {
            "guided": "Account page p99 budget is 40 ms end to end; the online store lookup was "
            f"the long pole. Rolled out replica by replica over {days} day(s).",
            "standard": f"Rolled out replica by replica over {days} day(s).",
        }[self.tier]
        return [
            {
                "day": self.params.onset_day,
                "hour": CHANGE_HOUR,
                "kind": "config",
                "service": "model-server",
                "title": self._change_title(),
                "body": body,
                "author": "ml-platform",
            }
        ]

    def rollouts(self, calendar: Calendar) -> list[Rollout]:
        """The deadline cut, and at hard the serializer change before it and the patch after:
        a rollback of the model server goes back past the patch first, then past the cut."""
        cut = Rollout("model-server", self._change_at(calendar), "feature lookup deadline cut")
        if self.tier != "hard":
            return [cut]
        found = [cut, Rollout("model-server", self._patch_at(calendar), "OS security patches")]
        if self._serializer_day is not None:
            at = calendar.at(self._serializer_day, SERIALIZER_HOUR)
            found.append(Rollout("model-server", at, "faster JSON serializer"))
        return sorted(found, key=lambda r: r.at)

    def _change_at(self, calendar: Calendar) -> dt.datetime:
        return calendar.at(self.params.onset_day, CHANGE_HOUR)

    def _patch_at(self, calendar: Calendar) -> dt.datetime:
        return calendar.at(min(self.params.onset_day + OS_PATCH_DAYS_AFTER, 42), PATCH_HOUR)

    def _maintenance(self) -> list[dict[str, Any]]:
        """At hard, ordinary model-server changes around the onset, both true in the data: the
        serializer's saving shows in every online request's latency, the patch changes
        nothing."""
        entries = []
        if self._serializer_day is not None:
            entries.append(
                {
                    "day": self._serializer_day,
                    "hour": SERIALIZER_HOUR,
                    "kind": "deploy",
                    "service": "model-server",
                    "title": "model-server: faster JSON serializer for responses",
                    "body": f"Takes about {SERIALIZER_SAVING_MS:g} ms off every online response.",
                    "author": "ml-platform",
                }
            )
        entries.append(
            {
                "day": min(self.params.onset_day + OS_PATCH_DAYS_AFTER, 42),
                "hour": PATCH_HOUR,
                "kind": "deploy",
                "service": "model-server",
                "title": "model-server: OS security patches",
                "body": "Rolling restart of the replicas; requests and responses unchanged.",
                "author": "ml-platform",
            }
        )
        return entries

    def _hard_note(self, calendar: Calendar) -> str:
        if self.tier != "hard":
            return ""
        faster = (
            f"a faster response serializer from {calendar.date(self._serializer_day)} (it "
            f"really takes ~{SERIALIZER_SAVING_MS:g} ms off online requests) and "
            if self._serializer_day is not None
            else ""
        )
        return (
            " (At this difficulty the deadline change is not in the changelog; the model "
            f"server's entries there are {faster}an OS patch, neither of which touches a "
            "feature.)"
        )

    def _changelog_evidence(self, calendar: Calendar) -> list[Evidence]:
        title = self._change_title()
        if title is None:
            return []
        w = window(calendar, self.params.onset_day)
        return [
            w.changelog(
                "deadline-change",
                title,
                "the config change that introduced the misses"
                if self.tier == "guided"
                else "the config change that introduced the misses, in words that do not say "
                "what it set",
            )
        ]

    def symptoms(self, calendar: Calendar) -> list[Symptom]:
        return [
            Symptom(
                id="zero_vector_share_at_peak",
                title="Share of online requests at evening peak scored on all-zero features",
                unit="ratio",
                value=f"avg(({all_zero()})::INTEGER)::DOUBLE",
                where=f"source = 'online' AND score IS NOT NULL AND {at_peak()}",
            )
        ]

    def answer_key(self, calendar: Calendar) -> AnswerKey:
        w = window(calendar, self.params.onset_day)
        start = w.start
        p = self.params
        pct = round(p.peak_share * 100)
        peak = ", ".join(f"{h}:00" for h in PEAK_HOURS)
        return AnswerKey(
            fault_id=self.id,
            title=self.title,
            root_cause=(
                f"On {start} the model server's online feature-store lookup deadline was lowered "
                f"from {PREVIOUS_DEADLINE_MS} ms to {p.deadline_ms:g} ms (rolled out over "
                f"{p.ramp_days} days). At evening peak ({peak}) about {pct}% of lookups miss it, "
                "and the feature client returns an empty response: every feature of the request "
                "is 0.0 (unset protobuf defaults, not training means). The server scores that "
                "vector and still returns 200, at the deadline plus ~1 ms. Below half of peak "
                "traffic nothing misses. Batch scoring reads the store in bulk and is unaffected, "
                "so the retention list, the error rate and every alert look normal."
                + self._hard_note(calendar)
            ),
            propagation=[
                f"config: lookup deadline {PREVIOUS_DEADLINE_MS} ms -> {p.deadline_ms:g} ms",
                "load: at evening peak the online store answers slower than the new deadline",
                "model server: a missed lookup yields an all-zero feature vector, scored anyway",
                "serving.predictions: online rows with every feature 0 (monthly_price 0 is "
                "impossible) at peak hours, latency pinned just above the deadline, status ok",
                "product: online scores (in-app retention prompts) at peak are one constant value "
                "unrelated to the customer; batch scores for the same customers differ",
                "monitoring: no errors, so no alert; p50/p95 latency even looks better at peak",
            ],
            evidence=[
                w.column(
                    "zero-vectors",
                    "serving.predictions.monthly_price",
                    "online rows whose features are all 0 (price 0 cannot happen), "
                    "only at busy hours and only after the change",
                ),
                w.column(
                    "online-vs-batch",
                    "serving.predictions.score",
                    "online scores at peak differ from the same customer's batch "
                    "score that morning; at quiet hours they match exactly",
                ),
                w.column(
                    "latency-at-deadline",
                    "serving.predictions.latency_ms",
                    f"the zero-vector requests all took {p.deadline_ms:g}-"
                    f"{p.deadline_ms + OVERHEAD_MS[1]:g} ms: the lookup deadline",
                ),
                w.metric(
                    "no-errors",
                    "error_ratio",
                    "model-server error ratio stays at its baseline: the misses are "
                    "answered as successes",
                ),
                w.log(
                    "request-log",
                    r'"status": 200',
                    "request lines for the zero-vector requests report 200, with a "
                    "latency just above the deadline in the message",
                ),
                w.column(
                    "stored-values",
                    "feature_store.customer_features.monthly_price",
                    "the customers scored on zeros have ordinary features in the store that "
                    "day (a price above 0): the zeros were never stored, the server made them",
                ),
                *self._changelog_evidence(calendar),
            ],
            acceptable_fixes=[
                f"Restore the lookup deadline ({PREVIOUS_DEADLINE_MS} ms) or size it from the "
                "online store's peak-hour latency, not the quiet-hour one.",
                "Fail closed: on a missed lookup return an error (or no prompt) instead of scoring "
                "an unset vector; never let the client substitute zeros silently.",
                "Count and alert on lookups that missed (a 'degraded response' counter), and "
                "check served vectors for impossible values (price 0).",
                "Load-test the deadline at evening peak before rolling a latency budget change.",
            ],
            probes=[
                "How did you tell these rows from genuinely inactive customers?",
                "Why did no error alert fire, and what metric would have caught this?",
                "Why is the morning batch unaffected while online scores are wrong?",
                "Zeros or training means as a fallback: which is worse for this model, and is any "
                "fallback acceptable here?",
                "What experiment would you run next to confirm the deadline is the cause (e.g. "
                "replay peak traffic with both deadlines)?",
            ],
        )

    def investigation(self, calendar: Calendar) -> list[Step]:
        start = calendar.date(self.params.onset_day)
        expected = self.params.peak_share * self.params.intensity(calendar.last_visible_day)
        lo, hi = self.params.deadline_ms, self.params.deadline_ms + OVERHEAD_MS[1] + 0.01
        return [
            Step(
                question="Do online requests carry impossible feature values, and when?",
                sql=f"""
                    SELECT hour(request_ts) AS hour, count(*) AS requests,
                           round(avg(({all_zero()})::INT), 3) AS share_all_zero
                    FROM serving.predictions
                    WHERE source = 'online' AND status = 'ok' AND request_ts >= DATE '{start}'
                    GROUP BY 1 ORDER BY 1""",
                evidence="zero-vectors",
                finding="at evening peak a large share of requests have every feature 0 "
                "(monthly_price 0 is impossible); at quiet hours none do",
                found=lambda f: (
                    f.height > 0
                    and num(f["share_all_zero"].max()) >= 0.25 * expected
                    and f.filter(pl.col("hour").is_in(QUIET_HOURS))["share_all_zero"].sum() == 0
                ),
            ),
            Step(
                question="Does the online score agree with the same customer's batch score?",
                sql=f"""
                    SELECT hour(o.request_ts) AS hour, count(*) AS requests,
                           round(avg((abs(o.score - b.score) > 1e-6)::INT), 3) AS share_differs
                    FROM serving.predictions o
                    JOIN serving.predictions b
                      ON b.customer_id = o.customer_id AND b.source = 'batch'
                     AND b.request_ts::DATE = o.request_ts::DATE
                    WHERE o.source = 'online' AND o.status = 'ok'
                      AND hour(o.request_ts) >= 4 AND o.request_ts >= DATE '{start}'
                    GROUP BY 1 ORDER BY 1""",
                evidence="online-vs-batch",
                finding="after 04:00 both read the same online store, so scores should match; "
                "at peak many differ, at quiet hours none",
                found=lambda f: f.height > 0 and num(f["share_differs"].max()) >= 0.25 * expected,
            ),
            Step(
                question="How long did the all-zero requests take, compared with the rest?",
                sql=f"""
                    SELECT ({all_zero()}) AS all_zero, count(*) AS requests,
                           round(quantile_cont(latency_ms, 0.05), 2) AS p05_ms,
                           round(quantile_cont(latency_ms, 0.5), 2) AS p50_ms,
                           round(quantile_cont(latency_ms, 0.95), 2) AS p95_ms
                    FROM serving.predictions
                    WHERE source = 'online' AND status = 'ok'
                      AND hour(request_ts) IN ({", ".join(map(str, PEAK_HOURS))})
                      AND request_ts >= DATE '{start}'
                    GROUP BY 1 ORDER BY 1""",
                evidence="latency-at-deadline",
                finding=f"nearly all took {lo:g}-{hi:.1f} ms: a deadline, not a slow model",
                found=lambda f: (
                    f.filter(pl.col("all_zero")).height == 1
                    and f.filter(pl.col("all_zero"))["p05_ms"][0] >= lo
                    and f.filter(pl.col("all_zero"))["p95_ms"][0] <= hi
                ),
            ),
            self._last_step(),
        ]

    def _last_step(self) -> Step:
        """What ties the zeros to the server: the changelog while it tells, else the store's own
        values for the same customers and days."""
        title = self._change_title()
        if title is not None:
            return Step(
                question="What changed on the model server around then?",
                sql="""
                    SELECT ts, kind, title, body FROM ops.changelog
                    WHERE service = 'model-server' ORDER BY ts""",
                evidence="deadline-change",
                finding="a config change lowered the feature lookup deadline on the onset day"
                if self.tier == "guided"
                else "a model-server config update rolled out replica by replica from the onset "
                "day",
                found=lambda f: title in f["title"].to_list(),
            )
        return Step(
            question="Were these customers' stored features zero that day, or only the served "
            "ones?",
            sql=f"""
                SELECT count(*) AS all_zero_requests,
                       count(f.customer_id) AS with_stored_row,
                       round(avg((f.monthly_price > 0)::INT), 3) AS share_priced_in_store,
                       round(avg((f.sessions_28d > 0)::INT), 3) AS share_active_in_store
                FROM serving.predictions p
                LEFT JOIN feature_store.customer_features f
                  ON f.customer_id = p.customer_id
                 AND f.event_timestamp = p.request_ts::DATE::TIMESTAMP
                WHERE p.source = 'online' AND p.status = 'ok' AND {all_zero("p")}""",
            evidence="stored-values",
            finding="the store holds ordinary values for nearly every one of them (a price "
            "above 0, most of them active): the zeros were never stored, the server made them "
            "up when the lookup gave out; "
            + (
                "the serializer change and the OS patch in the changelog touch no feature"
                if self._serializer_day is not None
                else "the OS patch in the changelog touches no feature"
            ),
            found=lambda f: (
                num(f["all_zero_requests"][0]) > 0
                and num(f["with_stored_row"][0]) >= 0.9 * num(f["all_zero_requests"][0])
                and num(f["share_priced_in_store"][0]) >= STORED_PRICED
            ),
        )

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        change = calendar.at(self.params.onset_day, CHANGE_HOUR)
        by_hour = con.sql(
            f"""
            SELECT request_ts::DATE AS day, hour(request_ts) AS hour,
                   request_ts >= $change AS after, count(*) AS n,
                   sum(({all_zero()})::INT) AS zero
            FROM serving.predictions WHERE source = 'online' AND status = 'ok'
            GROUP BY ALL
            """,
            params={"change": change},
        ).pl()
        after = by_hour.filter(pl.col("after"))
        after = after.with_columns(
            pl.Series("p", expected_by_hour(after, self.miss_share, calendar), dtype=pl.Float64)
        )
        expected = float((after["n"] * after["p"]).sum())
        observed = int(after["zero"].sum() or 0)
        before = int(by_hour.filter(~pl.col("after"))["zero"].sum() or 0)
        quiet = int(after.filter(pl.col("hour").is_in(QUIET_HOURS))["zero"].sum() or 0)
        checks = [
            Check(
                name="online requests at busy hours are scored on an all-zero vector",
                passed=observed > 0 and observed >= 0.5 * expected and before == 0 and quiet == 0,
                detail=f"{observed} all-zero online requests after the change (expected "
                f"~{expected:.0f}), {before} before it, {quiet} at quiet hours after it",
            )
        ]
        peak_rows = after.filter(pl.col("hour").is_in(PEAK_HOURS))
        peak_n = int(peak_rows["n"].sum() or 0)
        peak_expected = float((peak_rows["n"] * peak_rows["p"]).sum()) / peak_n if peak_n else 0.0
        differs = con.execute(
            f"""
            SELECT o.request_ts >= $change AS after,
                   count(*) AS n, avg((abs(o.score - b.score) > 1e-6)::INT) AS share
            FROM serving.predictions o
            JOIN serving.predictions b
              ON b.customer_id = o.customer_id AND b.source = 'batch'
             AND b.request_ts::DATE = o.request_ts::DATE
            WHERE o.source = 'online' AND o.status = 'ok'
              AND hour(o.request_ts) IN ({", ".join(map(str, PEAK_HOURS))})
            GROUP BY 1
            """,
            {"change": change},
        ).fetchall()
        share = {a: (n, s) for a, n, s in differs}
        n_after, share_after = share.get(True, (0, 0.0))
        _, share_before = share.get(False, (0, 0.0))
        checks.append(
            Check(
                name="online scores at peak disagree with the same customers' batch scores",
                passed=share_after > 0
                and share_after >= 0.5 * peak_expected
                and share_before <= 0.01,
                detail=f"share of peak-hour online scores differing from that morning's batch "
                f"score: {share_before:.3f} before the change, {share_after:.3f} after "
                f"({n_after} requests; expected ~{peak_expected:.3f})",
            )
        )
        # Quantiles over the successes, not min/max: an unrelated incident or another change may
        # slow or fail some of these requests after the client has filled in the zeros.
        n_zero, lo, hi, not_ok = con.execute(
            f"""
            SELECT count(*) FILTER (WHERE status = 'ok'),
                   quantile_cont(latency_ms, 0.05) FILTER (WHERE status = 'ok'),
                   quantile_cont(latency_ms, 0.95) FILTER (WHERE status = 'ok'),
                   count(*) FILTER (WHERE status <> 'ok')
            FROM serving.predictions WHERE source = 'online' AND {all_zero()}
            """
        ).fetchall()[0]
        limit = self.params.deadline_ms + OVERHEAD_MS[1] + 0.01
        checks.append(
            Check(
                name="the all-zero requests answered 200 at the lookup deadline",
                passed=n_zero > 0 and lo >= self.params.deadline_ms and hi <= limit,
                detail=f"{n_zero} all-zero requests answered ok (and {not_ok} failed later), "
                f"latency p05-p95 {fmt(lo)}-{fmt(hi)} ms (deadline {self.params.deadline_ms:g} ms)",
            )
        )
        return checks
