"""featureguard on Ray (extra `ray`: `pip install 'featureguard[ray]'`).

- `serve`: a Ray Serve deployment per model: each replica loads and wraps the model once and
  serves the same FastAPI app as `featureguard serve`, batching non-streaming requests; each
  replica writes its own audit shard, and one anchor writer records every shard's head
  (`featureguard serve --ray --replicas N`).
- `data`: `featureguard scan`: a Ray Data job that scores JSONL or Parquet text with the same
  policy file (forward passes that stop after the deepest hooked layer), writing per-row results
  and, optionally, trace shards for `featureguard audit replay`.

Importing this package is cheap; Ray is imported by the submodules.
"""
