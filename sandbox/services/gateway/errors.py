"""Refusals shaped like FastAPI's own validation errors (a 422 whose `detail` lists each wrong
field with its location), so that every 422 of the API reads the same, as its schema says."""

from __future__ import annotations

from typing import Literal

from fastapi import HTTPException


def invalid(where: Literal["body", "query", "path"], field: str, message: str) -> HTTPException:
    return HTTPException(422, [{"loc": [where, field], "msg": message, "type": "value_error"}])
