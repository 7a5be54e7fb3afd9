"""The learning loop's side of a running server: traffic samples of served requests, and a sampled
share judged (an LLM judge, or a judge a package registers under ``tierwise.judges``)."""
