"""`overfill bench decode`: prefill time and TPOT per mode and batch size, against the weight-bytes roofline.

Modes run interleaved (full, overfill, pruned, full, ...) within each batch size so that they see the same machine
noise; each figure is the median over repeats. The roofline TPOT is the bytes a decode step must read divided by the
read bandwidth measured on the spot (a large tensor reduction): the weights alone, and weights plus the KV cache.
With a temperature above 0, every (batch size, mode) also runs sampled, next to its greedy run on the same prompts
(the two take turns going first), and the report gives sampled tokens/s over greedy tokens/s: what batched sampling
costs the decode step.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from tqdm import tqdm

from overfill.engine.generate import Mode, TwoStageEngine
from overfill.engine.loader import load_engine
from overfill.engine.sampling import SamplingParams


@dataclass
class DecodeBenchSpec:
    model: str = "smollm2-135m"
    decoder: str | None = None
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    prompt_len: int = 512
    gen_len: int = 128
    modes: list[str] = field(default_factory=lambda: [m.value for m in Mode])
    repeats: int = 3
    dtype: str = "auto"
    device: str = "cpu"
    cuda_graphs: bool = True      # decode steps from CUDA graphs (CUDA only; captured in the warm-up run)
    temperature: float = 0.0      # > 0: also run sampled (with top_p, top_k), next to greedy
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None       # row i of a batch samples with seed + i (None: fresh seeds)

    def __post_init__(self):
        SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed)  # checks

    def samplings(self) -> list[str]:
        return ["greedy", "sampled"] if self.temperature > 0 else ["greedy"]

    def params(self, sampling: str, batch_size: int) -> list[SamplingParams]:
        if sampling == "greedy":
            return [SamplingParams(max_new_tokens=self.gen_len)] * batch_size
        return [SamplingParams(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                               seed=None if self.seed is None else self.seed + row, max_new_tokens=self.gen_len)
                for row in range(batch_size)]


def measure_read_bandwidth(device: str, num_bytes: int = 1 << 29, repeats: int = 7) -> float:
    """Best-of-N bytes/s of summing a float32 buffer far larger than the caches."""
    buffer = torch.ones(num_bytes // 4, device=device)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        buffer.sum()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return num_bytes / best


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_decode_bench(spec: DecodeBenchSpec, progress: bool = True) -> dict:
    loaded = load_engine(spec.model, spec.decoder, spec.modes, dtype=spec.dtype, device=spec.device)
    # The same runners without EOS, so every run generates exactly gen_len tokens.
    engine = TwoStageEngine(loaded.engine.full, loaded.engine.decoder, eos_token_ids=set(),
                            cuda_graphs=spec.cuda_graphs)
    bandwidth = measure_read_bandwidth(spec.device)
    generator = torch.Generator().manual_seed(0)
    vocab = engine.geometry.vocab_size
    kv_bytes_per_token = engine.new_cache(1, 1).spec.bytes_per_token

    rows = []
    # Greedy and sampled runs of a cell share its prompts and take turns going first (what runs second may find the
    # machine warmer).
    runs = [(b, r, m, s) for b in spec.batch_sizes for r in range(spec.repeats + 1) for m in spec.modes
            for s in (spec.samplings() if r % 2 else spec.samplings()[::-1])]
    samples: dict[tuple[int, str, str], list[tuple[float, float]]] = {}
    cache = prompts = None
    cell = None
    for batch_size, repeat, mode, sampling in tqdm(runs, desc="bench decode", disable=not progress):
        if cell != (batch_size, repeat, mode):
            cell = (batch_size, repeat, mode)
            prompts = torch.randint(0, vocab, (batch_size, spec.prompt_len), generator=generator).tolist()
        if cache is None or cache.spec.num_slots != batch_size:  # one cache per batch size: graphs are per cache
            cache = None  # the previous batch size's cache goes first
            cache = engine.new_cache(batch_size, spec.prompt_len + spec.gen_len)
        outputs = engine.generate(prompts, spec.params(sampling, batch_size), mode, cache=cache)
        if repeat == 0:
            continue  # warm-up
        tpot = statistics.mean(o.tpot_s for o in outputs)
        samples.setdefault((batch_size, mode, sampling), []).append((outputs[0].ttft_s, tpot))

    for (batch_size, mode, sampling), measured in samples.items():
        _, decode_runner = engine.runners(mode)
        prefill_s = statistics.median(t for t, _ in measured)
        tpot_s = statistics.median(t for _, t in measured)
        mean_context = spec.prompt_len + spec.gen_len / 2
        kv_bytes = batch_size * mean_context * kv_bytes_per_token
        rows.append({
            "mode": mode, "sampling": sampling, "batch_size": batch_size, "prefill_ms": 1e3 * prefill_s, "tpot_ms": 1e3 * tpot_s,
            "tokens_per_s": batch_size / tpot_s, "weight_bytes": decode_runner.weight_bytes,
            "roofline_tpot_ms": 1e3 * decode_runner.weight_bytes / bandwidth,
            "roofline_with_kv_tpot_ms": 1e3 * (decode_runner.weight_bytes + kv_bytes) / bandwidth,
        })
        rows[-1]["tpot_over_roofline"] = rows[-1]["tpot_ms"] / rows[-1]["roofline_tpot_ms"]

    ratios = []
    for batch_size in spec.batch_sizes:
        by_mode = {r["mode"]: r for r in rows if r["batch_size"] == batch_size and r["sampling"] == "greedy"}
        if "full" in by_mode and "overfill" in by_mode:
            tpot_ratio = by_mode["overfill"]["tpot_ms"] / by_mode["full"]["tpot_ms"]
            bytes_ratio = by_mode["overfill"]["weight_bytes"] / by_mode["full"]["weight_bytes"]
            ratios.append({"batch_size": batch_size, "overfill_over_full_tpot": tpot_ratio,
                           "decoder_over_full_bytes": bytes_ratio, "tpot_ratio_over_bytes_ratio": tpot_ratio / bytes_ratio})
    sampling_ratios = []
    by_key = {(r["batch_size"], r["mode"], r["sampling"]): r for r in rows}
    for (batch_size, mode, sampling), row in by_key.items():
        greedy = by_key.get((batch_size, mode, "greedy"))
        if sampling == "sampled" and greedy is not None:
            sampling_ratios.append({"batch_size": batch_size, "mode": mode,
                                    "sampled_over_greedy_tokens_per_s": row["tokens_per_s"] / greedy["tokens_per_s"]})
    return {
        "spec": asdict(spec), "read_bandwidth_gb_s": bandwidth / 1e9, "kv_bytes_per_token": kv_bytes_per_token,
        "torch_threads": torch.get_num_threads(), "device_name": _device_name(spec.device),
        "cuda_graphs": engine.cuda_graphs, "rows": rows,
        "ratios": ratios, "sampling_ratios": sampling_ratios,
    }


def _device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU {platform.processor() or platform.machine()}"


def format_report(result: dict) -> str:
    lines = [f"read bandwidth {result['read_bandwidth_gb_s']:.1f} GB/s, {result['torch_threads']} threads, "
             f"{result['device_name']}{', CUDA graphs' if result.get('cuda_graphs') else ''}"]
    header = (f"{'mode':<9} {'sampling':<8} {'batch':>5} {'prefill ms':>11} {'TPOT ms':>8} {'tok/s':>8} "
              f"{'weights MB':>11} {'roofline ms':>12} {'+KV ms':>7} {'TPOT/roof':>10}")
    lines += [header, "-" * len(header)]
    for r in sorted(result["rows"], key=lambda r: (r["batch_size"], r["mode"], r.get("sampling", "greedy"))):
        lines.append(f"{r['mode']:<9} {r.get('sampling', 'greedy'):<8} {r['batch_size']:>5} {r['prefill_ms']:>11.1f} "
                     f"{r['tpot_ms']:>8.2f} "
                     f"{r['tokens_per_s']:>8.1f} {r['weight_bytes'] / 1e6:>11.1f} {r['roofline_tpot_ms']:>12.2f} "
                     f"{r['roofline_with_kv_tpot_ms']:>7.2f} {r['tpot_over_roofline']:>10.2f}")
    for q in result["ratios"]:
        lines.append(f"batch {q['batch_size']}: OverFill TPOT / full TPOT = {q['overfill_over_full_tpot']:.3f}; "
                     f"decoder bytes / full bytes = {q['decoder_over_full_bytes']:.3f} "
                     f"(ratio of ratios {q['tpot_ratio_over_bytes_ratio']:.2f})")
    spec = result["spec"]
    for q in result.get("sampling_ratios", []):
        lines.append(f"batch {q['batch_size']} {q['mode']}: sampled (temperature {spec['temperature']:g}, top_p "
                     f"{spec['top_p']:g}, top_k {spec['top_k']}) / greedy tokens/s = "
                     f"{q['sampled_over_greedy_tokens_per_s']:.3f}")
    return "\n".join(lines)
