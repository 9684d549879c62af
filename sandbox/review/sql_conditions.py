"""What a SQL statement filters, groups and joins on, from DuckDB's own parse of it.

Selecting a column only displays it; filtering, grouping or joining on it is asking a question of
it. The review tells the two apart, so it reads the parsed statement (`json_serialize_sql`) rather
than the text: the WHERE, HAVING and QUALIFY clauses and aggregate FILTERs (filtered), GROUP BY
(grouped, positions resolved to the select list) and JOIN conditions and USING lists (joined), in
every SELECT of the statement (common table expressions and subqueries too).

Column references are resolved to `schema.table.column` through the statement's table aliases; a
bare name could belong to any table the statement reads, so it is narrowed by the columns the
console found the statement reading (`columns_read`, which knows the schema) when given. A
qualifier that names no table (a common table expression, a subquery) is read like a bare name.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb

_parser = duckdb.connect()  # parses only: no tables, no data
_parser_lock = threading.Lock()


@dataclass(frozen=True)
class Conditions:
    """The columns a statement asks questions of, and the literals it compares them with."""

    filtered: frozenset[str] = frozenset()
    grouped: frozenset[str] = frozenset()
    joined: frozenset[str] = frozenset()
    constants: frozenset[str] = frozenset()  # string literals of the conditions, lowercased
    tables: frozenset[str] = frozenset()

    @property
    def columns(self) -> frozenset[str]:
        return self.filtered | self.grouped | self.joined


@dataclass
class _Refs:
    filtered: list[list[str]] = field(default_factory=list)
    grouped: list[list[str]] = field(default_factory=list)
    joined: list[list[str]] = field(default_factory=list)
    constants: set[str] = field(default_factory=set)


def conditions(sql: str, columns_read: Sequence[str] = ()) -> Conditions:
    """The conditions of one statement; empty when it does not parse as a query."""
    return _conditions(sql, tuple(sorted(columns_read)))


@functools.lru_cache(maxsize=4096)
def _conditions(sql: str, columns_read: tuple[str, ...]) -> Conditions:
    tree = _parse(sql)
    if tree is None:
        return Conditions()
    aliases: dict[str, str] = {}
    refs = _Refs()
    for node in tree_nodes(tree):
        if node.get("type") == "BASE_TABLE":
            path = [p for p in node.get("qualified_name", {}).get("path", []) if p][-2:]
            if len(path) == 2:
                table = ".".join(path).lower()
                aliases[path[1].lower()] = table
                if node.get("alias"):
                    aliases[str(node["alias"]).lower()] = table
        elif node.get("type") == "SELECT_NODE":
            _select_conditions(node, refs)
        elif node.get("type") == "JOIN":
            refs.joined += _column_refs(node.get("condition"))
            refs.joined += [[str(name)] for name in node.get("using_columns") or []]
            refs.constants |= _constants(node.get("condition"))
        if node.get("class") in ("FUNCTION", "AGGREGATE") and node.get("filter"):
            refs.filtered += _column_refs(node["filter"])
            refs.constants |= _constants(node["filter"])
    tables = frozenset(aliases.values())
    read = set(columns_read)

    def resolve(names: list[list[str]]) -> frozenset[str]:
        return frozenset(c for parts in names for c in _resolve(parts, aliases, tables, read))

    return Conditions(
        filtered=resolve(refs.filtered),
        grouped=resolve(refs.grouped),
        joined=resolve(refs.joined),
        constants=frozenset(refs.constants),
        tables=tables,
    )


def _parse(sql: str) -> dict[str, Any] | None:
    if not sql.strip():
        return None
    with _parser_lock:
        try:
            (text,) = _parser.execute("SELECT json_serialize_sql(?)", [sql]).fetchone() or ("{}",)
        except duckdb.Error:
            return None
    tree = json.loads(text)
    return None if tree.get("error", True) else dict(tree)


def _select_conditions(node: dict[str, Any], refs: _Refs) -> None:
    for clause in ("where_clause", "having", "qualify"):
        refs.filtered += _column_refs(node.get(clause))
        refs.constants |= _constants(node.get(clause))
    select_list = node.get("select_list") or []
    for expression in node.get("group_expressions") or []:
        position = _position(expression)
        if position is not None and 0 < position <= len(select_list):
            expression = select_list[position - 1]  # GROUP BY 1: the first selected expression
        refs.grouped += _column_refs(expression)


def _position(expression: dict[str, Any]) -> int | None:
    literal = expression.get("value") or expression.get("literal") or {}
    if expression.get("class") != "CONSTANT" or not isinstance(literal, dict):
        return None
    text = str(literal.get("text", literal.get("value", "")))
    return int(text) if text.isdigit() else None


def _column_refs(tree: Any) -> list[list[str]]:
    return [
        [str(n) for n in node.get("column_names", []) if n]
        for node in tree_nodes(tree)
        if node.get("class") == "COLUMN_REF"
    ]


def _constants(tree: Any) -> set[str]:
    found = set()
    for node in tree_nodes(tree):
        literal = node.get("value") or node.get("literal")
        if node.get("class") == "CONSTANT" and isinstance(literal, dict):
            kind = str(literal.get("kind", literal.get("type", ""))).upper()
            if kind.startswith(("STRING", "VARCHAR")):
                found.add(str(literal.get("text", literal.get("value", ""))).lower())
    return found


def _resolve(
    parts: list[str], aliases: dict[str, str], tables: frozenset[str], read: set[str]
) -> list[str]:
    if not parts:
        return []
    *qualifier, name = (p.lower() for p in parts)
    if len(qualifier) >= 2:
        return [f"{qualifier[-2]}.{qualifier[-1]}.{name}"]
    if qualifier and qualifier[0] in aliases:
        return [f"{aliases[qualifier[0]]}.{name}"]
    candidates = [f"{table}.{name}" for table in sorted(tables)]
    if not read:
        return candidates
    return [c for c in candidates if c in read or f"{c.rpartition('.')[0]}.*" in read]


def tree_nodes(node: Any) -> Iterator[dict[str, Any]]:
    """Every object of a DuckDB parse tree (`json_serialize_sql`), depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from tree_nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from tree_nodes(value)
