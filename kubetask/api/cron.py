"""A cron expression check that the API server (CEL, RE2) and Python share: five fields or a macro."""

from __future__ import annotations

import re

_MONTHS = "JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC"
_DAYS = "SUN|MON|TUE|WED|THU|FRI|SAT"
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def _field(value: str) -> str:
    item = rf"(\*|({value})(-({value}))?)(/[1-9][0-9]?)?"
    return rf"{item}(,{item})*"


_FIELDS = [
    _field(r"[0-5]?[0-9]"),
    _field(r"[01]?[0-9]|2[0-3]"),
    _field(r"0?[1-9]|[12][0-9]|3[01]"),
    _field(rf"0?[1-9]|1[0-2]|{_MONTHS}|{_MONTHS.lower()}"),
    _field(rf"[0-7]|{_DAYS}|{_DAYS.lower()}"),
]
CRON_PATTERN = "^(" + " +".join(f"({f})" for f in _FIELDS) + "|" + "|".join(MACROS) + ")$"


def is_valid_cron(expression: str) -> bool:
    return (
        re.fullmatch(CRON_PATTERN, expression.strip() if expression else "") is not None
        and expression == expression.strip()
    )


def to_five_fields(expression: str) -> str:
    """Expand a macro such as @daily into the five-field form schedulers accept."""
    return MACROS.get(expression, expression)
