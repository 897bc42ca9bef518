"""OverFill Serve: two-stage LLM inference.

A full model prefills the prompt and samples the first token; a width-pruned copy of it (the decoder) continues
decoding on the full model's KV cache (arXiv 2508.08446). This package is the library: model loading, calibration,
pruning, the two-stage engine. It knows nothing of Ray; the services in `services/` adapt it.
"""

__version__ = "0.1.0"
