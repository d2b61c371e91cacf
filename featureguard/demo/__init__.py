"""The embedded demo: a corpus, a checker, and the small model trained on them."""
