"""`overfill loadtest`: a load generator for the OverFill Serve gRPC API with `vllm bench serve`'s vocabulary.

One module per job: `arrivals` (when requests are sent), `datasets` (what is sent), `client` (one streamed request,
timed), `runner` (a whole benchmark: arrivals, concurrency limit, warm-ups, live progress, per-second samples),
`metrics` (vLLM's definitions), `result` (vLLM's flat JSON keys and its end table), `sweep`, `step` and
`capacity` (the three experiments built on a benchmark), `plots`, `stub_server` (a model-free server for tests and
capacity checks), `stream_timing` (the TTFT/E2E measurement behind `locustfile.py`). See loadtest/README.md.
"""
