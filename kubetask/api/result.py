"""The result an agent may report: one JSON document in the file ``$KUBETASK_RESULT_FILE``, the agent
container's terminationMessagePath, which the kubelet returns with the container's status."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, model_validator

from kubetask.api.base import ApiModel, Duration, cel, k8s_extra

MAX_RESULT_BYTES = 4096
"""The kubelet keeps at most 4 KiB of a container's termination message."""


class PullRequest(ApiModel):
    """A pull (merge) request the agent opened or updated."""

    url: str = Field(description="Its web address.", pattern=r"^https?://", max_length=2048)
    branch: str | None = Field(None, description="The branch it proposes.", max_length=255)
    commit: str | None = Field(None, description="The head commit.", max_length=64)


class Usage(ApiModel):
    """What the agent's model calls cost."""

    input_tokens: int | None = Field(None, description="Tokens sent to the model.", ge=0)
    output_tokens: int | None = Field(None, description="Tokens the model produced.", ge=0)
    cost_usd: float | None = Field(None, alias="costUSD", description="Cost in US dollars.", ge=0)
    model: str | None = Field(None, description="The model, as its provider names it.", max_length=255)


class AgentResult(ApiModel):
    """What the agent reports about its run: a summary, its pull requests, its usage, small outputs."""

    summary: str | None = Field(None, description="What the agent did, in a few sentences.", max_length=4096)
    pull_requests: list[PullRequest] | None = Field(None, description="Pull requests it opened.", max_length=20)
    usage: Usage | None = Field(None, description="Tokens and cost of its model calls.")
    outputs: dict[str, str] | None = Field(
        None, description="Small named outputs (a few strings) for later steps.", max_length=32
    )
    rate_limited_until: str | None = Field(
        None,
        description="RFC 3339 time at which the provider's rate limit resets, when the agent stopped on one.",
        max_length=64,
    )


class UsageSum(ApiModel):
    """Usage that agents reported, summed."""

    input_tokens: int = Field(0, description="Tokens sent to the models.", ge=0)
    output_tokens: int = Field(0, description="Tokens the models produced.", ge=0)
    cost_usd: float = Field(0.0, alias="costUSD", description="Cost in US dollars.", ge=0)


class TaskUsage(UsageSum):
    """The usage every attempt of a Task reported, summed."""

    through_attempt: int = Field(
        0, description="The last attempt whose usage is in the sum (an attempt is counted once).", ge=0
    )


class UsageTotals(UsageSum):
    """The usage the Tasks of a BatchRun reported, summed."""

    tasks: int = Field(0, description="Tasks that reported usage.", ge=0)


class Budget(ApiModel):
    """A cap on what a BatchRun's agents may spend: once their reported total passes it, no further Task starts."""

    model_config = ApiModel.model_config | {
        "json_schema_extra": k8s_extra(
            cel("has(self.maxCostUSD) || has(self.maxTokens)", "a budget sets maxCostUSD, maxTokens or both")
        )
    }

    max_cost_usd: float | None = Field(None, alias="maxCostUSD", description="US dollars.", gt=0)
    max_tokens: int | None = Field(None, description="Input plus output tokens.", gt=0)

    @model_validator(mode="after")
    def _some_cap(self) -> Budget:
        if self.max_cost_usd is None and self.max_tokens is None:
            raise ValueError("a budget sets maxCostUSD, maxTokens or both")
        return self


class PeriodBudget(Budget):
    """A cap on what a WorkspaceConfig's agents may spend per ``period``: once their reported total for the
    current period reaches it, its Tasks wait until the next period."""

    period: Duration = Field(description="The budget's period (e.g. 24h), counted from the Unix epoch in UTC.")


class PeriodSpend(UsageSum):
    """What a WorkspaceConfig's agents reported spending in the current period."""

    period_start: datetime = Field(description="When the current period began.")
