"""featureguard inside vLLM (extra `vllm`: `pip install 'featureguard[vllm]'`): per-token policies
scored in vLLM's own worker, under continuous batching and chunked prefill.

- `frontend`: `GuardedLLM` / `GuardedAsyncLLM`, and `engine_kwargs` / `guarded_params` /
  `release` for building your own;
- `serve`: vLLM's OpenAI-compatible server, guarded (`python -m
  featureguard.integrations.vllm.serve MODEL --policies FILE [vLLM options]`);
- `worker`, `runtime`, `stop`: what runs in vLLM's worker processes; `geometry`: the only
  module that reads vLLM's runner internals (supported: vllm 0.32.x, V1 model runner).

Importing this package is cheap; vLLM is imported by the submodules. See docs/vllm.md.
"""
