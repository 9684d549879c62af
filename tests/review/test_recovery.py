"""The recovery chart of the review: what it queries for a fault that declares its symptom, the
levels it reads off the rows (series from two sources on one time axis), and how the exports
show it."""

from __future__ import annotations

import datetime as dt

import duckdb

from sandbox.faults.toolkit import mean_score, served_mean
from sandbox.review import export, recovery

FEATURE = "avg_daily_minutes_7d"
# A series from another source than the predictions: the searches the retrieval service answered.
TOP1 = {
    "id": "mean_top1",
    "title": "Mean top-1 similarity",
    "value": "avg(top1_score)",
    "source": "retrieval.search_log",
    "where": "TRUE",
    "own": None,
    "rows": "searches",
}

KEY = {
    "faults": [
        {
            "fault_id": "feature-nulls-wrong-mean",
            "title": "Wrong fill",
            "evidence": [
                {"kind": "changelog", "ref": "x", "window_start": "2026-03-15"},
                {
                    "kind": "table_column",
                    "ref": "feature_store.customer_features.avg_daily_minutes_7d",
                    "window_start": "2026-03-16",
                },
            ],
            "symptoms": [
                served_mean(FEATURE).model_dump(),
                mean_score().model_dump(),
                TOP1,
            ],
        },
        {"fault_id": "no-symptom-declared", "title": "Other", "evidence": []},
    ]
}
ACTIONS = [
    {
        "seq": 3,
        "id": "set-imputation-fill",
        "at": "2026-04-13T01:00:00",
        "status": "applied",
        "effective_at": "2026-04-13T01:45:00",
        "verdict": "mitigates",
        "verdicts": [{"kind": "fault", "id": "feature-nulls-wrong-mean", "verdict": "mitigates"}],
    },
    {"seq": 4, "id": "retrain", "at": "2026-04-13T02:00:00", "status": "not available"},
]


def test_no_chart_before_an_action_is_applied() -> None:
    assert recovery.plan(ACTIONS[1:], KEY, dt.datetime(2026, 4, 13, 3)) == []


def test_the_symptom_before_and_after_the_action_against_the_level_before_the_fault() -> None:
    now = dt.datetime(2026, 4, 13, 8)
    (plan,) = recovery.plan(ACTIONS, KEY, now)
    assert plan.start == dt.datetime(2026, 4, 12, 13) and plan.end == now
    assert plan.baseline == (dt.datetime(2026, 3, 9), dt.datetime(2026, 3, 16))
    assert [s.id for s in plan.series] == ["served_avg_daily_minutes_7d", "mean_score", "mean_top1"]

    con = duckdb.connect()
    con.execute("CREATE SCHEMA serving")
    con.execute(
        "CREATE TABLE serving.predictions (request_ts TIMESTAMP, source VARCHAR, "
        "client VARCHAR, avg_daily_minutes_7d DOUBLE, score DOUBLE)"
    )
    rows = [
        ("2026-03-10 10:00", "online", "production", 50.0, 0.03),
        ("2026-03-10 10:00", "batch", "production", 999.0, 0.9),  # batch rows do not count
        ("2026-04-12 20:10", "online", "production", 80.0, 0.02),
        ("2026-04-12 21:10", "online", "production", 84.0, 0.02),
        ("2026-04-13 01:10", "online", "production", 70.0, 0.02),  # the bucket the change is in
        ("2026-04-13 06:20", "online", "workspace", 52.0, 0.027),
        ("2026-04-13 06:40", "online", "workspace", 54.0, 0.029),
    ]
    con.executemany("INSERT INTO serving.predictions VALUES (?::TIMESTAMP, ?, ?, ?, ?)", rows)
    con.execute("CREATE SCHEMA retrieval")
    con.execute("CREATE TABLE retrieval.search_log (request_ts TIMESTAMP, top1_score DOUBLE)")
    con.executemany(
        "INSERT INTO retrieval.search_log VALUES (?::TIMESTAMP, ?)",
        [("2026-03-12 09:00", 0.6), ("2026-04-12 22:30", 0.3), ("2026-04-13 07:10", 0.58)],
    )
    queries = recovery.queries(plan)
    assert [q.series for q in queries] == [
        ("served_avg_daily_minutes_7d", "mean_score"),
        ("mean_top1",),
    ]
    answers = []
    for query in queries:
        ran = con.execute(query.sql, query.params)
        columns = [d[0] for d in ran.description]
        answers.append((query, recovery.Result(columns, [list(r) for r in ran.fetchall()])))
    chart = recovery.assemble(plan, answers)

    # Both sources' buckets on one axis: each series has a point, maybe empty, at every time.
    times = [p["t"] for p in chart["series"][0]["points"]]
    assert times == [p["t"] for p in chart["series"][2]["points"]]
    assert "2026-04-12T22:00:00" in times and "2026-04-13T07:00:00" in times
    top1 = chart["series"][2]
    assert (top1["baseline"], top1["before"], top1["after"]) == (0.6, 0.3, 0.58)
    assert top1["rows_label"] == "searches"
    assert chart["rows_label"] == "online requests"
    served = chart["series"][0]
    assert (served["baseline"], served["before"], served["after"]) == (50.0, 82.0, 53.0)
    assert served["recovered"] == round((82 - 53) / (82 - 50), 3)  # back most of the way
    assert top1["recovered"] == round((0.3 - 0.58) / (0.3 - 0.6), 3)
    assert [p["rows"] for p in served["points"] if p["rows"]] == [1, 1, 1, 2]
    assert chart["rows"] == 5 and chart["own_rows"] == 2
    assert chart["marks"] == [
        {
            "seq": 3,
            "action": "set-imputation-fill",
            "effective_at": "2026-04-13T01:45:00",
            "verdict": "mitigates",
        }
    ]

    review = {"actions_recovery": [chart]}
    md = _render_part(review)
    assert "Recovery: Wrong fill" in md and "| 2026-04-13T06:00:00 | 53.0 |" in md
    assert "(back 91% of the way to the level before the fault)" in md
    assert "<polyline" in _render_part(review, "html")


def test_recovered_says_how_far_the_series_came_back_toward_its_level_before_the_fault() -> None:
    assert recovery.recovered(50.0, 82.0, 50.0) == 1.0
    assert recovery.recovered(50.0, 82.0, 82.0) == 0.0
    assert recovery.recovered(50.0, 82.0, 90.0) == -0.25  # further away
    assert recovery.recovered(0.2, 0.0, 0.2) == 1.0  # a series that fell comes back up
    assert recovery.recovered(50.0, 50.0, 40.0) is None  # the fault had not moved it
    assert recovery.recovered(None, 82.0, 50.0) is None
    assert recovery.recovered_text(-0.25) == "25% further from the level before the fault"


def _render_part(review: dict, fmt: str = "md") -> str:
    """The recovery part of an export, rendered alone."""
    name = "review.md.j2" if fmt == "md" else "review.html.j2"
    source = export._env.loader.get_source(export._env, name)[0]  # type: ignore[union-attr]
    start = source.index("{% for c in r.actions_recovery %}")
    close = "{% endfor %}\n{% endfor %}" if fmt == "md" else "{% endfor %}</section>{% endfor %}"
    end = source.index(close, start) + len(close)
    return export._env.from_string(source[start:end]).render(r=review)
