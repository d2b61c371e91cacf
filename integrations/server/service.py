"""The guarded model behind the server: one worker thread, a bounded queue, three jobs.

Requests are served one at a time, in arrival order, by a single worker thread. Why not
batching: a guard holds one generation's state per model, requests differ in sampling
settings and length, and on the CPUs and single GPUs this server targets one generation
already keeps the device busy; a queue keeps every request's audit records and `guard.last`
its own without a lock around each step. Waiting requests are bounded (`max_queue`): past
it `submit` raises `QueueFull` at once (the app answers 503 with Retry-After) instead of
letting latency grow without limit.

Nothing here knows HTTP: `app.py` turns requests into these calls and results into JSON.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from featureguard import Guard, SequenceOutcome
from featureguard.guard import encode_prompts
from featureguard.integrations._local import cut_at_stop
from featureguard.outcomes import TextScore

END = object()
"""The item `iterate_in_worker` puts last on its queue."""


class QueueFull(Exception):
    """Every slot of the server's queue is taken; retry after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Sampling:
    """The generation settings a request may set (OpenAI's names and defaults)."""

    max_tokens: int = 128
    temperature: float = 1.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    """Strings that end a reply; the reply stops before the first one and does not contain it."""
    seed: int | None = None
    n: int = 1

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_tokens}
        if self.temperature > 0:
            kwargs |= {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}
        else:
            kwargs["do_sample"] = False
        return kwargs


@dataclass(slots=True)
class Choice:
    """One reply as the client sees it."""

    index: int
    text: str
    finish_reason: str
    outcome: SequenceOutcome


@dataclass(slots=True)
class Completion:
    """A finished request: its replies and token counts (prompt tokens over every row)."""

    request_id: str
    choices: list[Choice]
    prompt_tokens: int
    completion_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.completion_tokens = sum(c.outcome.completion_tokens for c in self.choices)


class GuardedService:
    """Serialises guarded generation and scoring on one model; safe to call from any thread."""

    def __init__(self, guard: Guard, model_id: str, *, max_queue: int = 16) -> None:
        if guard.tokenizer is None:
            raise ValueError("the server needs a guard made with a tokenizer")
        self.guard, self.model_id, self.max_queue = guard, model_id, max_queue
        self.tokenizer = guard.tokenizer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="featureguard")
        self._pending = 0  # running + waiting
        self._count_lock = threading.Lock()

    # ---- the queue -----------------------------------------------------------------------------
    def submit(self, job: Callable[[], Any]) -> Future:
        """Run `job` on the worker after those already waiting; `QueueFull` when none is free."""
        with self._count_lock:
            if self._pending > self.max_queue:  # one running plus max_queue waiting
                raise QueueFull(retry_after=max(1, self._pending // 2))
            self._pending += 1
        future = self._executor.submit(job)
        future.add_done_callback(self._release)
        return future

    def _release(self, _future: Future) -> None:
        with self._count_lock:
            self._pending -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    # ---- prompts -------------------------------------------------------------------------------
    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> str:
        """The model's chat template over `messages`; without one, the contents joined by
        newlines (a completion model, like the demo's, then continues the last message)."""
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
            # Templates that write the BOS token would get a second one when the text is
            # tokenized with the tokenizer's own special tokens: keep the tokenizer's.
            bos = self.tokenizer.bos_token
            if bos and text.startswith(bos) and _adds_bos(self.tokenizer):
                text = text[len(bos) :]
            return text
        return "\n".join(m["content"] for m in messages)

    # ---- jobs (run on the worker thread) -------------------------------------------------------
    def complete(self, prompts: Sequence[str], sampling: Sampling, request_id: str) -> Completion:
        """Generate `sampling.n` replies to each prompt, in one batch: choice i·n + j is
        prompt i's reply j."""
        return self.complete_many([(prompts, request_id)], sampling)[0]

    def complete_many(
        self, requests: Sequence[tuple[Sequence[str], str]], sampling: Sampling
    ) -> list[Completion]:
        """`complete` for several (prompts, request id) pairs with the same sampling, in one
        batch; each request is audited as a call of its own."""
        batch = [p for prompts, _ in requests for p in prompts for _ in range(sampling.n)]
        rids = [rid for prompts, rid in requests for _ in prompts for _ in range(sampling.n)]
        kwargs, mask = self._prepare(batch, sampling)
        self.guard.generate(batch, request_id=rids, **kwargs)
        outcomes, done, row = self.guard.last, [], 0
        for prompts, rid in requests:
            rows = range(row, row + len(prompts) * sampling.n)
            choices = [_choice(i, outcomes[r], sampling.stop) for i, r in enumerate(rows)]
            done.append(Completion(rid, choices, int(mask[row : rows.stop].sum())))
            row = rows.stop
        return done

    async def complete_async(
        self, prompts: Sequence[str], sampling: Sampling, request_id: str
    ) -> Completion:
        """`complete` on the worker, awaited; QueueFull when no slot is free. A subclass may
        gather concurrent calls into batches (`featureguard.integrations.ray.serve`)."""
        return await asyncio.wrap_future(
            self.submit(lambda: self.complete(prompts, sampling, request_id))
        )

    def stream(
        self, prompt: str, sampling: Sampling, request_id: str, cancelled: threading.Event
    ) -> Iterator[str | Completion]:
        """Yield the reply's text in chunks, each already scored and cut before any stop
        string, then its `Completion`. Setting `cancelled` ends the generation early."""
        kwargs, mask = self._prepare([prompt], sampling)
        kwargs["stopping_criteria"] = [*kwargs["stopping_criteria"], _Cancelled(cancelled)]
        held = _StopHoldback(sampling.stop)
        # Read the stream to its end even after a stop string: the stop criterion ends the
        # generation within a token, and only then is `guard.last` this request's outcome.
        for chunk in self.guard.stream(prompt, request_id=request_id, **kwargs):
            shown = held.feed(chunk)
            if shown:
                yield shown
        tail = held.flush()
        if tail:
            yield tail
        choice = _choice(0, self.guard.last[0], sampling.stop)
        if held.stopped and not choice.outcome.blocked:
            choice.finish_reason = "stop"
        yield Completion(request_id, [choice], int(mask.sum()))

    def score(self, texts: Sequence[str], request_id: str) -> list[TextScore]:
        return self.guard.score(list(texts), request_id=request_id)

    def _prepare(
        self, prompts: list[str], sampling: Sampling
    ) -> tuple[dict[str, Any], torch.Tensor]:
        """Generation kwargs for `prompts`, and their attention mask [b, S]."""
        if sampling.seed is not None:  # the worker is the only thread generating: seed it
            torch.manual_seed(sampling.seed)
        device = next(self.guard.model.parameters()).device
        mask = encode_prompts(self.tokenizer, prompts, device)["attention_mask"]
        kwargs = sampling.generate_kwargs()
        criteria = (
            [_StopOnText(self.tokenizer, sampling.stop, mask.shape[1])] if sampling.stop else []
        )
        kwargs["stopping_criteria"] = StoppingCriteriaList(criteria)
        return kwargs, mask


def _choice(index: int, outcome: SequenceOutcome, stops: Sequence[str]) -> Choice:
    text, cut = (
        cut_at_stop(outcome.text or "", stops) if not outcome.blocked else (outcome.text, False)
    )
    return Choice(index, text or "", "stop" if cut else outcome.finish_reason, outcome)


class _StopOnText(StoppingCriteria):
    """Ends a row once its scored text (every token but the newest, which the guard has not
    read yet) contains a stop string. Called every step, it decodes only the tail that a stop
    string completed by the newest scored token can lie in (earlier steps checked the rest):
    every token is at least one character, plus slack for characters split across tokens."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_len: int) -> None:
        self.tokenizer, self.stops, self.prompt_len = tokenizer, tuple(stops), prompt_len
        self.window = max(len(s) for s in self.stops) + 4

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        start = max(self.prompt_len, input_ids.shape[1] - 1 - self.window)
        texts = self.tokenizer.batch_decode(input_ids[:, start:-1], skip_special_tokens=True)
        hit = [any(s in t for s in self.stops) for t in texts]
        return torch.tensor(hit, dtype=torch.bool, device=input_ids.device)


class _Cancelled(StoppingCriteria):
    """Ends every row once the client has gone away."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(
        self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), device=input_ids.device)


class _StopHoldback:
    """Streams text but holds back what could still become a stop string, so a client never
    receives any part of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops, self.keep = tuple(stops), max((len(s) for s in stops), default=1) - 1
        self.buffer, self.stopped = "", False

    def feed(self, chunk: str) -> str:
        if self.stopped:  # nothing after a stop string is shown
            return ""
        self.buffer += chunk
        text, self.stopped = cut_at_stop(self.buffer, self.stops)
        if self.stopped:
            self.buffer = ""
            return text
        cut = len(self.buffer) - self.keep
        shown, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return shown

    def flush(self) -> str:
        shown, self.buffer = ("" if self.stopped else self.buffer), ""
        return shown


def iterate_in_worker(
    service: GuardedService, make: Callable[[], Iterator[Any]]
) -> tuple[Future, queue.Queue]:
    """Run the generator `make()` as one job on the worker; its items arrive on the returned
    queue, then the future's result (None) or exception marks the end."""
    items: queue.Queue = queue.Queue()

    def job() -> None:
        try:
            for item in make():
                items.put(item)
        finally:
            items.put(END)

    return service.submit(job), items


def _adds_bos(tokenizer: Any) -> bool:
    """Whether tokenizing text puts the BOS token in front of it."""
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id
