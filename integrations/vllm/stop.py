"""The logits processor that ends a blocked request within the step that blocked it.

vLLM samples every request of a step after the forward pass in which featureguard scored it.
For a request the guard blocked, this processor leaves one allowed token, the sentinel, which
every guarded request lists in its `stop_token_ids`: the request then ends with
`stop_reason == sentinel`, and vLLM keeps the stop token out of the text. Every other row has
the sentinel masked, so no request can end that way by chance. The frontends turn that stop
reason into `finish_reason == "content_filter"`.

Loaded by qualified name in the worker (`logits_processors=[...]`), so no callable is pickled;
the worker binds it to its `GuardRuntime` at model load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from featureguard.integrations.vllm import geometry

if TYPE_CHECKING:
    from featureguard.integrations.vllm.runtime import GuardRuntime


class GuardStop(LogitsProcessor):
    """Force the sentinel on blocked rows; mask it on the others."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.runtime: GuardRuntime | None = None
        self._forced: torch.Tensor | None = None  # [vocab]: 0 at the sentinel, -inf elsewhere

    def bind(self, runtime: GuardRuntime) -> None:
        """Read decisions from `runtime` (done once, by the worker at model load)."""
        self.runtime = runtime

    def is_argmax_invariant(self) -> bool:
        return False  # it changes which token wins

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Nothing to track: the rows' requests are read from the batch at `apply` time."""

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        runtime = self.runtime
        if runtime is None:  # a sampler run before the model loaded (vLLM's warm-up)
            return logits
        order = geometry.batch_order(runtime.runner)
        if not order:
            return logits
        if self._forced is None or self._forced.shape[0] != logits.shape[1]:
            self._forced = torch.full((logits.shape[1],), float("-inf"), device=logits.device,
                                      dtype=logits.dtype)  # fmt: skip
            self._forced[runtime.sentinel] = 0.0
        if len(order) == logits.shape[0]:
            blocked = runtime.blocked_rows(order).to(logits.device)  # [rows]
        else:  # rows we cannot attribute (speculative decoding is refused at start-up)
            blocked = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
        logits[:, runtime.sentinel] = float("-inf")
        return torch.where(blocked[:, None], self._forced, logits)
