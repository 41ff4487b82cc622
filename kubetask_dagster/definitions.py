"""The `kubetask` Dagster code location."""

from dagster import Definitions

from .jobs import task_job
from .ops import KubeResource

defs = Definitions(jobs=[task_job], resources={"kube": KubeResource()})
