"""The running stack's settings: one typed, frozen object with every value a deployment may
change, read from the environment once per process (`Settings.from_env`) and handed to what needs
it. Nothing else in the stack reads the environment or keeps its own copy of these values.

Each field is set by the environment variable `SANDBOX_` + its name in capitals
(`row_cap` by `SANDBOX_ROW_CAP`); an unset or empty variable leaves the default. A value that does
not fit its field stops the process at its start with a message naming the variable. Other
`SANDBOX_` variables (those compose reads, `SANDBOX_PORT`, `SANDBOX_SPEED`, `SANDBOX_SCALE`) are
not settings of the stack's processes and are left alone.

The review store keeps its own limits when the review reads sessions outside a running stack;
its defaults are the ones named here (`sandbox.review.store` sits below the services and is
handed these by the gateway).

Values that are facts rather than choices (the schemas a candidate may query, the size of the
largest scenario file, protocol details) stay with the code they describe.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sandbox.review import store

PREFIX = "SANDBOX_"
KIB = 1024
MIB = 1024 * 1024


class SettingsError(ValueError):
    """A setting's variable holds a value its field cannot take; the message names it."""


class Settings(BaseModel):
    """Every setting of the stack's processes, with its default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The SQL console (queries, dashboard panels, log searches)
    row_cap: int = Field(5000, ge=1, description="Most rows one console query returns.")
    query_time_limit_s: float = Field(
        10.0, gt=0, description="Seconds a console query may run before it is stopped."
    )
    console_max_bytes: int = Field(
        20_000_000,
        ge=KIB,
        description="About how many bytes of values one console answer may carry (20 MB).",
    )
    console_memory_mb: int = Field(
        1024,
        ge=64,
        description="Address space (MB) a console worker may grow by once started; DuckDB's "
        "own memory limit in it is half of this.",
    )
    # One: an idle stack holds one worker (about 180 MB), and the pool starts a spare the moment
    # it is taken, so a candidate's next query finds one ready.
    console_workers: int = Field(
        1, ge=1, description="Console worker processes kept running while the stack is idle."
    )
    console_max_workers: int = Field(
        4,
        ge=1,
        description="Most console workers candidates hold together; the pool grows to this "
        "when every worker is busy.",
    )
    console_per_owner: int = Field(
        2, ge=1, description="Queries one session (or the interviewers) runs at once."
    )
    console_per_owner_waiting: int = Field(
        24,
        ge=0,
        description="Queries one session may have waiting; the next one is refused with 429.",
    )
    console_staff_reserve: int = Field(
        1,
        ge=0,
        description="Workers kept ready for interviewers and the operator beyond the "
        "candidates' share.",
    )

    # Sessions and their history
    token_lifetime_days: float = Field(
        store.TOKEN_LIFETIME / dt.timedelta(days=1),
        gt=0,
        description="Days a session's links work after the session was made, whatever its state.",
    )
    history_max_events: int = Field(
        store.MAX_HISTORY_EVENTS, ge=1, description="Most events one session's history holds."
    )
    history_max_bytes: int = Field(
        store.MAX_HISTORY_BYTES,
        ge=64 * KIB,
        description="Most bytes of event details one session's history holds (8 MiB).",
    )
    client_events_per_minute: int = Field(
        30,
        ge=1,
        description="Browser-reported events (pastes, time away) a session may send a minute.",
    )

    # HTTP requests, on the gateway and both services
    max_body_bytes: int = Field(
        MIB,
        ge=KIB,
        description="Largest request body (1 MiB); a bigger one is refused with 413 unread.",
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="Seconds a request body has to arrive in whole."
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Seconds a connection has to send a request's headers before it is closed.",
    )
    max_header_bytes: int = Field(
        16 * KIB, ge=KIB, description="Largest header block of a request (16 KiB)."
    )
    keep_alive_s: int = Field(
        5, ge=1, description="Seconds an idle kept-alive connection stays open."
    )
    max_concurrent_requests: int = Field(
        200, ge=1, description="Requests in flight at once per process; more get 503."
    )

    # The operator's scenario builder
    builds_at_once: int = Field(
        1, ge=1, description="World builds that run at once; more wait in a queue."
    )
    builds_kept: int = Field(
        20,
        ge=1,
        description="Finished builds whose status the builder keeps; older ones are forgotten.",
    )
    worlds_root: Path | None = Field(
        None,
        description="The directory the builder writes worlds into and the operator page lists "
        "(default: the one that holds the running world).",
    )

    # Where the stack is
    public_url: str | None = Field(
        None,
        description="The address people open the gateway at, for session links (default: "
        "the address each request came to).",
    )
    dashboards: Path | None = Field(
        None,
        description="A directory of dashboard definitions to serve instead of the packaged ones.",
    )

    @field_validator("public_url")
    @classmethod
    def _an_http_address(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("an http:// or https:// address")
        return value.rstrip("/") if value else None

    @field_validator("dashboards", "worlds_root")
    @classmethod
    def _a_directory(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value

    @model_validator(mode="after")
    def _workers_fit(self) -> Settings:
        if self.console_max_workers < self.console_workers:
            raise ValueError(
                f"{variable('console_max_workers')} ({self.console_max_workers}) is below "
                f"{variable('console_workers')} ({self.console_workers})"
            )
        return self

    @property
    def token_lifetime(self) -> dt.timedelta:
        return dt.timedelta(days=self.token_lifetime_days)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings from `environ` (the process's environment by default): each field from
        its `SANDBOX_` variable when that is set and not empty. SettingsError naming the
        variable when a value does not fit."""
        environ = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        for name in cls.model_fields:
            value = environ.get(variable(name), "").strip()
            if value:
                raw[name] = value
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise SettingsError(_explain(exc, raw)) from None


def variable(name: str) -> str:
    """The environment variable of the field `name`."""
    return PREFIX + name.upper()


def _explain(exc: ValidationError, raw: dict[str, Any]) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["loc"]:
            name = str(error["loc"][0])
            problems.append(f"{variable(name)}={raw.get(name, '')!r}: {message}")
        else:
            problems.append(message)
    return "bad setting: " + "; ".join(problems)


def default_text(value: Any) -> str:
    """A default as it would be written in the environment."""
    if value is None:
        return "unset"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def markdown_table() -> str:
    """The settings as README's table: variable, default, meaning."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        lines.append(f"| `{variable(name)}` | {default_text(info.default)} | {info.description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
