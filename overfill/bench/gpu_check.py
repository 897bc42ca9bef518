"""`runs/gpu_check.sh`: what a session lent a GPU measures first, in one call, into one JSON file and a table.

Sections, each run on its own (one that fails is recorded with its error, and the others still run):
    cuda_tests   pytest on the CUDA test files (no Ray): CUDA graphs, sampling, KV export/import, both workers
    bandwidth    the device's read bandwidth, measured on the spot (best of N full reads of a large buffer)
    decode       TPOT at batch 1 and 32 of a full model of Llama-3.2-3B's geometry and of a ~1.2B decoder pruned
                 from it (every layer, head and head_dim kept), eager and from CUDA graphs, each against its
                 weight-bytes / bandwidth roofline; the OverFill/full TPOT ratio against the bytes ratio
    ttft         the full model's TTFT at 512 and 2048 prompt tokens
    sampling     seeded sampled requests (temperature 0.8, top-p 0.9): the same tokens alone and in a batch
    kv_transfer  a 2048-token prompt's KV of the full model: GPU -> gRPC (the KV service, in process) -> GPU
    training     the decoder's training step (Hugging Face forward and backward, AdamW), tokens/s

Models have random weights, built from configs (no network, no checkpoint). `--cpu-smoke` runs the same code on
tiny configs on CPU in seconds, skipping what needs CUDA; CI runs it (tests/test_gpu_check.py). Needs torch,
transformers, grpcio and protobuf; not Ray.

Timing: every figure comes from host clocks around a step that ends in a device-to-host copy of its tokens (the
engine's TPOT and TTFT), or from CUDA events (bandwidth), or from host clocks between torch.cuda.synchronize() calls.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

CUDA_TEST_FILES = ("tests/test_cuda_graphs.py", "tests/test_sampling.py", "tests/test_cuda.py")


@dataclass(frozen=True)
class ModelShape:
    """A Llama model's geometry. Full and decoder share every field but `hidden_size` and `intermediate_size`."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int

    def config(self):
        from transformers import LlamaConfig

        return LlamaConfig(hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                           num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
                           num_key_value_heads=self.num_kv_heads, head_dim=self.head_dim, vocab_size=self.vocab_size,
                           max_position_embeddings=8192, tie_word_embeddings=True, eos_token_id=2, pad_token_id=0)

    @property
    def num_parameters(self) -> int:
        d, i = self.hidden_size, self.intermediate_size
        q_out, kv_out = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        per_layer = d * q_out + 2 * d * kv_out + q_out * d + 3 * d * i + 2 * d  # q, k, v, o, gate/up/down, norms
        return self.num_layers * per_layer + self.vocab_size * d + d  # tied embedding, final norm


# Llama-3.2-3B, and a decoder of it with residual 3072 -> 1536 and MLP 8192 -> 5120: 1.21B parameters (the residual
# width must stay a multiple of the 24 heads for transformers to accept the config; 1536 is also one of 64).
LLAMA_3B = ModelShape(3072, 8192, 28, 24, 8, 128, 128256)
LLAMA_3B_DECODER = dataclasses.replace(LLAMA_3B, hidden_size=1536, intermediate_size=5120)
TINY = ModelShape(64, 96, 2, 4, 2, 16, 320)
TINY_DECODER = dataclasses.replace(TINY, hidden_size=32, intermediate_size=48)


@dataclass(frozen=True)
class CheckSpec:
    device: str = "cuda"
    dtype: str = "bfloat16"
    full: ModelShape = LLAMA_3B
    decoder: ModelShape = LLAMA_3B_DECODER
    batch_sizes: tuple[int, ...] = (1, 32)
    prompt_len: int = 512
    gen_len: int = 128
    repeats: int = 2                    # measured runs per decode cell, after one warm-up
    ttft_prompt_lens: tuple[int, ...] = (512, 2048)
    kv_tokens: int = 2048
    train_batch: int = 4
    train_seq_len: int = 1024
    train_steps: int = 5
    cpu_smoke: bool = False

    @classmethod
    def smoke(cls) -> CheckSpec:
        return cls(device="cpu", dtype="float32", full=TINY, decoder=TINY_DECODER, batch_sizes=(1, 4), prompt_len=16,
                   gen_len=8, repeats=1, ttft_prompt_lens=(16, 64), kv_tokens=64, train_batch=2, train_seq_len=32,
                   train_steps=2, cpu_smoke=True)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


# ---- sections -----------------------------------------------------------------------------------------------------


def cuda_tests(spec: CheckSpec) -> dict:
    """pytest on the CUDA test files, in a subprocess (its own CUDA context, freed before the models load). The
    project's pytest settings are left out (-c /dev/null): they name a warning class of Ray's dependency pydantic."""
    if spec.cpu_smoke:
        return {"skipped": "--cpu-smoke"}
    command = [sys.executable, "-m", "pytest", "-q", "-c", os.devnull, "--rootdir", ".", "-p", "no:cacheprovider",
               "-rs", *CUDA_TEST_FILES]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    tail = (done.stdout + done.stderr).strip().splitlines()[-30:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", tail[-1] if tail else "")}
    return {"command": " ".join(command), "returncode": done.returncode, "counts": counts, "output_tail": tail,
            "ok": done.returncode == 0 and counts.get("passed", 0) > 0}


def bandwidth(spec: CheckSpec) -> dict:
    """Read bandwidth: the best of 10 sums over a buffer far larger than any cache (CUDA events on a GPU), and the
    best of 10 copies (read + write) for comparison. The roofline uses the larger of the two."""
    device = torch.device(spec.device)
    num_bytes = (4 << 30) if device.type == "cuda" else (256 << 20)
    source = torch.ones(num_bytes // 4, device=device)
    target = torch.empty_like(source)
    read_s = min(_timed(device, lambda: source.sum()) for _ in range(10))
    copy_s = min(_timed(device, lambda: target.copy_(source)) for _ in range(10))
    del source, target
    result = {"buffer_bytes": num_bytes, "read_gb_s": num_bytes / read_s / 1e9,
              "copy_gb_s": 2 * num_bytes / copy_s / 1e9}
    result["roofline_gb_s"] = max(result["read_gb_s"], result["copy_gb_s"])
    return result


def _timed(device: torch.device, work: Callable[[], object]) -> float:
    """Seconds `work` takes on the device."""
    if device.type != "cuda":
        start = time.perf_counter()
        work()
        return time.perf_counter() - start
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    begin.record()
    work()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / 1e3


class Models:
    """The full model and the decoder, random weights, on the device; built once, shared by the sections."""

    def __init__(self, spec: CheckSpec):
        from transformers import AutoModelForCausalLM

        from overfill.engine.runner import ModelRunner

        self.hf = {}
        self.runners = {}
        for name, shape in (("full", spec.full), ("decoder", spec.decoder)):
            torch.manual_seed(0)
            with torch.device(spec.device):  # initialised on the device: a 3B model's init on the host takes minutes
                model = AutoModelForCausalLM.from_config(shape.config(), dtype=spec.torch_dtype).eval()
            self.hf[name] = model
            self.runners[name] = ModelRunner(model)

    def engine(self, cuda_graphs: bool):
        from overfill.engine.generate import TwoStageEngine

        return TwoStageEngine(self.runners["full"], self.runners["decoder"], eos_token_ids=set(),
                              cuda_graphs=cuda_graphs)

    def release_runners(self) -> None:
        """Keep only the Hugging Face decoder (training); the rest goes."""
        self.runners.clear()
        self.hf.pop("full", None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def decode(spec: CheckSpec, models: Models, bandwidth_gb_s: float | None) -> dict:
    """TPOT per (eager or CUDA graphs, batch, mode): full = the full model decodes, overfill = the decoder decodes on
    the full model's KV. Random prompts; no EOS, so every run decodes gen_len tokens. Eager runs first, and a failure
    with graphs is recorded without losing the eager figures."""
    graph_choices = (False, True) if torch.device(spec.device).type == "cuda" else (False,)
    weight_bytes = {"full": models.runners["full"].weight_bytes, "overfill": models.runners["decoder"].weight_bytes}
    rows, errors = [], {}
    for graphs in graph_choices:
        try:
            rows += _decode_rows(spec, models.engine(graphs), graphs, weight_bytes, bandwidth_gb_s)
        except Exception as e:  # noqa: BLE001  keep the other choice's figures
            errors["cuda_graphs" if graphs else "eager"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"
    bytes_ratio = weight_bytes["overfill"] / weight_bytes["full"]
    ratios = []
    for graphs in graph_choices:
        for batch_size in spec.batch_sizes:
            by_mode = {r["mode"]: r for r in rows if r["batch_size"] == batch_size and r["cuda_graphs"] == graphs}
            if len(by_mode) == 2:
                tpot_ratio = by_mode["overfill"]["tpot_ms"] / by_mode["full"]["tpot_ms"]
                ratios.append({"batch_size": batch_size, "cuda_graphs": graphs, "overfill_over_full_tpot": tpot_ratio,
                               "decoder_over_full_bytes": bytes_ratio, "ratio_of_ratios": tpot_ratio / bytes_ratio})
    targets = {}
    best = {(r["batch_size"], r["mode"]): r for r in rows if r["cuda_graphs"] == graph_choices[-1]}
    decoder_b1 = best.get((1, "overfill"))
    if decoder_b1 is not None and "tpot_over_roofline" in decoder_b1:
        targets["decoder_tpot_within_1.5x_roofline_at_batch_1"] = decoder_b1["tpot_over_roofline"] <= 1.5
    ratio_b1 = next((q for q in ratios if q["batch_size"] == 1 and q["cuda_graphs"] == graph_choices[-1]), None)
    if ratio_b1 is not None:
        targets["overfill_full_ratio_within_1.1x_bytes_ratio_at_batch_1"] = ratio_b1["ratio_of_ratios"] <= 1.1
    result = {"prompt_len": spec.prompt_len, "gen_len": spec.gen_len, "repeats": spec.repeats,
              "full_parameters": models.runners["full"].num_parameters,
              "decoder_parameters": models.runners["decoder"].num_parameters,
              "torch_compile": "not tried: the decode step is plain tensor ops already replayed from CUDA graphs",
              "rows": rows, "ratios": ratios, "targets": targets}
    if errors:
        result["errors"] = errors
        result["ok"] = False
    return result


def _decode_rows(spec: CheckSpec, engine, graphs: bool, weight_bytes: dict[str, int],
                 bandwidth_gb_s: float | None) -> list[dict]:
    """One engine's TPOT rows: per batch size, modes full and overfill interleaved, median over the repeats after a
    warm-up run (which also captures the CUDA graphs)."""
    from overfill.engine.sampling_params import SamplingParams

    generator = torch.Generator().manual_seed(0)
    params = SamplingParams(max_new_tokens=spec.gen_len)
    rows = []
    for batch_size in spec.batch_sizes:
        cache = engine.new_cache(batch_size, spec.prompt_len + spec.gen_len)
        samples: dict[str, list[float]] = {}
        for repeat in range(spec.repeats + 1):
            prompts = torch.randint(3, spec.full.vocab_size, (batch_size, spec.prompt_len), generator=generator)
            prompts = prompts.tolist()
            for mode in ("full", "overfill"):
                outputs = engine.generate(prompts, params, mode, cache=cache)
                if repeat:
                    samples.setdefault(mode, []).append(statistics.mean(o.tpot_s for o in outputs))
        for mode, tpots in samples.items():
            tpot_s = statistics.median(tpots)
            row = {"batch_size": batch_size, "cuda_graphs": graphs, "mode": mode, "tpot_ms": 1e3 * tpot_s,
                   "tokens_per_s": batch_size / tpot_s, "weight_bytes": weight_bytes[mode]}
            if bandwidth_gb_s:
                row["roofline_ms"] = 1e3 * weight_bytes[mode] / (bandwidth_gb_s * 1e9)
                row["tpot_over_roofline"] = row["tpot_ms"] / row["roofline_ms"]
            if graphs:
                step = engine.model_step(engine.runners(mode)[1], cache)
                row["graph_steps"], row["eager_steps"] = step.graphs.num_graph_steps, step.graphs.num_eager_steps
            rows.append(row)
        del cache
    return rows


def ttft(spec: CheckSpec, models: Models) -> dict:
    """The full model's time to first token for one prompt (prefill + first sample), median of 3 after a warm-up."""
    from overfill.engine.sampling_params import SamplingParams

    engine, generator = models.engine(False), torch.Generator().manual_seed(1)
    rows = []
    for prompt_len in spec.ttft_prompt_lens:
        cache = engine.new_cache(1, prompt_len + 1)
        times = []
        for repeat in range(4):
            prompt = torch.randint(3, spec.full.vocab_size, (prompt_len,), generator=generator).tolist()
            _synchronize(spec.device)
            times.append(engine.generate([prompt], SamplingParams(max_new_tokens=1), "full", cache=cache)[0].ttft_s)
        rows.append({"prompt_tokens": prompt_len, "ttft_ms": 1e3 * statistics.median(times[1:])})
    return {"rows": rows}


def sampling(spec: CheckSpec, models: Models) -> dict:
    """A seeded sampled request (temperature 0.8, top-p 0.9) alone, then last in a batch with greedy and other sampled
    requests. `tiny_float32` (a tiny random model in float32) must match token for token. On the big random bf16
    models the batch's different matmul shapes move logits by bf16 rounding, and near-uniform random-model
    distributions turn that into different draws: reported, not required (the sampler's own batch invariance is
    tests/test_sampling.py's, on identical logits)."""
    from overfill.engine.generate import TwoStageEngine
    from overfill.engine.runner import ModelRunner
    from overfill.engine.sampling_params import SamplingParams
    from transformers import AutoModelForCausalLM

    seeded = SamplingParams(temperature=0.8, top_p=0.9, seed=1234, max_new_tokens=32)
    others = [SamplingParams(max_new_tokens=32), SamplingParams(temperature=0.8, top_p=0.9, seed=99, max_new_tokens=32),
              SamplingParams(temperature=1.0, top_k=50, seed=7, max_new_tokens=32)]
    generator = torch.Generator().manual_seed(2)

    def check(engine, vocab_size: int, mode: str) -> dict:
        prompts = [torch.randint(3, vocab_size, (n,), generator=generator).tolist() for n in (48, 17, 90, 33)]
        alone = engine.generate([prompts[0]], seeded, mode)[0].token_ids
        again = engine.generate([prompts[0]], seeded, mode)[0].token_ids
        batched = engine.generate(prompts[1:] + [prompts[0]], others + [seeded], mode)[-1].token_ids
        same = sum(a == b for a, b in zip(alone, batched))
        return {"alone_reproduces": alone == again, "same_in_batch": alone == batched,
                "tokens_matching_in_batch": f"{same}/{len(alone)}"}

    torch.manual_seed(0)
    with torch.device(spec.device):
        tiny = AutoModelForCausalLM.from_config(TINY.config(), dtype=torch.float32).eval()
    tiny_engine = TwoStageEngine(ModelRunner(tiny), None, set())
    result = {"tiny_float32": check(tiny_engine, TINY.vocab_size, "full"),
              f"overfill_{spec.dtype}": check(models.engine(False), spec.full.vocab_size, "overfill")}
    result["ok"] = result["tiny_float32"]["same_in_batch"] and result["tiny_float32"]["alone_reproduces"]
    return result


def kv_transfer(spec: CheckSpec) -> dict:
    """A prompt's KV in the full model's geometry: exported from a cache slot on the device, leased by a gRPC KV
    service, pulled (over loopback, in this process), imported into another cache on the device. Bit-exact check."""
    from overfill.engine.kv_cache import CacheSpec, KVCache
    from overfill.transport.base import make_receiver, make_sender
    from overfill.transport.wire import DTYPE_NAMES, KVLayout

    shape, tokens = spec.full, spec.kv_tokens
    cache_spec = CacheSpec(shape.num_layers, shape.num_kv_heads, shape.head_dim, 1, tokens, spec.torch_dtype,
                           spec.device)
    source, target = KVCache(cache_spec), KVCache(cache_spec)
    (slot,) = source.allocate(1)
    source.k.normal_()
    source.v.normal_()
    source.lengths[slot] = tokens
    sender, receiver = make_sender("grpc", secret="gpu-check"), make_receiver("grpc", secret="gpu-check")
    layout = KVLayout(shape.num_layers, shape.num_kv_heads, shape.head_dim, DTYPE_NAMES[spec.torch_dtype], 0)
    runs = []
    try:
        for repeat in range(4):
            (into,) = target.allocate(1)
            _synchronize(spec.device)
            start = time.perf_counter()
            k, v = source.export_slot(slot)  # [L, H, T, D] on the device
            ticket = sender.publish(f"kv-{repeat}", k, v)
            pulled_k, pulled_v = receiver.pull(ticket, layout)
            target.import_slot(into, pulled_k.to(spec.device, non_blocking=True),
                               pulled_v.to(spec.device, non_blocking=True))
            _synchronize(spec.device)
            seconds = time.perf_counter() - start
            receiver.release(ticket)
            exact = (torch.equal(target.k[:, into], source.k[:, slot])
                     and torch.equal(target.v[:, into], source.v[:, slot]))
            runs.append((seconds, exact))
            target.free([into])
    finally:
        receiver.close()
        sender.close()
    num_bytes = ticket.layout.total_bytes
    best = min(s for s, _ in runs[1:])
    return {"tokens": tokens, "bytes": num_bytes, "best_s": best, "gb_s": num_bytes / best / 1e9,
            "median_gb_s": num_bytes / statistics.median(s for s, _ in runs[1:]) / 1e9,
            "bit_exact": all(exact for _, exact in runs)}


def training(spec: CheckSpec, models: Models) -> dict:
    """The decoder's training step: Hugging Face forward with labels (causal LM loss), backward, AdamW step, on
    random tokens; tokens/s over the steps after two warm-ups."""
    model = models.hf["decoder"].train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(3)

    def step() -> float:
        ids = torch.randint(3, spec.decoder.vocab_size, (spec.train_batch, spec.train_seq_len), generator=generator)
        ids = ids.to(spec.device)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # a host sync

    for _ in range(2):
        step()
    _synchronize(spec.device)
    start = time.perf_counter()
    losses = [step() for _ in range(spec.train_steps)]
    _synchronize(spec.device)
    seconds = time.perf_counter() - start
    num_tokens = spec.train_batch * spec.train_seq_len * spec.train_steps
    result = {"batch": spec.train_batch, "seq_len": spec.train_seq_len, "steps": spec.train_steps,
              "dtype": spec.dtype, "tokens_per_s": num_tokens / seconds, "step_s": seconds / spec.train_steps,
              "losses_finite": all(torch.isfinite(torch.tensor(losses)).tolist())}
    if torch.device(spec.device).type == "cuda":
        result["max_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return result


def _synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ---- the run ------------------------------------------------------------------------------------------------------


def run_check(spec: CheckSpec, progress: Callable[[str], None] = print) -> dict:
    result = {"spec": dataclasses.asdict(spec), "environment": _environment(spec), "sections": {}}
    sections = result["sections"]

    def section(name: str, work: Callable[[], dict]) -> dict | None:
        progress(f"gpu_check: {name} ...")
        start = time.perf_counter()
        try:
            sections[name] = work()
        except Exception as e:  # noqa: BLE001  one broken section must not cost the others
            sections[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        sections[name]["elapsed_s"] = round(time.perf_counter() - start, 2)
        progress(f"gpu_check: {name} done in {sections[name]['elapsed_s']} s")
        return sections[name]

    section("cuda_tests", lambda: cuda_tests(spec))
    measured = section("bandwidth", lambda: bandwidth(spec))
    models = None

    def build() -> dict:
        nonlocal models
        models = Models(spec)
        return {"full_parameters": models.runners["full"].num_parameters,
                "decoder_parameters": models.runners["decoder"].num_parameters,
                "full_shape": dataclasses.asdict(spec.full), "decoder_shape": dataclasses.asdict(spec.decoder)}

    section("models", build)
    if models is not None:
        section("decode", lambda: decode(spec, models, measured.get("roofline_gb_s")))
        section("ttft", lambda: ttft(spec, models))
        section("sampling", lambda: sampling(spec, models))
    section("kv_transfer", lambda: kv_transfer(spec))
    if models is not None:
        models.release_runners()
        section("training", lambda: training(spec, models))
    result["failed_sections"] = [name for name, s in sections.items() if "error" in s or s.get("ok") is False]
    return result


def _environment(spec: CheckSpec) -> dict:
    environment = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
                   "cuda_available": torch.cuda.is_available()}
    for package in ("transformers", "grpc", "google.protobuf"):
        try:
            environment[package] = __import__(package, fromlist=["__version__"]).__version__
        except Exception as e:  # noqa: BLE001  reported, not fatal
            environment[package] = f"unavailable: {e}"
    if torch.device(spec.device).type == "cuda" and torch.cuda.is_available():
        environment["device_name"] = torch.cuda.get_device_name(spec.device)
        environment["cuda"] = torch.version.cuda
    return environment


def format_table(result: dict) -> str:
    sections, env = result["sections"], result["environment"]
    lines = [f"gpu_check on {env.get('device_name', env['machine'])}: torch {env['torch']}, "
             f"{result['spec']['dtype']}" + (" (CPU smoke)" if result["spec"]["cpu_smoke"] else "")]
    for name, s in sections.items():
        if "error" in s:
            lines.append(f"{name:<12} FAILED: {s['error'][:200]}")
        elif "skipped" in s:
            lines.append(f"{name:<12} skipped ({s['skipped']})")
    tests = sections.get("cuda_tests", {})
    if "counts" in tests:
        lines.append(f"{'cuda_tests':<12} {'ok' if tests['ok'] else 'FAILED'}: {tests['counts']}")
    bw = sections.get("bandwidth", {})
    if "read_gb_s" in bw:
        lines.append(f"{'bandwidth':<12} read {bw['read_gb_s']:.0f} GB/s, copy {bw['copy_gb_s']:.0f} GB/s")
    dec = sections.get("decode", {})
    if "rows" in dec:
        lines.append(f"decode: full {_count(dec['full_parameters'])}, decoder {_count(dec['decoder_parameters'])} "
                     f"parameters, prompt {dec['prompt_len']}, {dec['gen_len']} tokens")
        header = f"  {'mode':<9} {'batch':>5} {'graphs':>6} {'TPOT ms':>8} {'tok/s':>8} {'roof ms':>8} {'x roof':>7}"
        lines += [header, "  " + "-" * (len(header) - 2)]
        for r in sorted(dec["rows"], key=lambda r: (r["batch_size"], r["cuda_graphs"], r["mode"])):
            lines.append(f"  {r['mode']:<9} {r['batch_size']:>5} {'yes' if r['cuda_graphs'] else 'no':>6} "
                         f"{r['tpot_ms']:>8.2f} {r['tokens_per_s']:>8.1f} {r.get('roofline_ms', float('nan')):>8.2f} "
                         f"{r.get('tpot_over_roofline', float('nan')):>7.2f}")
        for q in dec["ratios"]:
            lines.append(f"  batch {q['batch_size']}{', graphs' if q['cuda_graphs'] else ''}: OverFill/full TPOT "
                         f"{q['overfill_over_full_tpot']:.3f}, bytes ratio {q['decoder_over_full_bytes']:.3f}, "
                         f"ratio of ratios {q['ratio_of_ratios']:.2f}")
        for target, met in dec["targets"].items():
            lines.append(f"  target {target}: {'met' if met else 'NOT met'}")
    for r in sections.get("ttft", {}).get("rows", []):
        lines.append(f"{'ttft':<12} {r['prompt_tokens']} prompt tokens: {r['ttft_ms']:.1f} ms")
    samp = sections.get("sampling", {})
    if "ok" in samp:
        lines.append(f"{'sampling':<12} {'ok' if samp['ok'] else 'FAILED'}: " +
                     "; ".join(f"{k}: same in batch {v['same_in_batch']} ({v['tokens_matching_in_batch']})"
                               for k, v in samp.items() if isinstance(v, dict)))
    kv = sections.get("kv_transfer", {})
    if "gb_s" in kv:
        lines.append(f"{'kv_transfer':<12} {kv['tokens']} tokens, {kv['bytes'] / 1e6:.1f} MB: {kv['gb_s']:.2f} GB/s "
                     f"best, {kv['median_gb_s']:.2f} median, bit-exact {kv['bit_exact']}")
    tr = sections.get("training", {})
    if "tokens_per_s" in tr:
        lines.append(f"{'training':<12} decoder, {tr['batch']} x {tr['seq_len']} tokens, {tr['dtype']}: "
                     f"{tr['tokens_per_s']:.0f} tokens/s ({tr['step_s'] * 1e3:.0f} ms/step)")
    lines.append(f"failed sections: {', '.join(result['failed_sections']) or 'none'}")
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="runs/gpu_check.sh", description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny models on CPU, no CUDA: seconds (CI)")
    parser.add_argument("--json", type=Path, help="where to write the result (default: $OUT/gpu_check.json if OUT "
                                                  "is set, else ./gpu_check.json)")
    args = parser.parse_args(argv)
    spec = CheckSpec.smoke() if args.cpu_smoke else CheckSpec()
    if not spec.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available (use --cpu-smoke on a machine without a GPU)", file=sys.stderr)
        return 2
    path = args.json or Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    if spec.cpu_smoke:
        torch.set_num_threads(1)  # tiny matrices: threads only add barriers, and CI's cores are shared
    result = run_check(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(format_table(result))
    print(f"saved {path}")
    return 1 if result["failed_sections"] else 0


if __name__ == "__main__":
    sys.exit(main())
