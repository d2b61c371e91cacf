"""Adapters between a guarded model and the software around it: an OpenAI-compatible server,
`transformers` pipelines, LangChain, OpenTelemetry, Ray and vLLM. Installed as
`featureguard.integrations`; each adapter needs its own extra (`server`, `langchain`, `otel`,
`ray`, `vllm`) and imports nothing from it until used."""
