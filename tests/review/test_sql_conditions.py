"""What a statement filters, groups and joins on, read from DuckDB's parse of it."""

from __future__ import annotations

from sandbox.review.sql_conditions import conditions

VA = "raw.viewing_activity"


def test_selecting_a_column_asks_nothing_of_it() -> None:
    asked = conditions(f"SELECT minutes_watched, activity_date FROM {VA} LIMIT 10")
    assert asked.columns == frozenset()
    assert asked.tables == {VA}


def test_where_group_by_and_join_name_their_columns_through_the_aliases() -> None:
    asked = conditions(
        f"SELECT c.region, count(*) FROM {VA} a JOIN raw.customers c ON a.customer_id = "
        "c.customer_id WHERE a.minutes_watched IS NULL AND a.activity_date >= DATE '2026-03-01' "
        "GROUP BY c.region HAVING count(*) > 10"
    )
    assert asked.filtered == {f"{VA}.minutes_watched", f"{VA}.activity_date"}
    assert asked.grouped == {"raw.customers.region"}
    assert asked.joined == {f"{VA}.customer_id", "raw.customers.customer_id"}
    assert "2026-03-01" in asked.constants


def test_a_group_by_position_is_the_selected_expression_it_points_at() -> None:
    asked = conditions(
        f"SELECT date_trunc('week', activity_date), avg((minutes_watched IS NULL)::INT) "
        f"FROM {VA} GROUP BY 1"
    )
    assert asked.grouped == {f"{VA}.activity_date"}
    assert asked.filtered == frozenset()


def test_filters_inside_a_cte_and_an_aggregate_filter_count() -> None:
    asked = conditions(
        f"WITH recent AS (SELECT * FROM {VA} WHERE activity_date > DATE '2026-03-01') "
        "SELECT count(*) FILTER (WHERE minutes_watched IS NULL) FROM recent",
        [f"{VA}.*"],
    )
    assert asked.filtered == {f"{VA}.activity_date", f"{VA}.minutes_watched"}


def test_a_bare_name_is_narrowed_to_the_columns_the_statement_read() -> None:
    sql = "SELECT * FROM raw.customers c JOIN raw.viewing_activity USING (customer_id) WHERE region = 'EU'"
    assert conditions(sql).filtered == {"raw.customers.region", f"{VA}.region"}
    read = ["raw.customers.region", "raw.customers.customer_id", f"{VA}.customer_id"]
    assert conditions(sql, read).filtered == {"raw.customers.region"}
    assert conditions(sql, read).joined == {"raw.customers.customer_id", f"{VA}.customer_id"}


def test_what_does_not_parse_asks_nothing() -> None:
    assert conditions("SELEC minutes_watched FRM x WHERE") == conditions("")
    assert conditions("SELEC x").columns == frozenset()
