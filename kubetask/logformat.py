"""One JSON object per log line, for the bridge (``--log-format json``) and the run workers (Dagster's
``python_logs.dagster_handler_config``): time, level, logger, thread, message, and the record's extra
fields (a Dagster record's run id, job and step; a run worker's Task and attempt)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
DAGSTER_META = "dagster_meta"
"""The attribute under which Dagster's log manager attaches its metadata to a record."""
_DAGSTER_FIELDS = {"run_id": "run_id", "job_name": "job", "step_key": "step"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON; values that are not JSON become their ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key == DAGSTER_META and isinstance(value, Mapping):
                line |= {out: value[k] for k, out in _DAGSTER_FIELDS.items() if value.get(k)}
                line["message"] = value.get("orig_message") or line["message"]
            elif key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        line |= self.context()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)

    def context(self) -> dict[str, Any]:
        """Fields to add to every line (none here; a subclass adds the run worker's Task)."""
        return {}
