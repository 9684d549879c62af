"""Every ops-console action: its id, what it does in plain words, its parameters (validated at the
API edge) and how long, in simulated time, the change takes to reach production.

An action this version cannot apply to the running stack is listed with `available` false: the
console and the API say so, and applying it changes nothing.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from sandbox.pipeline.features import IMPUTED_FEATURES
from sandbox.pipeline.release import TRAINING_SNAPSHOTS
from sandbox.product import DEVICES
from sandbox.schema import MODEL_SERVER

SET_THRESHOLD = "set-decision-threshold"
SET_FILL = "set-imputation-fill"
PIN_VERSION = "pin-served-version"
MOVE_ALIAS = "move-alias"
ROLLBACK = "rollback-deploy"
REBUILD_INDEX = "rebuild-index"
BACKFILL_ONLINE_STORE = "backfill-online-store"
RETRAIN = "retrain"
SET_DRIFT_WINDOW = "set-drift-reference-window"
PAUSE_JOB = "pause-job"
RESUME_JOB = "resume-job"
RESTORE_SERIES = "restore-metric-series"
RERUN_BATCH = "rerun-batch-scoring"
QUARANTINE_RELEASE = "quarantine-app-release"
COUNT_AS_FAILED = "count-as-failed-charge"

# The scheduled jobs of the running stack a pause applies to. The feature job's output reaches
# production only through the online-store load, so pausing either keeps the online store as it was.
FEATURE_JOB = "feature-job"
MATERIALIZATION_JOB = "materialization"
DRIFT_MONITOR_JOB = "drift-monitor"
ONLINE_STORE_JOBS = (FEATURE_JOB, MATERIALIZATION_JOB)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ThresholdParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(
        gt=0.0, lt=1.0, description="Score at or above which a customer is flagged."
    )


# How a fill value is chosen: the one given, or what mean imputation should fill with, the
# feature's mean over the training rows of the model the daily batch serves (the gateway reads it
# off the world and records it as the fill value).
FILL_POLICIES = ("value", "training-mean")


class FillParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    feature: Literal[IMPUTED_FEATURES] = Field(  # type: ignore[valid-type]
        description="The imputed feature whose fill value changes."
    )
    policy: Literal[FILL_POLICIES] = Field(  # type: ignore[valid-type]
        "value",
        description="value: fill with fill_value; training-mean: with the feature's mean over "
        "the training rows of the served model.",
    )
    fill_value: float | None = Field(
        None,
        ge=0.0,
        le=10_000.0,
        validate_default=True,
        description="The value missing inputs are filled with from now on (policy value).",
    )

    @field_validator("fill_value")
    @classmethod
    def _given_for_value_only(cls, v: float | None, info: ValidationInfo) -> float | None:
        policy = info.data.get("policy", "value")
        if policy == "value" and v is None:
            raise ValueError("a fill value is needed with policy value")
        if policy != "value" and v is not None:
            raise ValueError(f"policy {policy} chooses the fill value: leave it empty")
        return v


class VersionParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(
        min_length=1, max_length=20, pattern=r"^\d+$", description="A registered version."
    )


class AliasParams(VersionParams):
    alias: str = Field(
        "champion", min_length=1, max_length=40, pattern=r"^[a-z][a-z0-9_-]*$", description="Alias."
    )


# The services whose deployments a rollback takes back: the model server's model version, code
# and configuration; the retrieval service's ticket encoder; the feature server's code and
# configuration, which load the online store (`RollbackParams.service`).


class RollbackParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: Literal["model-server", "retrieval", "feature-server"] = Field(
        MODEL_SERVER, description="The service whose deployment goes back."
    )


def rolls_back(action: str, params: dict[str, Any], service: str) -> bool:
    """Whether an applied action is a rollback of `service`."""
    return action == ROLLBACK and params.get("service", MODEL_SERVER) == service


class WindowParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    days: int = Field(ge=1, le=42, description="Days of the reference window.")
    fixed: bool = Field(True, description="A fixed window (the training period), not trailing.")


class DaysParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    days: int = Field(7, ge=1, le=42, description="How many of the latest days.")


class ReleaseParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: Literal[tuple(DEVICES)] = Field(  # type: ignore[valid-type]
        description="The device family whose app reports the viewing rows."
    )
    app_version: str = Field(
        pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$",
        max_length=20,
        description="The app release, as the viewing rows report it (for example 5.2.0).",
    )


class StatusParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: str = Field(
        pattern=r"^[a-z][a-z_]{0,29}$",
        description="A status the billing events report, other than failed.",
    )


class JobParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job: Literal["feature-job", "materialization", "drift-monitor"] = Field(
        description="The scheduled job."
    )


class RetrainParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label_maturity_days: int = Field(
        14, ge=0, le=28, description="Only rows whose label is at least this old."
    )
    days: int = Field(
        TRAINING_SNAPSHOTS, ge=2, le=28, description="How many score dates to train on."
    )
    newest_score_date: dt.date | None = Field(
        None,
        description="The newest score date to train on (left empty: the newest whose labels "
        "are old enough); an earlier one keeps the days after it out of the training set.",
    )


@dataclass(frozen=True)
class Action:
    id: str
    description: str
    params: type[BaseModel]
    delay: dt.timedelta  # from the request to the change being in effect, simulated
    available: bool = False
    # The component whose logs tell the change's progress.
    service: str = "ops"
    # The kind of the changelog entries it writes (`ops.changelog.kind`).
    kind: Literal["deploy", "config", "oncall"] = "config"

    def logged_by(self, params: dict[str, Any]) -> str:
        """The component whose logs tell this change's progress: a rollback's, the service
        rolled back."""
        return str(params.get("service", self.service)) if self.id == ROLLBACK else self.service

    def describe(self) -> dict[str, Any]:
        """What the console and `GET /api/actions` show: nothing about any planted fault."""
        return {
            "id": self.id,
            "description": self.description,
            "params_schema": self.params.model_json_schema(),
            "available": self.available,
            "delay_minutes": round(self.delay.total_seconds() / 60),
        }


def _minutes(n: float) -> dt.timedelta:
    return dt.timedelta(minutes=n)


ACTIONS: tuple[Action, ...] = (
    Action(
        SET_THRESHOLD,
        "Change the model server's decision threshold: customers scoring at or above it are "
        "flagged for the retention offer.",
        ThresholdParams,
        _minutes(10),
        available=True,
        service="model-server",
    ),
    Action(
        SET_FILL,
        "Change the value the feature job fills a missing input with, given or by policy, and "
        "reload the online store with it (the model server reads the reloaded store).",
        FillParams,
        _minutes(45),
        available=True,
        service="materialization",
    ),
    Action(
        PIN_VERSION,
        "Pin the model server to one registered version of the churn model: it serves that "
        "version, whatever the registry's aliases say.",
        VersionParams,
        _minutes(15),
        available=True,
        kind="deploy",
        service="model-server",
    ),
    Action(
        MOVE_ALIAS,
        "Move a registry alias of the churn model (such as champion) to another registered "
        "version; a model server that follows champion loads the version it now names.",
        AliasParams,
        _minutes(5),
        available=True,
        kind="deploy",
        service="model-server",
    ),
    Action(
        ROLLBACK,
        "Roll a service back to its deployment before the current one: the model server to the "
        "model version, threshold, code and configuration it ran then; the retrieval service "
        "to the ticket encoder it ran then (the article index stays as it is); the feature "
        "server to the code and configuration that loaded the online store then (the store is "
        "reloaded).",
        RollbackParams,
        _minutes(20),
        available=True,
        kind="deploy",
        service="model-server",
    ),
    Action(
        SET_DRIFT_WINDOW,
        "Change the reference window the nightly drift report compares each day against: the "
        "last days of the training period (fixed), or the days just before the report day "
        "(trailing).",
        WindowParams,
        _minutes(30),
        available=True,
        service="drift-monitor",
    ),
    Action(
        REBUILD_INDEX,
        "Re-embed every help-center article with the deployed encoder and swap the index.",
        NoParams,
        dt.timedelta(hours=3),
        available=True,
        kind="deploy",
        service="retrieval",
    ),
    Action(
        BACKFILL_ONLINE_STORE,
        "Recompute the latest features from the offline store and reload the online store.",
        NoParams,
        dt.timedelta(hours=2),
        available=True,
        kind="oncall",
        service="materialization",
    ),
    Action(
        RERUN_BATCH,
        "Run today's batch scoring again: every customer in the online store scored with the "
        "model version, threshold and fill values served now; the new run's flagged customers "
        "replace the retention list.",
        NoParams,
        dt.timedelta(hours=1),
        available=True,
        kind="oncall",
        service="batch-scoring",
    ),
    Action(
        RESTORE_SERIES,
        "Restore the model server's metric series that no longer have points: recompute them "
        "from the request logs for the latest days, and every 5 minutes from then on.",
        DaysParams,
        _minutes(30),
        available=True,
        kind="oncall",
        service="model-server",
    ),
    Action(
        QUARANTINE_RELEASE,
        "Quarantine the watch time one app release reports: the feature job treats the minutes "
        "watched in its viewing rows as not reported (as it treats missing values), recomputes "
        "the watch-time features of the customers who have such rows and reloads the online "
        "store. Their sessions still count.",
        ReleaseParams,
        _minutes(45),
        available=True,
        service="feature-job",
    ),
    Action(
        COUNT_AS_FAILED,
        "Count billing events of one more status as failed charges: the feature job recomputes "
        "the payment failures of the customers who have such events and reloads the online "
        "store.",
        StatusParams,
        _minutes(45),
        available=True,
        service="feature-job",
    ),
    Action(
        PAUSE_JOB,
        "Pause a scheduled job: its runs are skipped from then on, until it is resumed. Pausing "
        "the feature job or the materialization keeps the online store as last loaded; pausing "
        "the drift monitor stops the nightly drift report.",
        JobParams,
        _minutes(5),
        available=True,
        service="scheduler",
    ),
    Action(
        RESUME_JOB,
        "Resume a paused scheduled job: its runs go on from the next one due. The runs skipped "
        "while it was paused are not made up; a backfill loads the online store at once.",
        JobParams,
        _minutes(5),
        available=True,
        service="scheduler",
    ),
    Action(
        RETRAIN,
        "Train a new churn-model version on a window of score dates whose labels are old enough "
        "(the latest, or those up to a date you choose), as the scheduled training job does, and "
        "deploy it (the servers keep their threshold).",
        RetrainParams,
        dt.timedelta(hours=6),
        available=True,
        kind="deploy",
        service="training",
    ),
)
CATALOG: dict[str, Action] = {a.id: a for a in ACTIONS}
