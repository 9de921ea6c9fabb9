"""Which input an error of the API names, so that the page can show the message beside that input.

Two kinds reach us: a 422 from coglet's schema check (`detail[].loc` ends in the input's name) and a
failed prediction whose error ends in the predictor's own `InputError: <name> <what is wrong>`."""

from __future__ import annotations

import re
from typing import Any

INPUT_ERROR = re.compile(r"InputError: (([a-z_]+) .*)$", re.DOTALL)


def input_error_field(message: str) -> dict[str, str]:
    """The input a predictor's refusal names (`...InputError: top_k must be ...`), with its own words."""
    found = INPUT_ERROR.search(message)
    return {found.group(2): found.group(1)} if found else {}


def schema_errors(body: Any) -> dict[str, str]:
    """Each input a 422 names (`detail[].loc` = body, input, name), with coglet's message for it."""
    errors: dict[str, str] = {}
    for item in body.get("detail", []) if isinstance(body, dict) else []:
        loc = item.get("loc") or []
        name = loc[2] if len(loc) > 2 and loc[:2] == ["body", "input"] else "input"
        errors[str(name)] = f"{name}: {item.get('msg', 'refused')}"
    return errors
