"""The result an agent may report: one JSON document in the file ``$KUBETASK_RESULT_FILE``, the agent
container's terminationMessagePath, which the kubelet returns with the container's status."""

from __future__ import annotations

from pydantic import Field

from kubetask.api.base import ApiModel

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
