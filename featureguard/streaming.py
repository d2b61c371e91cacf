"""A streamer that shows a token only after its own forward pass has scored it.

transformers hands a streamer each token as soon as it is sampled, one forward pass before the
guard has seen that token's activation. `GuardedStreamer` therefore holds one token back: when
token n+1 arrives, token n has been scored, and it is shown unless its row was blocked. The
last token, which no forward pass reads, is never shown.
"""

from __future__ import annotations

import queue
from typing import TYPE_CHECKING, Any

import torch
from transformers.generation.streamers import BaseStreamer

from featureguard.errors import GuardError

if TYPE_CHECKING:
    from featureguard.guard import Guard

_DONE = object()


class GuardedStreamer(BaseStreamer):
    """Iterate over text chunks; pass to `model.generate(streamer=...)` of a guarded model."""

    def __init__(self, guard: Guard, tokenizer: Any, timeout: float | None = None) -> None:
        self.guard, self.tokenizer, self.timeout = guard, tokenizer, timeout
        self._queue: queue.Queue = queue.Queue()
        self._prompt_seen = False
        self._pending: int | None = None
        self._shown: list[int] = []
        self._text = ""
        self._stopped = False
        self._ended = False

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1 and value.shape[0] > 1:
            raise GuardError("a streamer follows one sequence: stream with batch size 1")
        if not self._prompt_seen:  # generate first hands over the prompt
            self._prompt_seen = True
            return
        token = int(value.reshape(-1)[0])
        state = self.guard._state
        if state is not None and bool(state.blocked[0]):
            self._stopped = True
        if self._pending is not None and not self._stopped:
            self._show(self._pending)
        self._pending = token

    def _show(self, token: int) -> None:
        self._shown.append(token)
        text = self.tokenizer.decode(self._shown, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for the rest
            return
        chunk, self._text = text[len(self._text) :], text
        if chunk:
            self._queue.put(chunk)

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put(_DONE)

    def __iter__(self) -> GuardedStreamer:
        return self

    def __next__(self) -> str:
        item = self._queue.get(timeout=self.timeout)
        if item is _DONE:
            raise StopIteration
        return item
