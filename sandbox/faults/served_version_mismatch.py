"""The registry names one model version as champion; the model servers load another.

Story: the ML team runs a feature-group ablation: a churn model trained without one group of
features (say watch time, because the player team wants to sample that telemetry), to size how much
the model depends on it. They register it like every experiment, under the alias `challenger`, and
leave the champion alias on the production version. A few days earlier the platform team changed
the model servers' model source so they pick up new registry versions without a redeploy — and the
lookup resolves the newest registered version, not `@champion`. The servers load the ablation the
morning after it is registered. Nothing errors: its inputs are a subset of the served features, it
calibrated its own threshold so the flagged share stays near 10%, and the registry still shows v1 as
champion. The retention list is simply built by a weaker model, and churn among the customers it
misses goes up.

Its trail by difficulty: guided names the ablation in its run name, tags and changelog, and the
registry lookup in the model server's changelog entry; standard registers it as a plain
challenger run, and the changelog speaks of a config update; hard gives it an ordinary run name
and tags, logs neither change, and registers an earlier challenger that never serves, so only
comparing the versions served with the versions registered shows which one took over.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar, Literal

import duckdb
from pydantic import Field, field_validator

from sandbox.clock import Calendar
from sandbox.difficulty import Tier
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
from sandbox.faults.measure import quality_around, quality_check, versions_around
from sandbox.faults.toolkit import flagged_share, mean_score, num, window
from sandbox.pipeline.features import MODEL_FEATURES
from sandbox.pipeline.registry import CHAMPION
from sandbox.pipeline.release import Release, Rollout

ALIAS = "challenger"
FeatureGroup = Literal["watch_time", "viewing", "support", "billing", "playback", "account"]
FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "watch_time": ("avg_daily_minutes_7d", "avg_daily_minutes_28d", "minutes_per_session_28d"),
    "viewing": ("sessions_7d", "sessions_28d", "sessions_trend", "days_since_last_session"),
    "support": ("tickets_30d", "unresolved_tickets_30d"),
    "billing": ("payment_failures_30d", "monthly_price"),
    "playback": ("playback_errors_7d",),
    "account": ("tenure_days",),
}
GROUP_WORDS = {
    "watch_time": "watch-time",
    "viewing": "viewing-activity",
    "support": "support-ticket",
    "billing": "billing",
    "playback": "playback-error",
    "account": "account-tenure",
}
# Production AUC of the served ablation falls at least this far below the champion's (without the
# watch-time group it falls by ~0.08; week-to-week noise in a 10k-customer world is ~0.03).
AUC_DROP = 0.03
REGISTERED = re.compile(r"version (\d+) registered(?: and aliased (\w+))?")
LOADED_PATTERN = r'"model_version": "([2-9]|[0-9]{2,})", "threshold"'
# At hard, another challenger is registered this many days before the ablation and never served.
EARLIER_CHALLENGER_DAYS = 10


class Params(FaultParams):
    onset_day: int = Field(
        15,
        ge=2,
        le=42,
        description="Production day the servers first load the ablation (2..42: day 1 belongs to "
        "the initial champion).",
    )
    ramp_days: int = Field(0, ge=0, le=0, description="A model load is a step change.")
    dropped_groups: list[FeatureGroup] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["watch_time"],  # type: ignore[arg-type]
        min_length=1,
        description="Feature groups the ablation was trained without; must include watch_time "
        "(the only group the model cannot do without: production AUC falls from ~0.75 to ~0.66); "
        "each further group costs a little more.",
    )

    @field_validator("dropped_groups")
    @classmethod
    def _some_features_left(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("list each feature group once")
        if "watch_time" not in v:
            raise ValueError(
                "must include watch_time: without it the ablation ranks customers as well as the "
                "champion, and serving it does no measurable harm"
            )
        if len(v) > len(FEATURE_GROUPS) - 2:
            raise ValueError(
                f"drop at most {len(FEATURE_GROUPS) - 2} of the {len(FEATURE_GROUPS)} groups: an "
                "ablation keeps most of the model"
            )
        return v


class ServedVersionMismatch(Fault[Params]):
    id: ClassVar[str] = "served-version-mismatch"
    actions: ClassVar[dict[str, Verdict]] = {
        "pin-served-version": "fixes",
        "move-alias": "no effect",
        "rollback-deploy": "mitigates",
        "retrain": "no effect",
        "set-decision-threshold": "no effect",
        "set-imputation-fill": "no effect",
    }
    title: ClassVar[str] = "Servers load the newest registered model, not the champion"
    rating: ClassVar[Literal["easy", "medium", "hard"]] = "medium"
    observation: ClassVar[str] = (
        "Production AUC and retention precision drop from one day to the next while the registry "
        "shows the same champion, the flagged share stays near 10% and nothing errors."
    )

    @property
    def dropped(self) -> tuple[str, ...]:
        return tuple(f for g in self.params.dropped_groups for f in FEATURE_GROUPS[g])

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(f for f in MODEL_FEATURES if f not in self.dropped)

    def _slug(self) -> str:
        return "-".join(GROUP_WORDS[g] for g in self.params.dropped_groups)

    def _words(self) -> str:
        return " and ".join(GROUP_WORDS[g] for g in self.params.dropped_groups)

    @property
    def _earlier_challenger_day(self) -> int | None:
        """At hard, the day an earlier challenger is registered (never served); None when
        there is none (other tiers, or no day for it after the initial release)."""
        day = self.params.onset_day - EARLIER_CHALLENGER_DAYS
        return day if self.tier == "hard" and day >= 2 else None

    @hook("train.releases")
    def add_release(self, value: list[Release], ctx: HookContext) -> list[Release]:
        onset = self.params.onset_day
        date = ctx.calendar.date(onset - 1)
        run_name, tags = {
            "guided": (
                f"churn-gbm-ablation-no-{self._slug()}",
                {
                    "purpose": "ablation",
                    "ablation_dropped": ",".join(self.params.dropped_groups),
                    "requested_by": "ml-team",
                    "notes": f"Sizes the model's dependence on {self._words()} features.",
                },
            ),
            "standard": (
                f"churn-gbm-{date:%Y%m%d}-challenger",
                {"purpose": "experiment", "requested_by": "ml-team"},
            ),
            "hard": ("", {}),  # named and tagged like every scheduled retrain
        }[self.tier]
        release = Release(
            day=onset, features=self.features, alias=ALIAS, run_name=run_name, tags=tags
        )
        releases = [r for r in value if r.day != onset] + [release]
        earlier = self._earlier_challenger_day
        if earlier is not None:
            releases = [r for r in releases if r.day != earlier] + [
                Release(day=earlier, alias=ALIAS)
            ]
        return sorted(releases, key=lambda r: r.day)

    @hook("serve.rollout")
    def keep_earlier_challenger_offline(self, rollout: Rollout, ctx: HookContext) -> Rollout:
        # Before the model source changed, a challenger was registered and left unserved.
        if ctx.day == self._earlier_challenger_day:
            return dataclasses.replace(rollout, deploy=False)
        return rollout

    def tells(self, tier: Tier) -> tuple[str, ...]:
        standard = ("ablation", "registry lookup", f"no-{self._slug()}")
        hard = (*standard, "challenger registered", "model source", "-challenger")
        return {"guided": (), "standard": standard, "hard": hard}[tier]

    def _source_change_title(self) -> str | None:
        return {
            "guided": "model-server: model source switched to registry lookup",
            "standard": "model-server: config update",
            "hard": None,
        }[self.tier]

    def _registered_title(self) -> str | None:
        return {
            "guided": f"churn-model: {self._words()} ablation registered as challenger",
            "standard": "churn-model: challenger registered for offline comparison",
            "hard": None,
        }[self.tier]

    def changelog(self, calendar: Calendar) -> list[dict[str, Any]]:
        onset = self.params.onset_day
        if self.tier == "hard":
            return self._hard_noise()
        bodies = {
            "guided": (
                "Servers resolve churn-model from the registry at startup and on each "
                "nightly restart, so a new version no longer needs an image redeploy.",
                f"Same pipeline without the {self._words()} features, to size how much "
                "we depend on them. Registered for offline comparison; champion unchanged.",
            ),
            "standard": (
                "Model-server settings moved to the shared deployment config.",
                "Registered for offline comparison; champion unchanged.",
            ),
        }[self.tier]
        return [
            {
                "day": max(onset - 3, 1),
                "hour": 14.0,
                "kind": "config",
                "service": "model-server",
                "title": self._source_change_title(),
                "body": bodies[0],
                "author": "ml-platform",
            },
            {
                "day": onset - 1,
                "hour": 16.5,
                "kind": "experiment",
                "service": "churn-model",
                "title": self._registered_title(),
                "body": bodies[1],
                "author": "ml-team",
            },
        ]

    def _hard_noise(self) -> list[dict[str, Any]]:
        """Ordinary entries around the onset: the earlier challenger's, and a server patch."""
        onset, earlier = self.params.onset_day, self._earlier_challenger_day
        entries = [
            {
                "day": max(onset - 3, 1),
                "hour": 14.0,
                "kind": "deploy",
                "service": "model-server",
                "title": "model-server: base image patched",
                "body": "OS and Python security updates; no functional change.",
                "author": "ml-platform",
            }
        ]
        if earlier is not None:
            entries.append(
                {
                    "day": earlier - 1,
                    "hour": 16.5,
                    "kind": "experiment",
                    "service": "churn-model",
                    "title": "churn-model: new candidate version for offline comparison",
                    "body": "Retrained on a fresh window; compared offline before any promotion.",
                    "author": "ml-team",
                }
            )
        return entries

    def symptoms(self, calendar: Calendar) -> list[Symptom]:
        return [mean_score(), flagged_share()]

    def answer_key(self, calendar: Calendar) -> AnswerKey:
        onset = self.params.onset_day
        w = window(calendar, onset)
        start = w.start
        registered = calendar.date(onset - 1)
        dropped = ", ".join(self.dropped)
        return AnswerKey(
            fault_id=self.id,
            title=self.title,
            root_cause=(
                f"On {registered} the ML team registered an ablation of the churn model trained "
                f"without the {self._words()} features ({dropped}) under the alias '{ALIAS}'; "
                f"'{CHAMPION}' stayed on the production version. A model-server config change a "
                "few days earlier made the servers resolve the newest registered version instead "
                f"of @{CHAMPION}, so from the {start} 06:00 batch the ablation scores production "
                "and builds the retention list. It recalibrated its own threshold, so ~10% are "
                "still flagged and nothing errors, but it ranks churners worse: production AUC and "
                "precision fall and at-risk customers go without an offer."
            ),
            propagation=[
                "registry: ablation registered as a new version with alias challenger; champion "
                "unchanged",
                "model-server: source resolves the latest version, loads the ablation at the "
                f"{start} restart (model_loaded log line)",
                "serving: serving.predictions.model_version and crm.retention_offers.model_version "
                "switch to the ablation's version",
                "retention: the flagged list is built from a weaker ranking; fewer real churners "
                "get offers",
                "labels (14 days later): production AUC and precision drop; the champion's holdout "
                "metrics in the registry still look fine",
            ],
            evidence=[
                w.column(
                    "served-version",
                    "serving.predictions.model_version",
                    "every prediction from onset carries the ablation's version, not "
                    "the champion's",
                ),
                w.column(
                    "offers-version",
                    "crm.retention_offers.model_version",
                    "retention offers are sent from the ablation's scores",
                ),
                w.log(
                    "model-loaded",
                    LOADED_PATTERN,
                    "model-server model_loaded line for the new version, while the "
                    "training log says that version was aliased challenger",
                ),
                w.column(
                    "training-set",
                    "training.churn_training_set.model_version",
                    "a second training set appears the day before onset; the MLflow "
                    "run behind it lists fewer features and ablation tags",
                    start=registered,
                ),
                w.column(
                    "production-auc",
                    "monitoring.model_performance_daily.auc",
                    "daily production AUC steps down at onset (visible once labels mature)",
                ),
                *self._changelog_evidence(calendar),
            ],
            acceptable_fixes=[
                "Pin the servers to models:/churn-model@champion (or an explicit version) and "
                "roll them back to the champion now.",
                "Make the server log and expose the alias it resolved, and alert when the served "
                "version differs from the registry's champion.",
                "Keep experiments out of the production model name (a separate registered model "
                "or experiment-only registry), or gate loading on an alias.",
                "Re-score the affected days with the champion and send the missed offers.",
            ],
            probes=[
                "How did you establish which version actually served, and where does the registry "
                "disagree with it?",
                "Why did the flagged share and the error rate not reveal anything?",
                "What would you ship first, and how would you confirm it worked?",
                "What experiment would you run next to size the damage (e.g. re-score the window "
                "with the champion and compare against the labels)?",
                "How would you design model loading so this cannot happen again?",
            ],
        )

    def _changelog_evidence(self, calendar: Calendar) -> list[Evidence]:
        onset = self.params.onset_day
        w = window(calendar, onset)
        source, registered = self._source_change_title(), self._registered_title()
        evidence = []
        if source is not None:
            evidence.append(
                w.changelog(
                    "model-source-change",
                    source,
                    "the config change that made servers load the newest version",
                    start=calendar.date(max(onset - 3, 1)),
                )
            )
        if registered is not None:
            evidence.append(
                w.changelog(
                    "ablation-registered",
                    registered,
                    "the experiment that became the served model",
                    start=calendar.date(onset - 1),
                )
            )
        return evidence

    def _last_step(self, calendar: Calendar) -> Step:
        """What ties the version switch to a change: the changelog while it tells, else the
        registered versions against the served ones."""
        source = self._source_change_title()
        if source is None:
            return Step(
                question="Which registered versions were ever served, and from when?",
                sql="""
                    WITH trained AS (
                        SELECT model_version, min(score_date) AS trained_from
                        FROM training.churn_training_set GROUP BY 1
                    ), served AS (
                        SELECT model_version, count(DISTINCT request_ts::DATE) AS days_served
                        FROM serving.predictions WHERE source = 'batch' GROUP BY 1
                    )
                    SELECT t.model_version, t.trained_from,
                           coalesce(s.days_served, 0) AS days_served
                    FROM trained t LEFT JOIN served s USING (model_version)
                    ORDER BY t.model_version::INT""",
                evidence="training-set",
                finding="an earlier challenger never served, yet the next version registered "
                "as challenger serves every day from onset: the servers load the newest version",
                found=lambda f: (
                    f.height >= 3
                    and (f["days_served"] == 0).any()
                    and num(f["days_served"][-1]) > 0
                ),
            )
        return Step(
            question="What changed around the day the version switched?",
            sql=f"""
                SELECT ts, kind, service, title, body FROM ops.changelog
                WHERE ts::DATE BETWEEN DATE '{calendar.date(max(self.params.onset_day - 5, 1))}'
                                   AND DATE '{calendar.date(self.params.onset_day)}'
                ORDER BY ts""",
            evidence="model-source-change",
            finding="a model-server config change, then a challenger registered",
            found=lambda f: (f["title"] == source).any(),
        )

    def investigation(self, calendar: Calendar) -> list[Step]:
        return [
            Step(
                question="Which model version scored the daily batch, and since when?",
                sql="""
                    SELECT model_version, any_value(threshold) AS threshold,
                           min(request_ts)::DATE AS first_day, max(request_ts)::DATE AS last_day,
                           round(avg(decision::INT), 4) AS flagged_share
                    FROM serving.predictions WHERE source = 'batch'
                    GROUP BY 1 ORDER BY first_day""",
                evidence="served-version",
                finding="a new version takes over at onset; the flagged share barely moves",
                found=lambda f: f.height >= 2,
            ),
            Step(
                question="What did the registry and the model servers say about that version?",
                sql="""
                    SELECT ts, service, event, message, attrs FROM telemetry.logs
                    WHERE event IN ('model_registered', 'model_loaded') ORDER BY ts""",
                evidence="model-loaded",
                finding="the version the servers loaded was registered with alias challenger",
                found=lambda f: bool(_challengers_loaded(f["event"], f["message"], f["attrs"])),
            ),
            Step(
                question="Did production quality change with the version?",
                sql="""
                    SELECT p.model_version, count(*) AS scored, round(avg(l.churned), 4)
                               AS churn_rate,
                           round(avg(l.churned) FILTER (WHERE p.decision), 4) AS precision
                    FROM serving.predictions p JOIN labels.churn_labels l
                      ON l.customer_id = p.customer_id AND l.score_date = p.request_ts::DATE
                    WHERE p.source = 'batch'
                      AND l.label_available_at <= (SELECT max(request_ts) FROM serving.predictions)
                    GROUP BY 1 ORDER BY 1""",
                evidence="production-auc",
                finding="the challenger's flagged customers churn less often than the champion's "
                "(lower precision), once labels have matured",
                found=lambda f: (
                    f.height >= 2
                    and f["precision"].drop_nulls().len() >= 2
                    and f["precision"][-1] < 0.85 * f["precision"][0]
                ),
            ),
            self._last_step(calendar),
        ]

    def verify(self, con: duckdb.DuckDBPyConnection, calendar: Calendar) -> list[Check]:
        onset = self.params.onset_day
        before, after = versions_around(con, calendar, onset)
        aliases = _registered_aliases(con)
        champions = {v for v, alias in aliases.items() if alias == CHAMPION}
        served_after = sorted(after)
        checks = [
            Check(
                name="servers run a challenger instead of the champion after onset only",
                passed=bool(before)
                and set(before) <= champions
                and bool(served_after)
                and all(aliases.get(v) == ALIAS for v in served_after),
                detail=f"batch versions before onset {sorted(before)}, after {served_after}; "
                f"registry aliases {aliases or 'none'}",
            )
        ]
        offers = con.execute(
            """
            SELECT list(DISTINCT model_version ORDER BY model_version)
                       FILTER (WHERE offered_at < $onset),
                   list(DISTINCT model_version ORDER BY model_version)
                       FILTER (WHERE offered_at >= $onset)
            FROM crm.retention_offers
            """,
            {"onset": calendar.midnight(onset)},
        ).fetchall()[0]
        checks.append(
            Check(
                name="retention offers come from the challenger's scores after onset",
                passed=bool(offers[1]) and all(aliases.get(v) == ALIAS for v in offers[1]),
                detail=f"offer versions before onset {offers[0]}, after {offers[1]}",
            )
        )
        old, new = quality_around(con, calendar, onset, lookback_days=28)
        checks.append(
            quality_check(
                "production AUC falls after onset",
                old,
                new,
                lambda old, new: (
                    new.auc is not None and old.auc is not None and new.auc <= old.auc - AUC_DROP
                ),
                detail=f"before onset {old.describe()}; after {new.describe()} (expected an AUC "
                f"drop of at least {AUC_DROP})",
            )
        )
        return checks


def _registered_aliases(con: duckdb.DuckDBPyConnection) -> dict[str, str | None]:
    """model version -> the alias the training job gave it, from its model_registered log line."""
    rows = con.execute(
        "SELECT message FROM telemetry.logs WHERE event = 'model_registered' ORDER BY ts"
    ).fetchall()
    found = {}
    for (message,) in rows:
        match = REGISTERED.search(message)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def _challengers_loaded(events: Any, messages: Any, attrs: Any) -> set[str]:
    """Versions the servers loaded that the training job registered as challenger."""
    aliases: dict[str, str | None] = {}
    loaded: set[str] = set()
    for event, message, attr in zip(events, messages, attrs, strict=True):
        if event == "model_registered" and (match := REGISTERED.search(message)):
            aliases[match.group(1)] = match.group(2)
        elif event == "model_loaded" and (match := re.search(r'"model_version": "(\d+)"', attr)):
            loaded.add(match.group(1))
    return {v for v in loaded if aliases.get(v) == ALIAS}
