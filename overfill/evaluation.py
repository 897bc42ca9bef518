"""`overfill eval`: accuracy, agreement with the full model, TPOT and TTFT per mode, and the paper's Pareto plot.

Task lines: `{"messages": [...], "answer": "...", "match": "exact|contains|number"}`
    exact     the whole output, stripped and without one final period, equals the answer
    contains  the answer appears in the output, case-insensitive
    number    the last number in the output equals the answer
Modes: full, pruned, overfill (the in-process engine, greedy, batched) and speculative (transformers' assisted
generation: the full model verifies the decoder's drafts, so its output is the full model's; only speed changes).
With `refresh_every` N, overfill is also run with prefill refresh every N tokens (row `overfill+refreshN`).
Agreement is the token-level match rate with the full model's greedy output: matching positions over the longer of
the two outputs, averaged over tasks.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from overfill.engine.loader import load_engine
from overfill.engine.sampling import SamplingParams
from overfill.jsonl import read_jsonl
from overfill.prompts import render_chat

MATCH_TYPES = ("exact", "contains", "number")
MODES = ("full", "pruned", "overfill", "speculative")
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


class EvalTaskError(ValueError):
    """A task line is malformed; the message names the line."""


@dataclass(frozen=True)
class Task:
    messages: list[dict]
    answer: str
    match: str


def load_tasks(path: str | Path) -> list[Task]:
    tasks = []
    for where, record in read_jsonl(path, EvalTaskError):
        if not isinstance(record.get("messages"), list) or not record["messages"]:
            raise EvalTaskError(f"{where}: needs a non-empty 'messages' list")
        if not isinstance(record.get("answer"), str) or record.get("match") not in MATCH_TYPES:
            raise EvalTaskError(f"{where}: needs a string 'answer' and 'match' in {', '.join(MATCH_TYPES)}")
        tasks.append(Task(record["messages"], record["answer"], record["match"]))
    if not tasks:
        raise EvalTaskError(f"{path}: no tasks")
    return tasks


def score(output: str, answer: str, match: str) -> bool:
    if match == "exact":
        text = output.strip()
        return (text[:-1] if text.endswith(".") else text) == answer
    if match == "contains":
        return answer.lower() in output.lower()
    if match == "number":
        numbers = NUMBER.findall(output)
        if not numbers:
            return False
        try:
            return float(numbers[-1].replace(",", "")) == float(answer.replace(",", ""))
        except ValueError:
            return False
    raise ValueError(f"match must be one of {', '.join(MATCH_TYPES)}, got {match!r}")


def agreement(tokens: list[int], reference: list[int]) -> float:
    longest = max(len(tokens), len(reference))
    if longest == 0:
        return 1.0
    return sum(a == b for a, b in zip(tokens, reference)) / longest


@dataclass
class EvalSpec:
    model: str
    decoders: list[str]
    tasks: str
    modes: list[str] = field(default_factory=lambda: ["full", "pruned", "overfill"])
    max_new_tokens: int = 64
    batch_size: int = 8
    refresh_every: int = 0  # > 0: also evaluate overfill with prefill refresh every N tokens
    dtype: str = "auto"
    device: str = "cpu"


@dataclass
class Reference:
    """The full model's greedy outputs on the tasks (what agreement compares with) and its summary row."""

    token_ids: list[list[int]]
    row: dict


def full_reference(spec: EvalSpec, progress: bool = True) -> Reference:
    tasks = load_tasks(spec.tasks)
    loaded = load_engine(spec.model, None, ["full"], dtype=spec.dtype, device=spec.device)
    tokens, row = _engine_mode(loaded, _prompts(loaded, tasks), tasks, "full", spec, progress)
    row["decoder"] = None
    return Reference(tokens, row)


def run_eval(spec: EvalSpec, progress: bool = True, reference: Reference | None = None) -> dict:
    """Every mode of every decoder, and the full model's row unless a `reference` computed earlier is given."""
    for mode in spec.modes:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    tasks = load_tasks(spec.tasks)
    rows = []
    if reference is None:
        reference = full_reference(spec, progress)
        rows.append(reference.row)
    decoder_modes = [m for m in spec.modes if m != "full"]
    for decoder in spec.decoders:
        # speculative (and refresh) need the full model next to the decoder, as overfill does
        engine_modes = [{"speculative": "overfill"}.get(m, m) for m in decoder_modes]
        engine_modes += ["overfill"] if spec.refresh_every or not engine_modes else []
        loaded = load_engine(spec.model, decoder, engine_modes, dtype=spec.dtype, device=spec.device)
        prompts = _prompts(loaded, tasks)
        for mode in decoder_modes:
            if mode == "speculative":
                tokens, row = _speculative(loaded, prompts, tasks, spec, progress)
            else:
                tokens, row = _engine_mode(loaded, prompts, tasks, mode, spec, progress)
            row["decoder"] = str(decoder)
            row["agreement"] = statistics.mean(agreement(t, r) for t, r in zip(tokens, reference.token_ids))
            rows.append(row)
        if spec.refresh_every and "overfill" in spec.modes:
            tokens, row = _engine_mode(loaded, prompts, tasks, "overfill", spec, progress, spec.refresh_every)
            row.update(mode=f"overfill+refresh{spec.refresh_every}", decoder=str(decoder),
                       agreement=statistics.mean(agreement(t, r) for t, r in zip(tokens, reference.token_ids)))
            rows.append(row)
    return {"spec": asdict(spec), "num_tasks": len(tasks), "rows": rows}


def _prompts(loaded, tasks: list[Task]) -> list[list[int]]:
    tokenizer = loaded.tokenizer
    return [tokenizer(render_chat(tokenizer, t.messages), add_special_tokens=False)["input_ids"] for t in tasks]


def _summary(mode: str, outputs_text: list[str], tasks: list[Task], ttfts: list[float], tpots: list[float]) -> dict:
    return {"mode": mode, "accuracy": statistics.mean(score(o, t.answer, t.match) for o, t in zip(outputs_text, tasks)),
            "agreement": 1.0, "ttft_ms": 1e3 * statistics.mean(ttfts) if ttfts else None,
            "tpot_ms": 1e3 * statistics.mean(tpots) if tpots else None}


def _engine_mode(loaded, prompts, tasks, mode, spec, progress, refresh_every: int = 0):
    tokens, texts, ttfts, tpots = [], [], [], []
    params = SamplingParams(max_new_tokens=spec.max_new_tokens)
    for start in tqdm(range(0, len(prompts), spec.batch_size), desc=f"eval {mode}", disable=not progress):
        for out in loaded.engine.generate(prompts[start:start + spec.batch_size], params, mode,
                                          refresh_every=refresh_every):
            tokens.append(out.token_ids)
            texts.append(loaded.tokenizer.decode(out.token_ids, skip_special_tokens=True))
            ttfts.append(out.ttft_s)
            if out.tpot_s is not None:
                tpots.append(out.tpot_s)
    return tokens, _summary(mode, texts, tasks, ttfts, tpots)


def _speculative(loaded, prompts, tasks, spec, progress):
    """Assisted generation, one prompt at a time (transformers batches it no further); TTFT is not separable, so
    the row reports end-to-end time per generated token as TPOT and no TTFT."""
    from transformers import AutoModelForCausalLM

    dtype = loaded.engine.dtype
    target = AutoModelForCausalLM.from_pretrained(loaded.model_path, dtype=dtype).to(spec.device).eval()
    draft = AutoModelForCausalLM.from_pretrained(loaded.decoder_path, dtype=dtype).to(spec.device).eval()
    eos = sorted(loaded.engine.eos_token_ids)
    tokens, texts, tpots = [], [], []
    for prompt in tqdm(prompts, desc="eval speculative", disable=not progress):
        ids = torch.tensor([prompt], device=spec.device)
        start = time.perf_counter()
        with torch.no_grad():
            out = target.generate(ids, attention_mask=torch.ones_like(ids), assistant_model=draft, do_sample=False,
                                  max_new_tokens=spec.max_new_tokens, eos_token_id=eos, pad_token_id=eos[0])
        elapsed = time.perf_counter() - start
        generated = out[0, len(prompt):].tolist()
        tokens.append(generated)
        texts.append(loaded.tokenizer.decode(generated, skip_special_tokens=True))
        tpots.append(elapsed / max(1, len(generated)))
    return tokens, _summary("speculative", texts, tasks, [], tpots)


def format_report(result: dict) -> str:
    lines = [f"{result['num_tasks']} tasks",
             f"{'mode':<12} {'decoder':<40} {'accuracy':>9} {'agreement':>10} {'TTFT ms':>8} {'TPOT ms':>8}"]
    for r in result["rows"]:
        ttft = "-" if r["ttft_ms"] is None else f"{r['ttft_ms']:.1f}"
        tpot = "-" if r["tpot_ms"] is None else f"{r['tpot_ms']:.2f}"
        decoder = "-" if r["decoder"] is None else Path(r["decoder"]).name[-40:]
        lines.append(f"{r['mode']:<12} {decoder:<40} {r['accuracy']:>9.3f} {r['agreement']:>10.3f} {ttft:>8} {tpot:>8}")
    return "\n".join(lines)


def plot_pareto(result: dict, path: str | Path) -> None:
    """Accuracy vs TPOT, one point per (mode, decoder): the paper's accuracy-efficiency view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    for r in result["rows"]:
        if r["tpot_ms"] is None:
            continue
        label = r["mode"] if r["decoder"] is None else f"{r['mode']} ({Path(r['decoder']).name})"
        axes.scatter(r["tpot_ms"], 100 * r["accuracy"], s=60)
        axes.annotate(label, (r["tpot_ms"], 100 * r["accuracy"]), textcoords="offset points", xytext=(6, 4),
                      fontsize=8)
    axes.set_xlabel("TPOT (ms per output token)")
    axes.set_ylabel(f"accuracy on {result['num_tasks']} tasks (%)")
    axes.set_title("Accuracy vs decode cost")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
