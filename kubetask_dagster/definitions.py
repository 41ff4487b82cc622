"""The `kubetask` Dagster code location."""

from dagster import Definitions

from .jobs import batch_job, task_job
from .taskflow import KubeResource

defs = Definitions(jobs=[task_job, batch_job], resources={"kube": KubeResource()})
