"""Generation through a featureguard server: its OpenAI-compatible endpoints
(`/v1/chat/completions`, `/v1/completions`), and the `featureguard` field it adds to each
response (what fired, per choice)."""

from __future__ import annotations

from typing import Any

import httpx

from featureguard.integrations.langchain._params import GuardedParams, Replies, Reply

CHAT = "chat/completions"
COMPLETIONS = "completions"


def request(
    params: GuardedParams, endpoint: str, body: dict[str, Any], stop: list[str] | None, call: dict
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """URL, JSON body and headers of one call (`body`: the messages or the prompt; `call`: the
    call's keyword arguments)."""
    max_tokens, temperature = params.settings(call)
    payload: dict[str, Any] = {"model": params.model_name, **body, "max_tokens": max_tokens}
    if params.model_name is None:
        del payload["model"]
    if temperature is not None:
        payload["temperature"] = temperature
    if stop:
        payload["stop"] = list(stop)
    headers = {"Accept": "application/json"}
    if params.api_key is not None:
        headers["Authorization"] = f"Bearer {params.api_key.get_secret_value()}"
    base = params.base_url.rstrip("/")
    base = base if base.endswith("/v1") else f"{base}/v1"
    return f"{base}/{endpoint}", payload, headers


def post(params: GuardedParams, url: str, payload: dict, headers: dict[str, str]) -> Replies:
    if params.http_client is not None:
        return parse(params.http_client.post(url, json=payload, headers=headers))
    with httpx.Client(timeout=params.timeout) as client:
        return parse(client.post(url, json=payload, headers=headers))


async def apost(params: GuardedParams, url: str, payload: dict, headers: dict[str, str]) -> Replies:
    if params.http_async_client is not None:
        return parse(await params.http_async_client.post(url, json=payload, headers=headers))
    async with httpx.AsyncClient(timeout=params.timeout) as client:
        return parse(await client.post(url, json=payload, headers=headers))


def parse(response: httpx.Response) -> Replies:
    """The choices of a chat or completion response, in index order, each with its part of
    the `featureguard` field and the request id."""
    if response.is_error:
        raise httpx.HTTPStatusError(
            f"featureguard server answered {response.status_code}: {response.text[:500]}",
            request=response.request,
            response=response,
        )
    data = response.json()
    report = data.get("featureguard")
    by_index = {c.get("index", 0): c for c in (report or {}).get("choices", [])}
    request_id = report.get("request_id") if report else None
    choices = []
    for choice in sorted(data["choices"], key=lambda c: c.get("index", 0)):
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        part = by_index.get(choice.get("index", 0))
        outcome = None
        if part is not None:
            outcome = {k: v for k, v in part.items() if k != "index"}
            outcome["request_id"] = request_id
        choices.append(Reply(text or "", choice.get("finish_reason") or "stop", outcome))
    usage = data.get("usage") or {}
    return Replies(
        choices=choices,
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        completion_tokens=int(usage.get("completion_tokens", 0)),
        model=data.get("model", ""),
        request_id=request_id,
    )
