"""The bar every fault is held to, as plain functions.

The project's catalog tests run them on every registered fault; a package that adds a fault
through the `sandbox.faults` entry point runs them on its own. Each raises `FaultFailure` (an
AssertionError, so pytest shows it as a failed assertion) naming the fault and what falls short.

Without a world:
- `assert_documented(cls)`: the module tells the story; id, title, rating, observation and
  default parameters are there.
- `assert_hooks_well_formed(cls)`: handlers on real hook points, with fitting signatures.
- `assert_answer_key_complete(fault)`: root cause, propagation, fixes, probes, a reference
  investigation of 3-6 steps, evidence dated inside the fault's window.
- `assert_investigation_fits_tier(fault)`: at hard, the reference investigation takes at least
  4 queries and one of them reads two tables together.

On built worlds (a world directory, a `BuildSummary`, or a read-only DuckDB connection):
- `assert_verifies_where_planted(fault, world)`: no check fails and the first (the symptom)
  passes; a check the world cannot decide may be not measurable.
- `assert_absent_without_it(fault, control)`: its first check fails in a world without it.
- `assert_investigation_reaches_evidence(fault, world, control)`: every step finds its evidence
  where the fault is planted; at least one finds nothing in the world without it.
- `assert_symptom_shows(fault, world, control)`: the live series it declares for the review's
  recovery chart run on the candidate's tables, and the first moves where it is planted and not
  without it (`symptom_levels` gives the levels).
- `assert_evidence_exists(fault, world)`: the answer key points at tables and columns, metrics,
  log patterns and changelog titles that exist.
- `assert_nothing_names(world, names)`: nothing candidate-visible carries a telltale word or
  the fault's id or class name (needs the world directory).
- `assert_no_tells(fault, world)`: none of the tells the fault declares for its tier appears in
  what the candidate can read.

`assert_meets_the_bar(fault, world, control)` runs them all and reports every shortfall at once.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from sandbox import scenario, schema
from sandbox.clock import Calendar
from sandbox.faults.base import (
    BadHandler,
    Check,
    Evidence,
    Fault,
    FaultParams,
    UnknownHookPoint,
    check_handler,
    check_hook_point,
)
from sandbox.layout import WorldPaths
from sandbox.review import recovery
from sandbox.world.build import BuildSummary

World = BuildSummary | Path | str | duckdb.DuckDBPyConnection
TELLTALE_WORDS = (r"\bfault", r"inject", r"planted", r"answer", r"sabotag", r"\bbug\b")
MIN_STEPS, MAX_STEPS = 3, 6
HARD_MIN_STEPS = 4  # at hard, an investigation is more than a lookup or two


class FaultFailure(AssertionError):
    """A fault falls short of the bar; the message names the fault and says where."""


# -- worlds --------------------------------------------------------------------------------------
def _root(world: World) -> Path | None:
    if isinstance(world, BuildSummary):
        return world.root
    if isinstance(world, str | Path):
        return Path(world)
    return None


@contextmanager
def _connection(world: World) -> Iterator[duckdb.DuckDBPyConnection]:
    root = _root(world)
    if root is None:
        assert isinstance(world, duckdb.DuckDBPyConnection)
        yield world
        return
    con = duckdb.connect(str(WorldPaths(root).duckdb), read_only=True)
    try:
        yield con
    finally:
        con.close()


def _calendar(world: World | None, calendar: Calendar | None) -> Calendar:
    """The calendar given, else the built world's, else the default world's (the one `planted`
    scenarios use)."""
    if calendar is not None:
        return calendar
    root = None if world is None else _root(world)
    if root is not None:
        return scenario.world_spec(WorldPaths(root).scenario).calendar()
    return scenario.load(None).world.calendar()


def _fail(fault: Fault | type[Fault], what: str) -> FaultFailure:
    cls = fault if isinstance(fault, type) else type(fault)
    return FaultFailure(f"{getattr(cls, 'id', None) or cls.__name__}: {what}")


def _describe(checks: list[Check]) -> str:
    return "\n".join(f"  [{c.outcome}] {c.name}: {c.detail}" for c in checks)


# -- without a world -----------------------------------------------------------------------------
def assert_documented(cls: type[Fault]) -> None:
    """The module docstring tells the story; the class has an id (lowercase, dashes), title,
    rating and observation, and parameters whose defaults validate."""
    if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", getattr(cls, "id", "")):
        raise FaultFailure(f"{cls.__name__}: its id is lowercase words joined by dashes")
    module = __import__(cls.__module__, fromlist=["__doc__"])
    if not (module.__doc__ and len(module.__doc__) > 200):
        raise _fail(cls, f"the docstring of {cls.__module__} should tell the fault's story")
    for attribute in ("title", "observation"):
        if not getattr(cls, attribute, ""):
            raise _fail(cls, f"{attribute} is missing")
    if getattr(cls, "rating", None) not in ("easy", "medium", "hard"):
        raise _fail(cls, "rating is easy, medium or hard")
    params = getattr(cls, "Params", None)
    if not (isinstance(params, type) and issubclass(params, FaultParams)):
        raise _fail(cls, "Params is a FaultParams subclass")
    try:
        params()
    except ValueError as exc:
        raise _fail(cls, f"its default parameters do not validate: {exc}") from None


def assert_hooks_well_formed(cls: type[Fault]) -> None:
    """Handlers declared with `@hook` on hook points that stages expose, each with a signature
    that fits its point, and no hand-written dispatch."""
    if not cls.hook_points:
        raise _fail(cls, "no @hook handlers: it never acts")
    if hasattr(cls, "apply"):
        raise _fail(cls, "dispatches by hand (an `apply` method); declare @hook handlers")
    for point, name in cls.handlers.items():
        handler = getattr(cls, name, None)
        if handler is None or getattr(handler, "__hook_point__", None) != point:
            raise _fail(cls, f"the handler of {point!r} ({name}) is not marked @hook({point!r})")
        try:
            check_hook_point(point, f"{cls.__name__}.{name}")
            check_handler(point, handler)
        except (UnknownHookPoint, BadHandler) as exc:
            raise _fail(cls, str(exc)) from None


def assert_answer_key_complete(fault: Fault, calendar: Calendar | None = None) -> None:
    """Root cause, propagation, fixes and probes (one asks for the next experiment); a reference
    investigation of 3-6 steps, each reaching evidence of the key; evidence dated inside the
    fault's window (ending on or after onset, starting by the last visible day)."""
    cal = _calendar(None, calendar)
    key = fault.key(cal)
    if key.fault_id != fault.id or not key.title:
        raise _fail(fault, f"the answer key names {key.fault_id!r}, titled {key.title!r}")
    if not key.root_cause or len(key.propagation) < 3 or not key.acceptable_fixes:
        raise _fail(fault, "the answer key needs a root cause, 3+ propagation steps and fixes")
    if not any("experiment" in probe for probe in key.probes):
        raise _fail(fault, "one probe asks for the next experiment")
    ids = [e.id for e in key.evidence]
    if not ids or len(set(ids)) != len(ids):
        raise _fail(fault, f"evidence ids are missing or repeated: {ids}")
    if not MIN_STEPS <= len(key.investigation) <= MAX_STEPS:
        raise _fail(
            fault,
            f"the reference investigation has {len(key.investigation)} steps "
            f"({MIN_STEPS}-{MAX_STEPS})",
        )
    for step in key.investigation:
        if step.evidence not in ids:
            raise _fail(fault, f"step {step.question!r} reaches unknown evidence {step.evidence!r}")
    onset, last = cal.date(fault.params.onset_day), cal.date(cal.last_visible_day)
    for e in key.evidence:
        if not (
            e.window_start <= e.window_end and e.window_end >= onset and e.window_start <= last
        ):
            raise _fail(
                fault,
                f"evidence {e.id!r} is dated {e.window_start}..{e.window_end}, outside the "
                f"fault's window {onset}..{last}",
            )


def tables_read(sql: str) -> set[str]:
    """The tables a query reads (schema.table as written; not its own CTEs), from DuckDB's own
    parse of it."""
    con = duckdb.connect()
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])
    finally:
        con.close()
    if tree.get("error"):
        raise ValueError(f"not a query DuckDB parses: {tree.get('error_message')}")
    found: set[str] = set()
    ctes: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ctes.update(entry["key"] for entry in (node.get("cte_map") or {}).get("map", []))
            if node.get("type") == "BASE_TABLE":
                found.add(f"{node.get('schema_name') or ''}.{node['table_name']}".lstrip("."))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree)
    return found - ctes


def assert_investigation_fits_tier(fault: Fault, calendar: Calendar | None = None) -> None:
    """At hard, no single lookup finds the fault: the reference investigation takes at least
    HARD_MIN_STEPS queries, and at least one reads two tables together (a join or a subquery)."""
    if fault.tier != "hard":
        return
    steps = fault.investigation(_calendar(None, calendar))
    if len(steps) < HARD_MIN_STEPS:
        raise _fail(
            fault, f"at hard the investigation has {len(steps)} steps (at least {HARD_MIN_STEPS})"
        )
    if not any(len(tables_read(step.sql)) >= 2 for step in steps):
        raise _fail(fault, "at hard no step of the investigation reads two tables together")


# -- on built worlds -----------------------------------------------------------------------------
def assert_verifies_where_planted(
    fault: Fault, world: World, calendar: Calendar | None = None
) -> list[Check]:
    """Its checks on a world where it is planted: none fails and the first (the symptom) passes.
    The others may be not measurable (too few labels matured, too few customers affected), but
    a fault never gets through on checks that were not measurable alone."""
    with _connection(world) as con:
        checks = fault.verify(con, _calendar(world, calendar))
    if not checks:
        raise _fail(fault, "its verification has no checks")
    if checks[0].outcome != "passed" or any(c.outcome == "failed" for c in checks):
        raise _fail(
            fault, f"its verification does not pass where it is planted:\n{_describe(checks)}"
        )
    return checks


def assert_absent_without_it(
    fault: Fault, control: World, calendar: Calendar | None = None
) -> Check:
    """Its first check (the symptom) fails in a world without the fault."""
    with _connection(control) as con:
        checks = fault.verify(con, _calendar(control, calendar))
    if not checks or checks[0].outcome != "failed":
        raise _fail(
            fault,
            "its first check should fail in a world without it:\n" + _describe(checks[:1]),
        )
    return checks[0]


def _run(con: duckdb.DuckDBPyConnection, sql: str) -> pl.DataFrame | None:
    try:
        return con.sql(sql).pl()
    except duckdb.Error:
        return None  # a column or table that only exists when the fault is planted


def assert_investigation_reaches_evidence(
    fault: Fault, world: World, control: World, calendar: Calendar | None = None
) -> None:
    """Every step of the reference investigation finds its evidence where the fault is planted,
    and at least one step finds nothing in the world without it (or the investigation proves
    nothing)."""
    cal = _calendar(world, calendar)
    steps = fault.investigation(cal)
    ids = {e.id for e in fault.answer_key(cal).evidence}
    if not MIN_STEPS <= len(steps) <= MAX_STEPS:
        raise _fail(fault, f"the investigation has {len(steps)} steps ({MIN_STEPS}-{MAX_STEPS})")
    with _connection(world) as con:
        for number, step in enumerate(steps, 1):
            if step.evidence not in ids:
                raise _fail(fault, f"step {number} reaches unknown evidence {step.evidence!r}")
            try:
                result = con.sql(step.sql).pl()
            except duckdb.Error as exc:
                raise _fail(fault, f"step {number} ({step.question!r}) fails: {exc}") from None
            if not step.found(result):
                raise _fail(
                    fault,
                    f"step {number} ({step.question!r}) does not find its evidence:\n{result}",
                )
    with _connection(control) as con:
        for step in steps:
            result = _run(con, step.sql)
            if result is None or not step.found(result):
                return
    raise _fail(fault, "every step also finds its evidence in a world without it")


def evidence_exists(con: duckdb.DuckDBPyConnection, evidence: Evidence) -> bool:
    """Whether the table column, metric, log pattern or changelog title is in the world."""
    if evidence.kind == "table_column":
        schema, table, column = evidence.ref.split(".")
        query = (
            "SELECT count(*) FROM duckdb_columns() "
            "WHERE schema_name = ? AND table_name = ? AND column_name = ?"
        )
        return con.execute(query, [schema, table, column]).fetchall()[0][0] == 1
    if evidence.kind == "metric":
        query = "SELECT count(*) FROM telemetry.metrics WHERE metric = ?"
    elif evidence.kind == "changelog":
        query = "SELECT count(*) FROM ops.changelog WHERE title = ?"
    else:
        re.compile(evidence.ref)
        query = "SELECT count(*) FROM telemetry.logs WHERE regexp_matches(attrs, ?)"
    return con.execute(query, [evidence.ref]).fetchall()[0][0] > 0


def assert_evidence_exists(fault: Fault, world: World, calendar: Calendar | None = None) -> None:
    """Every piece of evidence in its answer key is in a world where it is planted."""
    key = fault.answer_key(_calendar(world, calendar))
    with _connection(world) as con:
        missing = [
            f"{e.id} ({e.kind} {e.ref!r})" for e in key.evidence if not evidence_exists(con, e)
        ]
    if missing:
        raise _fail(fault, f"its answer key points at evidence the world lacks: {missing}")


# How the symptom's level is read: over the last days before live time, against the week before
# the fault began; it shows where planted if it moved more than twice as far from the control
# world's level as before onset, and by at least a twentieth of its size.
SYMPTOM_DAYS = 3
SYMPTOM_MIN_SHIFT = 0.05


@contextmanager
def _candidate_views(world: BuildSummary | Path | str) -> Iterator[duckdb.DuckDBPyConnection]:
    """The world's tables under their own names, as a running stack's views show them at live
    start to the interviewer: with the `client` column of the tables a session's calls add
    rows to, every row production's."""
    con = duckdb.connect()
    con.execute(f"ATTACH '{WorldPaths(Path(str(_root(world)))).duckdb}' AS world (READ_ONLY)")
    tables = con.execute(
        "SELECT DISTINCT schema_name, table_name FROM duckdb_tables() WHERE database_name = 'world'"
    ).fetchall()
    for schema_name, table in tables:
        declared = schema.TABLES.get(f"{schema_name}.{table}")
        client = (
            ", 'production' AS client"
            if declared and declared.live and declared.live.client
            else ""
        )
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema_name}")
        con.execute(
            f"CREATE VIEW {schema_name}.{table} AS SELECT *{client} FROM world.{schema_name}.{table}"
        )
    try:
        yield con
    finally:
        con.close()


def symptom_levels(
    fault: Fault, world: BuildSummary | Path | str, calendar: Calendar | None = None
) -> dict[str, tuple[float | None, float | None]]:
    """Each declared symptom's level in the week before the fault began and over the last
    `SYMPTOM_DAYS` days before live time, by symptom id: the review's own recovery queries, with
    those days as the chart."""
    cal = _calendar(world, calendar)
    key = fault.key(cal)
    began = recovery.onset(key.model_dump(mode="json"))
    if began is None:
        raise _fail(fault, "its answer key dates no evidence, so its symptom has no onset")
    live = cal.midnight(cal.last_production_day + 1)
    days = dt.timedelta(days=SYMPTOM_DAYS)
    plan = recovery.Plan(
        fault_id=fault.id,
        title=key.title,
        series=key.symptoms,
        start=live - days,
        end=live,
        bucket_s=int(days.total_seconds()),
        baseline=(began - recovery.BASELINE, began),
        marks=[],
    )
    levels: dict[str, tuple[float | None, float | None]] = {}
    with _candidate_views(world) as con:
        for query in recovery.queries(plan):
            ran = con.execute(query.sql, query.params)
            columns = [d[0] for d in ran.description]
            rows = [dict(zip(columns, row, strict=True)) for row in ran.fetchall()]
            base = next(r for r in rows if r["t"] is None)
            for sid in query.series:
                # The window may straddle two buckets: their means weighted by their rows.
                held = [(r[sid], r["n"]) for r in rows if r["t"] is not None and r[sid] is not None]
                total = sum(n for _, n in held)
                late = sum(v * n for v, n in held) / total if total else None
                levels[sid] = (None if base[sid] is None else float(base[sid]), late)
    return levels


def assert_symptom_shows(
    fault: Fault,
    world: BuildSummary | Path | str,
    control: World,
    calendar: Calendar | None = None,
) -> dict[str, tuple[float | None, float | None]]:
    """It declares symptoms for the review's recovery chart, each one's SQL runs on the
    candidate's tables, and the first moves where it is planted and not in the control world:
    over the last days before live time it stands further from the control's level than twice
    its distance before onset, and by at least `SYMPTOM_MIN_SHIFT` of its size."""
    if not fault.symptoms(_calendar(world, calendar)):
        raise _fail(fault, "it declares no symptom for the review's recovery chart")
    if _root(control) is None:
        raise _fail(
            fault, "its symptom is measured on the control world's directory, not a connection"
        )
    try:
        planted = symptom_levels(fault, world, calendar)
        without = symptom_levels(fault, str(_root(control)), _calendar(world, calendar))
    except duckdb.Error as exc:
        raise _fail(
            fault, f"a symptom's SQL does not run on the candidate's tables: {exc}"
        ) from None
    first = fault.symptoms(_calendar(world, calendar))[0].id
    (base, late), (base_c, late_c) = planted[first], without[first]
    if None in (base, late, base_c, late_c):
        raise _fail(
            fault, f"its symptom {first} has no level: {planted[first]} vs {without[first]}"
        )
    assert base is not None and late is not None and base_c is not None and late_c is not None
    before, after = abs(base - base_c), abs(late - late_c)
    size = max(abs(base), abs(base_c), abs(late_c), 1e-9)
    if not (after > 2 * before and after >= SYMPTOM_MIN_SHIFT * size):
        raise _fail(
            fault,
            f"its symptom {first} does not show it: {base:.4g} before onset and {late:.4g} "
            f"before live time where planted, {base_c:.4g} and {late_c:.4g} without it",
        )
    return planted


def telltale(names: Iterable[str] = ()) -> re.Pattern[str]:
    """Words that would give a planted fault away: the generic ones and `names` (fault and
    decoy ids, class names)."""
    return re.compile("|".join([*TELLTALE_WORDS, *map(re.escape, names)]), re.IGNORECASE)


def candidate_texts(world: BuildSummary | Path | str) -> Iterator[tuple[str, list[str]]]:
    """(where, texts) for everything a candidate can read in a built world: file names, table
    and column names and descriptions, every text value in the warehouse, log lines, index
    metadata and the model registry."""
    for where, values in _candidate_text_columns(world):
        yield where, values.to_list()


def _candidate_text_columns(world: BuildSummary | Path | str) -> list[tuple[str, pl.Series]]:
    """`candidate_texts` as columns, read once per state of the world's files: the catalog
    scans one world for many faults' names and tells, and reading its every text value takes
    longer than scanning it."""
    root = Path(world.root if isinstance(world, BuildSummary) else world)
    files = sorted((root / "candidate").rglob("*"))
    stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    return _read_text_columns(str(root), stamp)


@functools.lru_cache(maxsize=8)
def _read_text_columns(
    root_name: str, files: tuple[tuple[str, int, int], ...]
) -> list[tuple[str, pl.Series]]:
    root = Path(root_name)
    candidate = root / "candidate"
    columns = [("file names", [str(Path(name).relative_to(root)) for name, _, _ in files])]
    con = duckdb.connect(str(WorldPaths(root).duckdb), read_only=True)
    try:
        described = con.sql(
            "SELECT schema_name, table_name, comment FROM duckdb_tables() WHERE NOT internal "
            "UNION ALL SELECT schema_name, column_name, comment FROM duckdb_columns() "
            "WHERE NOT internal"
        ).fetchall()
        columns.append(
            ("tables, columns and descriptions", [v for row in described for v in row if v])
        )
        texts = con.sql(
            "SELECT schema_name || '.' || table_name, column_name FROM duckdb_columns() "
            "WHERE data_type = 'VARCHAR' AND NOT internal AND database_name = current_database()"
        ).fetchall()
        if not texts:
            raise AssertionError(f"{root}: the warehouse has no text columns to read")
        for table, column in texts:
            values = con.sql(f'SELECT DISTINCT "{column}" FROM {table}').fetchall()
            columns.append((f"{table}.{column}", [v[0] for v in values if v[0]]))
    finally:
        con.close()
    for path in [*(candidate / "logs").glob("*.jsonl"), *(candidate / "indexes").glob("*.json")]:
        columns.append((str(path.relative_to(root)), path.read_text().splitlines()))
    registry = sqlite3.connect(candidate / "mlflow" / "mlflow.db")
    try:
        registered: list[str] = []
        tables = [
            r[0] for r in registry.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        for table in tables:
            for row in registry.execute(f'SELECT * FROM "{table}"'):
                registered += [v for v in row if isinstance(v, str)]
    finally:
        registry.close()
    if len(registered) <= 20:
        raise AssertionError(f"{root}: the model registry holds almost no text ({len(registered)})")
    columns.append(("model registry", registered))
    return [(where, pl.Series(values, dtype=pl.String)) for where, values in columns]


def _scan(
    texts: Iterable[tuple[str, list[str] | pl.Series]], pattern: re.Pattern[str]
) -> dict[str, list[str]]:
    """Where the texts match `pattern`: a few matching texts per place. Polars' regex engine
    reads a world's ten megabytes of text in a tenth of a second; Python's takes ten seconds
    over an alternation of many names."""
    regex = ("(?i)" if pattern.flags & re.IGNORECASE else "") + pattern.pattern
    found = {}
    for where, values in texts:
        column = values if isinstance(values, pl.Series) else pl.Series(values, dtype=pl.String)
        hits = sorted(set(column.filter(column.str.contains(regex)).to_list()))
        if hits:
            found[where] = hits[:3]
    return found


def _listing(found: dict[str, list[str]]) -> str:
    return "\n".join(f"  {where}: {json.dumps(hits)[:300]}" for where, hits in found.items())


def assert_nothing_names(world: BuildSummary | Path | str, names: Iterable[str] = ()) -> None:
    """Nothing a candidate can read carries a telltale word or one of `names`."""
    found = _scan(_candidate_text_columns(world), telltale(names))
    if found:
        raise FaultFailure("candidate-visible text gives a planted fault away:\n" + _listing(found))


def assert_no_tells(
    fault: Fault,
    world: BuildSummary | Path | str,
    also: Iterable[tuple[str, list[str]]] = (),
) -> None:
    """None of the tells `fault` declares for its tier appears in what the candidate can read
    in `world`, nor in `also` ((where, texts) the world's files do not hold, such as the titles
    and descriptions of the dashboards the stack serves at the world's difficulty)."""
    tells = fault.tells(fault.tier)
    if not tells:
        return
    pattern = re.compile("|".join(map(re.escape, tells)), re.IGNORECASE)
    found = _scan([*_candidate_text_columns(world), *also], pattern)
    if found:
        raise _fail(
            fault, f"at {fault.tier}, candidate-visible text carries its tells:\n{_listing(found)}"
        )


def assert_meets_the_bar(
    fault: Fault,
    world: BuildSummary | Path | str,
    control: World,
    calendar: Calendar | None = None,
) -> None:
    """Everything above, on a built world where the fault is planted and a control world of the
    same seed and scale without it; every shortfall is reported at once."""
    cls = type(fault)
    parts: list[tuple[str, Any]] = [
        ("documented", lambda: assert_documented(cls)),
        ("hooks", lambda: assert_hooks_well_formed(cls)),
        ("answer key", lambda: assert_answer_key_complete(fault, _calendar(world, calendar))),
        ("tier", lambda: assert_investigation_fits_tier(fault, _calendar(world, calendar))),
        ("verification", lambda: assert_verifies_where_planted(fault, world, calendar)),
        ("control", lambda: assert_absent_without_it(fault, control, calendar)),
        (
            "investigation",
            lambda: assert_investigation_reaches_evidence(fault, world, control, calendar),
        ),
        ("evidence", lambda: assert_evidence_exists(fault, world, calendar)),
        ("symptom", lambda: assert_symptom_shows(fault, world, control, calendar)),
        ("secrecy", lambda: assert_nothing_names(world, [fault.id, cls.__name__])),
        ("tells", lambda: assert_no_tells(fault, world)),
    ]
    failures = []
    for what, run in parts:
        try:
            run()
        except FaultFailure as exc:
            failures.append(f"{what}: {exc}")
    if failures:
        raise FaultFailure(f"{fault.id} falls short of the bar:\n" + "\n".join(failures))
