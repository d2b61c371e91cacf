"""transformers pipelines over a guarded model.

A plain `transformers.pipeline("text-generation", model=model, ...)` over a model that
`featureguard.wrap` guards is already guarded: the pipeline calls `model.generate`, which the
guard replaced on the instance. What it cannot do is report: its `generated_text` is the raw
decode, trigger token included, and the outcome is only in `guard.last`. `guarded_pipeline`
returns a pipeline whose outputs carry what the user should see and what fired.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import transformers
from transformers.pipelines.text_generation import ReturnType, TextGenerationPipeline

import featureguard
from featureguard import Guard, GuardError
from featureguard.guard import scored_max_new_tokens
from featureguard.integrations._local import (
    call_lock,
    last_outcomes,
    new_request_id,
    outcome_dict,
)

_KEY = "featureguard"  # in each output record, and (an object array) in the model outputs


class GuardedTextGenerationPipeline(TextGenerationPipeline):
    """A text-generation pipeline that reports, per generated sequence, the user-visible text
    and the guard's outcome. Make one with `guarded_pipeline`; `pipe.guard` is its guard."""

    guard: Guard | None = None

    def _sanitize_parameters(self, **kwargs: Any) -> tuple[dict, dict, dict]:
        # Refused here, before any generation: token ids would carry the withheld span, and the
        # guard scores one sequence per prompt.
        if kwargs.get("return_tensors") or kwargs.get("return_type") == ReturnType.TENSORS:
            raise GuardError(
                "a guarded pipeline returns text only: token ids would carry the span a block "
                "policy withheld"
            )
        _one_sequence(kwargs)
        return super()._sanitize_parameters(**kwargs)

    def _forward(self, model_inputs: dict, **generate_kwargs: Any) -> dict:
        guard = self.guard
        if guard is None:
            raise GuardError("this pipeline has no guard: make it with guarded_pipeline()")
        init_kwargs = getattr(self, "_generate_kwargs", {})  # transformers 5: set at init
        _one_sequence({**init_kwargs, **generate_kwargs})
        generate_kwargs = _ask_one_more(generate_kwargs, init_kwargs)
        request_id = generate_kwargs.setdefault("request_id", new_request_id())
        with call_lock(guard):
            out = super()._forward(model_inputs, **generate_kwargs)
            outcomes = last_outcomes(guard, request_id)
        batch, per_prompt = out["generated_sequence"].shape[:2]
        # An object array [batch, per_prompt]: the pipeline's batch iterator slices arrays
        # row by row like the tensors beside them, so batch_size > 1 needs nothing more.
        report = np.empty((batch, per_prompt), dtype=object)
        for i, outcome in enumerate(outcomes):
            report[divmod(i, per_prompt)] = (outcome.text or "", outcome_dict(outcome, request_id))
        out[_KEY] = report
        return out

    def postprocess(self, model_outputs: dict, **params: Any) -> list[dict[str, Any]]:
        model_outputs = dict(model_outputs)
        report = model_outputs.pop(_KEY)[0]
        records = super().postprocess(model_outputs, **params)
        full = params.get("return_type", ReturnType.FULL_TEXT) == ReturnType.FULL_TEXT
        prompt = model_outputs["prompt_text"]
        for record, (text, outcome) in zip(records, report, strict=True):
            record["generated_text"] = _visible(prompt, text, params) if full else text
            record[_KEY] = outcome
        return records


def _one_sequence(kwargs: dict[str, Any]) -> None:
    if (kwargs.get("num_return_sequences") or 1) > 1:
        raise GuardError(
            "a guarded pipeline generates one sequence per prompt "
            "(num_return_sequences > 1 is not supported)"
        )


def _visible(prompt: Any, reply: str, params: dict[str, Any]) -> Any:
    """The full text with the guarded reply in place of the raw decode: the prompt and the
    reply for a string; for a chat, its messages and a plain assistant message (parsed fields
    such as tool calls are dropped: they could hold the withheld span)."""
    if isinstance(prompt, str):
        return prompt + reply
    messages = [dict(m) for m in prompt.messages]
    cont = params.get("continue_final_message")
    if cont if cont is not None else messages[-1]["role"] == "assistant":
        messages[-1]["content"] = messages[-1]["content"] + reply
        return messages
    return [*messages, {"role": "assistant", "content": reply}]


def _ask_one_more(generate_kwargs: dict[str, Any], init_kwargs: dict[str, Any]) -> dict[str, Any]:
    """One more new token than asked, where the count is known: the guard never scores the
    last token, so without it the user-visible text is one token short."""
    n = generate_kwargs.get("max_new_tokens", init_kwargs.get("max_new_tokens"))
    if n is None or "generation_config" in generate_kwargs:
        return dict(generate_kwargs)
    return {**generate_kwargs, "max_new_tokens": scored_max_new_tokens(n)}


def guarded_pipeline(
    model: Any,
    policies: Any,
    tokenizer: Any = None,
    *,
    audit: Any = None,
    **pipeline_kwargs: Any,
) -> GuardedTextGenerationPipeline:
    """A text-generation pipeline over `model` guarded by `policies`, in one line.

        pipe = guarded_pipeline(model, "policies/x.yaml", tok)
        [out] = pipe("def fetch(url):", max_new_tokens=64)
        out["generated_text"], out["featureguard"]["blocked_by"]

    `model` is a model or a model id (loaded by `transformers.pipeline`); `policies` and
    `audit` are as for `featureguard.wrap`, which is applied to the pipeline's model, so the
    guard is `pipe.guard` (call `pipe.guard.detach()` to unguard the model). Other keyword
    arguments go to `transformers.pipeline`.

    Each output record holds, per generated sequence:
    - `generated_text`: what the user may see: the reply's scored tokens, or the blocking
      policy's message (never the withheld span). The reply only, unless `return_full_text=True`
      is passed (then the prompt, or the chat's messages, followed by that reply).
    - `featureguard`: `SequenceOutcome.to_dict()` (blocked, blocked_by, policies, finish_reason,
      triggers) and the audit `request_id`.

    A list of prompts gives one list of records per prompt. With `batch_size=1` (the default)
    each prompt is its own `generate` call and audit request. With `batch_size > 1` the
    prompts of a batch are generated together (left-padded) as one audit request: they share a
    `request_id`, each keeps its own outcome, and a blocked row stops while the others go on.
    A `request_id=` call argument names the audit request of every `generate` call that
    pipeline call makes; by default each gets a fresh one. `max_new_tokens` counts scored
    tokens (one more is generated and dropped). Token-id outputs (`return_tensors`) and
    `num_return_sequences > 1` are refused.
    """
    pipeline_kwargs.setdefault("return_full_text", False)
    pipe = transformers.pipeline(
        "text-generation",
        model=model,
        tokenizer=tokenizer,
        pipeline_class=GuardedTextGenerationPipeline,
        **pipeline_kwargs,
    )
    pipe.guard = featureguard.wrap(pipe.model, policies, tokenizer=pipe.tokenizer, audit=audit)
    return pipe


__all__ = ["GuardedTextGenerationPipeline", "guarded_pipeline"]
