"""Generation through a local `Guard`, its outcome read under the adapters' per-guard lock
(LangChain's `batch` runs calls in threads, and `guard.last` belongs to the guard, not to a
call)."""

from __future__ import annotations

from typing import Any

import torch

from featureguard import Guard, SequenceOutcome
from featureguard.guard import scored_max_new_tokens
from featureguard.integrations._local import (
    call_lock,
    cut_at_stop,
    last_outcomes,
    new_request_id,
    outcome_dict,
)
from featureguard.integrations.langchain._params import GuardedParams, Replies, Reply


def chat(
    params: GuardedParams, messages: list[dict[str, str]], stop: list[str] | None, call: dict
) -> Replies:
    """One reply to a chat. The prompt is the tokenizer's chat template (with the generation
    prompt) when it has one, else the messages' contents joined by newlines. `call`: the
    call's keyword arguments (`.bind(max_tokens=...)`)."""
    guard, (max_tokens, temperature) = params.guard, params.settings(call)
    inputs = _chat_inputs(guard, messages)
    request_id = new_request_id()
    with call_lock(guard):
        guard.model.generate(
            **inputs,
            request_id=request_id,
            **params.generate_kwargs,
            **_sampling(temperature),
            max_new_tokens=scored_max_new_tokens(max_tokens),
        )
        outcomes = last_outcomes(guard, request_id)
    prompt_tokens = inputs["input_ids"].shape[1]
    return _replies(params, request_id, outcomes, stop, prompt_tokens)


def complete(
    params: GuardedParams, prompts: list[str], stop: list[str] | None, call: dict
) -> Replies:
    """One reply per prompt, the prompts generated together as one left-padded batch (one
    audit request)."""
    guard, (max_tokens, temperature) = params.guard, params.settings(call)
    request_id = new_request_id()
    with call_lock(guard):
        guard.generate(
            prompts,
            request_id=request_id,
            max_new_tokens=max_tokens,
            **params.generate_kwargs,
            **_sampling(temperature),
        )
        outcomes = last_outcomes(guard, request_id)
    prompt_tokens = sum(len(guard.tokenizer(p)["input_ids"]) for p in prompts)
    return _replies(params, request_id, outcomes, stop, prompt_tokens)


def _chat_inputs(guard: Guard, messages: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    tok = guard.tokenizer
    if getattr(tok, "chat_template", None):
        # Token ids straight from the template: its text re-tokenized would get a second BOS.
        enc = tok.apply_chat_template(
            messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
    else:
        enc = tok("\n".join(m["content"] for m in messages), return_tensors="pt")
    device = next(guard.model.parameters()).device
    return {k: enc[k].to(device) for k in ("input_ids", "attention_mask") if k in enc}


def _sampling(temperature: float | None) -> dict[str, Any]:
    if temperature is None:  # the model's generation_config decides
        return {}
    if temperature == 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature}


def _replies(
    params: GuardedParams,
    request_id: str,
    outcomes: list[SequenceOutcome],
    stop: list[str] | None,
    prompt_tokens: int,
) -> Replies:
    choices = []
    for outcome in outcomes:
        text, finish = outcome.text or "", outcome.finish_reason
        if not outcome.blocked:
            text, stopped = cut_at_stop(text, stop)
            finish = "stop" if stopped else finish
        choices.append(Reply(text, finish, outcome_dict(outcome, request_id)))
    model = params.guard.model
    name = params.model_name or getattr(model, "name_or_path", "") or type(model).__name__
    return Replies(
        choices=choices,
        prompt_tokens=int(prompt_tokens),
        completion_tokens=sum(o.completion_tokens for o in outcomes),
        model=name,
        request_id=request_id,
    )
