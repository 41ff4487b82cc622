"""``UnmirroredComputeLogManager``: Dagster's local compute logs without the copy to the worker's stdout.

``LocalComputeLogManager`` mirrors what a captured process prints back to its own stdout: per process it
starts ``tail -F`` for stdout and for stderr, and beside each a fresh Python interpreter
(``watch_orphans``) that kills its tail should the worker die. On this machine the two interpreters
cost about 0.8 CPU-seconds per run, about what the rest of a Task's run costs, and the copy they make
ends up in the daemon's log, where nobody reads a step's output. This manager redirects the streams into
the same files (fd level, so subprocesses and C code are captured too) and starts nothing; reading,
subscribing and the UI's log viewer are ``LocalComputeLogManager``'s, unchanged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from dagster import Field, StringSource
from dagster._core.execution.compute_logs import redirect_to_file
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import IO_TYPE_EXTENSION, LocalComputeLogManager
from dagster._serdes import ConfigurableClassData
from dagster._utils import ensure_file, touch_file


class UnmirroredComputeLogManager(LocalComputeLogManager):
    """Stores each captured process's stdout and stderr on disk, like ``LocalComputeLogManager``,
    without starting a tail and a watcher interpreter per stream. ``base_dir`` defaults to
    ``$DAGSTER_HOME/storage``, the default of Dagster's own."""

    def __init__(
        self,
        base_dir: str | None = None,
        polling_timeout: float | None = None,
        inst_data: ConfigurableClassData | None = None,
    ):
        super().__init__(base_dir or os.path.join(os.environ["DAGSTER_HOME"], "storage"), polling_timeout, inst_data)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"base_dir": Field(StringSource, is_required=False), "polling_timeout": Field(float, is_required=False)}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> UnmirroredComputeLogManager:
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Generator[CapturedLogContext, None, None]:
        outpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        errpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])
        ensure_file(outpath)
        ensure_file(errpath)
        with redirect_to_file(sys.stdout, outpath), redirect_to_file(sys.stderr, errpath):
            yield CapturedLogContext(log_key)
        touch_file(self.complete_artifact_path(log_key))  # as Dagster's: the capture is complete
