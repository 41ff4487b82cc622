"""Jobs the forking launcher's test runs: one that writes its pid, one that waits to be stopped."""

import os
import time
from pathlib import Path

from dagster import Config, in_process_executor, job, op


class Marker(Config):
    path: str


@op
def write_pid(config: Marker) -> None:
    Path(config.path).write_text(str(os.getpid()))


@op
def wait_long(config: Marker) -> None:
    Path(config.path).write_text(str(os.getpid()))
    time.sleep(120)


@job(executor_def=in_process_executor)
def quick_job() -> None:
    write_pid()


@job(executor_def=in_process_executor)
def slow_job() -> None:
    wait_long()
