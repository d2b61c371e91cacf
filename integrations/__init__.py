"""Adapters between a guarded model and the software around it: an OpenAI-compatible server,
`transformers` pipelines, LangChain and OpenTelemetry. Installed as `featureguard.integrations`;
each adapter needs its own extra (`server`, `langchain`, `otel`) and imports nothing from it
until used."""
