"""The hook points stages expose to faults and decoys: name -> the value that flows through it.

`ctx.day` is the simulated day the value belongs to (for `train.*`, the release's first serving
day; for `monitor.metrics`, the last visible day, since the series covers the whole history).
"""

HOOK_POINTS: dict[str, str] = {
    "world.state": "the simulated customers' latent state at the start of a day "
    "(world.behaviour.WorldState; changes here are real-world changes, not pipeline ones)",
    "ingest.activity": "one day's raw viewing-activity rows (Polars frame) as they land in raw tables",
    "ingest.billing": "one day's raw billing events (Polars frame)",
    "ingest.tickets": "one day's raw support tickets (Polars frame)",
    "features.imputation": "the feature job's fill values for that day (dict feature -> value)",
    "features.rows": "one day's computed feature rows after imputation (Polars frame)",
    "materialize.online": "the rows written to the online store at a materialization (Polars frame)",
    "train.releases": "the churn-model releases of the world (list of pipeline.release.Release); "
    "the first is the champion trained at the end of pre-history",
    "train.dataset": "a release's point-in-time training set before the split (Polars frame)",
    "serve.traffic": "a multiplier on the day's online request volume (float, 1.0 = normal)",
    "serve.features": "the requests the model server scores (Polars frame: customer_id, "
    "request_ts, source, latency_ms, status and the model's features)",
    "serve.scores": "the scored requests with score, threshold and decision (Polars frame)",
    "retrieve.query_encoder": "the ticket encoder the retrieval service uses for queries",
    "monitor.metrics": "every metric series before it is stored and alerted on (Polars frame)",
    "monitor.drift_reference": "the reference a day's drift report compares against "
    "(None = the training set; or a Polars frame of feature rows)",
}
