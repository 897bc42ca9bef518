"""`overfill bench prefill-memory`: a prefill replica's RSS under prompts of every length, per oneDNN cache bound.

Each variant runs in a fresh process (the caches take their capacity at the process's first oneDNN op): the
replica's own `PrefillWorker` on the full model, fed the same seeded stream of requests, a batch of 1 to
`max_batch` prompts of `min_len` to `max_len` tokens at a time (so the batch shape is new almost every time, as in
the soak), each lease released at once. RSS is sampled every `sample_every` requests. The table gives RSS after the
warm-up (the first `warmup` requests), at the end, the growth over the second half of the run (the soak's check)
and the prefill time per prompt token; the PNG plots RSS against requests.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

DEFAULT = 0  # a variant of 0 entries: the oneDNN defaults (1024 per cache)


@dataclass
class PrefillMemorySpec:
    model: str = "smollm2-135m"
    cache_entries: list[int] = field(default_factory=lambda: [DEFAULT, 64])
    num_requests: int = 600
    min_len: int = 96
    max_len: int = 160
    max_batch: int = 4
    warmup: int = 50
    sample_every: int = 25
    torch_threads: int = 1
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.min_len <= self.max_len:
            raise ValueError(f"prompt lengths must satisfy 1 <= min <= max, got {self.min_len}-{self.max_len}")
        if self.max_batch < 1 or self.sample_every < 1 or self.torch_threads < 1:
            raise ValueError("max_batch, sample_every and torch_threads must be >= 1")
        if self.num_requests < 2 * max(self.warmup, self.sample_every):
            raise ValueError(f"num_requests ({self.num_requests}) must be at least twice the warm-up ({self.warmup}) "
                             f"and the sampling interval ({self.sample_every})")
        if not self.cache_entries or any(entries < 0 for entries in self.cache_entries):
            raise ValueError("cache_entries: one or more variants, each >= 0 (0 = the oneDNN defaults)")


def _label(entries: int) -> str:
    return "oneDNN defaults" if entries == DEFAULT else f"{entries} entries"


def _batches(spec: PrefillMemorySpec) -> list[list[int]]:
    """The seeded request stream: batches of prompt lengths, num_requests prompts in all."""
    rng, batches, total = random.Random(spec.seed), [], 0
    while total < spec.num_requests:
        size = min(rng.randint(1, spec.max_batch), spec.num_requests - total)
        batches.append([rng.randint(spec.min_len, spec.max_len) for _ in range(size)])
        total += size
    return batches


def _variant_process(spec: PrefillMemorySpec, entries: int, connection) -> None:
    """Child process: bound the caches (or not), load the model, prefill the stream, report progress and samples."""
    if entries != DEFAULT:
        from overfill.engine.linear import bound_onednn_caches

        bound_onednn_caches(entries)
    import psutil
    import torch

    from overfill.engine.runner import ModelRunner
    from overfill.engine.sampling import SamplingParams
    from overfill.model_loading import load_model
    from overfill.serving.prefill_worker import PrefillSettings, PrefillWorker
    from overfill.serving.types import PrefillRequest
    from overfill.transport.base import make_sender

    torch.set_num_threads(spec.torch_threads)
    full = load_model(spec.model, dtype="float32")
    sender = make_sender("inprocess", secret="bench")
    worker = PrefillWorker(ModelRunner(full.model), sender, set(), PrefillSettings(max_batch_size=spec.max_batch))
    vocab_size = full.model.config.vocab_size
    del full
    rng = random.Random(spec.seed + 1)
    process = psutil.Process()
    sampling = SamplingParams(max_new_tokens=2)

    async def run() -> tuple[list[dict], float]:
        samples, prefill_s, tokens, done = [], 0.0, 0, 0
        for batch in _batches(spec):
            requests = [PrefillRequest(f"r{done + i}", [rng.randrange(vocab_size) for _ in range(length)], sampling)
                        for i, length in enumerate(batch)]
            start = time.perf_counter()
            results = await asyncio.gather(*(worker.prefill(r) for r in requests))
            prefill_s += time.perf_counter() - start
            tokens += sum(batch)
            for result in results:
                sender.release(result.request_id)
            before, done = done, done + len(batch)
            if before // spec.sample_every != done // spec.sample_every or done == spec.num_requests:
                samples.append({"requests": done, "rss_mib": process.memory_info().rss / 2**20})
                connection.send(("progress", done))
        return samples, 1e6 * prefill_s / tokens

    samples, us_per_token = asyncio.run(run())
    worker.close()
    connection.send(("done", {"samples": samples, "prefill_us_per_token": us_per_token}))


def _run_variant(spec: PrefillMemorySpec, entries: int, progress: bool) -> dict:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_variant_process, args=(spec, entries, child), daemon=True)
    process.start()
    bar = tqdm(total=spec.num_requests, desc=f"prefill memory, {_label(entries)}", disable=not progress)
    try:
        while True:
            if not parent.poll(600):
                raise RuntimeError(f"the {_label(entries)} variant reported nothing for 10 minutes")
            kind, value = parent.recv()
            if kind == "done":
                return value
            bar.update(value - bar.n)
    finally:
        bar.close()
        process.join(timeout=30)


def _summary(entries: int, measured: dict, spec: PrefillMemorySpec) -> dict:
    samples = measured["samples"]
    after_warmup = next(s for s in samples if s["requests"] >= spec.warmup)
    half = [s for s in samples if s["requests"] >= spec.num_requests / 2]
    return {"cache_entries": entries, "label": _label(entries), "rss_after_warmup_mib": after_warmup["rss_mib"],
            "rss_end_mib": samples[-1]["rss_mib"],
            "growth_second_half_mib": half[-1]["rss_mib"] - half[0]["rss_mib"],
            "requests_second_half": half[-1]["requests"] - half[0]["requests"],
            "prefill_us_per_token": measured["prefill_us_per_token"], "samples": samples}


def run_prefill_memory_bench(spec: PrefillMemorySpec, progress: bool = True) -> dict:
    rows = [_summary(entries, _run_variant(spec, entries, progress), spec) for entries in spec.cache_entries]
    return {"spec": asdict(spec), "rows": rows}


def format_report(result: dict) -> str:
    spec = result["spec"]
    lines = [f"{spec['model']}: {spec['num_requests']} prompts of {spec['min_len']}-{spec['max_len']} tokens in "
             f"batches of 1-{spec['max_batch']}, {spec['torch_threads']} thread(s), seed {spec['seed']}"]
    header = (f"{'oneDNN caches':>16} {'RSS warm MiB':>13} {'RSS end MiB':>12} {'2nd-half growth MiB':>20} "
              f"{'prefill us/token':>17}")
    lines += [header, "-" * len(header)]
    for r in result["rows"]:
        lines.append(f"{r['label']:>16} {r['rss_after_warmup_mib']:>13.0f} {r['rss_end_mib']:>12.0f} "
                     f"{r['growth_second_half_mib']:>+20.0f} {r['prefill_us_per_token']:>17.0f}")
    if len(result["rows"]) == 2:
        a, b = result["rows"]
        lines.append(f"prefill time {b['label']} / {a['label']}: "
                     f"{b['prefill_us_per_token'] / a['prefill_us_per_token']:.3f}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for row in result["rows"]:
        axis.plot([s["requests"] for s in row["samples"]], [s["rss_mib"] for s in row["samples"]], marker=".",
                  label=row["label"])
    axis.set_xlabel("prompts prefilled")
    axis.set_ylabel("prefill process RSS (MiB)")
    axis.set_title("Prefill RSS under prompts of every length, by oneDNN cache bound")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)

