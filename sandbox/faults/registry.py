"""The fault catalog: built-in faults plus any registered through the `sandbox.faults` entry point."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from sandbox.faults.base import Fault
from sandbox.faults.duplicate_billing_events import DuplicateBillingEvents
from sandbox.faults.embedding_index_mismatch import EmbeddingIndexMismatch
from sandbox.faults.feature_nulls_wrong_mean import FeatureNullsWrongMean
from sandbox.faults.label_leakage import LabelLeakage
from sandbox.faults.metric_series_dropped import MetricSeriesDropped
from sandbox.faults.online_offline_skew import OnlineOfflineSkew
from sandbox.faults.online_store_stale import OnlineStoreStale
from sandbox.faults.payment_status_renamed import PaymentStatusRenamed
from sandbox.faults.retrain_immature_labels import RetrainImmatureLabels
from sandbox.faults.rolling_drift_reference import RollingDriftReference
from sandbox.faults.served_version_mismatch import ServedVersionMismatch
from sandbox.faults.serving_default_fallback import ServingDefaultFallback
from sandbox.faults.stale_decision_threshold import StaleDecisionThreshold
from sandbox.faults.training_time_travel import TrainingTimeTravel
from sandbox.faults.upstream_unit_change import UpstreamUnitChange

BUILTIN: tuple[type[Fault], ...] = (
    FeatureNullsWrongMean,
    LabelLeakage,
    RetrainImmatureLabels,
    TrainingTimeTravel,
    OnlineOfflineSkew,
    OnlineStoreStale,
    UpstreamUnitChange,
    PaymentStatusRenamed,
    DuplicateBillingEvents,
    MetricSeriesDropped,
    RollingDriftReference,
    ServingDefaultFallback,
    EmbeddingIndexMismatch,
    ServedVersionMismatch,
    StaleDecisionThreshold,
)
ENTRY_POINT_GROUP = "sandbox.faults"


@cache
def catalog() -> dict[str, type[Fault]]:
    faults: dict[str, type[Fault]] = {cls.id: cls for cls in BUILTIN}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Fault)):
            raise TypeError(f"entry point {ep.name!r} does not name a Fault subclass")
        if cls.id in faults:
            raise ValueError(f"fault id {cls.id!r} from entry point {ep.name!r} is already taken")
        faults[cls.id] = cls
    return faults


def get(fault_id: str) -> type[Fault]:
    try:
        return catalog()[fault_id]
    except KeyError:
        known = ", ".join(sorted(catalog()))
        raise KeyError(f"unknown fault {fault_id!r}; known faults: {known}") from None
