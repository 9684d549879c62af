"""The hook points stages expose to faults: name -> the value that flows through it."""

HOOK_POINTS: dict[str, str] = {
    "ingest.activity": "one day's raw viewing-activity rows (Polars frame) as they land in raw tables",
    "ingest.billing": "one day's raw billing events (Polars frame)",
    "ingest.tickets": "one day's raw support tickets (Polars frame)",
    "features.imputation": "the feature job's fill values for that day (dict feature -> value)",
    "features.rows": "one day's computed feature rows after imputation (Polars frame)",
    "materialize.online": "the rows written to the online store at a materialization (Polars frame)",
    "train.dataset": "the point-in-time training set before the split (Polars frame)",
    "serve.features": "the features the model server scores for a batch (Polars frame)",
    "serve.scores": "the scored batch with decisions (Polars frame)",
    "retrieve.query_encoder": "the ticket encoder the retrieval service uses for queries",
    "monitor.metrics": "one day's metric samples before they are stored (Polars frame)",
}
