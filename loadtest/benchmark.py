"""A benchmark against one target: probe it once, build requests, run them at given send times and measure.

`overfill loadtest` runs one; `sweep`, `step` and `client-capacity` run several with the same settings.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loadtest.client import Connection
from loadtest.datasets import RandomSpec, SampleRequest, find_tokenizer, jsonl_requests, random_requests
from loadtest.metrics import BenchmarkMetrics, compute_metrics
from loadtest.result import build_result
from loadtest.runner import RunOutput, RunSpec, probe, run_benchmark

DATASETS = ("random", "jsonl")


@dataclass
class BenchmarkConfig:
    connection: Connection
    dataset: str = "random"
    random: RandomSpec = field(default_factory=RandomSpec)
    dataset_path: Path | None = None           # --dataset jsonl
    jsonl_output_len: int = 0                  # max_tokens for jsonl lines without one (0 = service default)
    tokenizer: str = "auto"                    # "auto", "none" or a tokenizer directory (random prompts)
    max_concurrency: int | None = None
    num_warmups: int = 0
    seed: int = 0
    goodput_ms: dict[str, float] = field(default_factory=dict)
    percentiles: list[float] = field(default_factory=lambda: [99.0])
    request_timeout_s: float | None = 600.0
    temperature: float | None = None
    label: str | None = None
    request_id_prefix: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:8]}-")
    ready_timeout_s: float = 60.0
    show_progress: bool = True
    save_detailed: bool = False

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.dataset == "jsonl" and self.dataset_path is None:
            raise ValueError("--dataset jsonl needs --dataset-path FILE.jsonl")
        if self.dataset_path is not None and not Path(self.dataset_path).is_file():
            raise ValueError(f"--dataset-path {self.dataset_path}: no such file")
        if self.jsonl_output_len < 0:
            raise ValueError(f"--jsonl-output-len must be >= 0, got {self.jsonl_output_len}")


@dataclass
class Measured:
    result: dict                  # the flat vLLM-style result (see loadtest.result)
    run: RunOutput
    metrics: BenchmarkMetrics


class Benchmark:
    """Probes the target on creation (ready check, served model, tokenizer for random prompts)."""

    def __init__(self, config: BenchmarkConfig):
        self.config = config
        self.info = asyncio.run(probe(config.connection, config.ready_timeout_s))
        self.tokenizer, self.tokenizer_id = None, None
        if config.dataset == "random":
            self.tokenizer, self.tokenizer_id = find_tokenizer(config.tokenizer, self.info.full_model)

    @property
    def token_source(self) -> str:
        """How random prompts get their length: the model's "tokenizer", or "words" (an estimate)."""
        return "tokenizer" if self.tokenizer is not None else "words"

    def samples(self, num: int, seed: int) -> list[SampleRequest]:
        config = self.config
        if config.dataset == "jsonl":
            return jsonl_requests(config.dataset_path, num, config.jsonl_output_len, seed)
        return random_requests(num, config.random, self.tokenizer, seed)

    def dataset_setup(self) -> dict:
        config = self.config
        if config.dataset == "jsonl":
            return {"dataset": "jsonl", "dataset_path": str(config.dataset_path),
                    "jsonl_output_len": config.jsonl_output_len}
        return {"dataset": "random", "random_input_len": config.random.input_len,
                "random_output_len": config.random.output_len, "random_range_ratio": config.random.range_ratio,
                "token_source": self.token_source}

    def run(self, samples: list[SampleRequest], send_times_s: np.ndarray, setup: dict,
            min_duration_s: float = 0.0, id_prefix: str = "", on_start=None) -> Measured:
        """Run the requests at their send times. `setup` adds the traffic keys (request_rate, burstiness, ...);
        `on_start(progress, origin)` is called when the measured run's clock starts (see RunSpec)."""
        config = self.config
        spec = RunSpec(config.connection, samples, send_times_s, config.max_concurrency, config.num_warmups,
                       config.request_timeout_s, config.temperature, config.request_id_prefix + id_prefix,
                       min_duration_s, config.show_progress, on_start)
        run = asyncio.run(run_benchmark(spec))
        metrics = compute_metrics(run.records, run.duration_s, config.percentiles, config.goodput_ms,
                                  run.prompt_tokens)
        full_setup = {
            "backend": f"overfill-{config.connection.backend}", "label": config.label,
            "model_id": self.info.full_model, "tokenizer_id": self.tokenizer_id,
            "num_prompts": len(samples), "request_rate": math.inf, "burstiness": 1.0,
            "max_concurrency": config.max_concurrency, **setup,
            "target": config.connection.target, **self.dataset_setup(), "seed": config.seed,
            "num_warmups": config.num_warmups, "metric_percentiles": config.percentiles,
            "goodput_slos_ms": config.goodput_ms or None,
        }
        return Measured(build_result(full_setup, metrics, run, config.save_detailed), run, metrics)
