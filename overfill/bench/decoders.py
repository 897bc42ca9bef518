"""`overfill bench decoders`: the accuracy / cost Pareto of decoders built by one recipe at several sizes.

For each parameter fraction and each reconstruction method (none, lstsq):
    1) prune to the fraction's widths (decoder_recipe.recipe_for_fraction) and reconstruct;
    2) score it untrained, then trained in overfill mode by the recipe (the default decoder's budget);
    3) the paper's Pruned baseline: the same pruned decoder trained in `pruned` mode with the same budget, scored in
       pruned mode (it prefills its own prompt).
Scores are `overfill eval`'s: accuracy on the tasks and token agreement with the full model's greedy output. Decode
TPOT is measured at the end for every width side by side (rounds taking turns), since a long run's machine load
drifts. Every built decoder and every score is kept in the work directory, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from overfill.build_decoder import build_decoder
from overfill.decoder_recipe import (DecoderRecipe, count_parameters, prune_spec, recipe_for_fraction,
                                     train_spec)
from overfill.evaluation import EvalSpec, Reference, full_reference, run_eval

METHODS = ("none", "lstsq")


@dataclass
class DecodersBenchSpec:
    fractions: list[float]
    work: Path                        # decoders and per-decoder scores, kept for resuming
    tasks: str
    base: DecoderRecipe = DecoderRecipe()
    max_new_tokens: int = 32
    tpot_batch_sizes: tuple[int, ...] = (1, 8)
    tpot_rounds: int = 3


def run_decoders_bench(spec: DecodersBenchSpec, progress: bool = True) -> dict:
    from transformers import AutoConfig

    from overfill.model_loading import resolve_model

    spec.work.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(resolve_model(spec.base.model))
    full_parameters = count_parameters(config, config.hidden_size, config.intermediate_size)
    rows = [dict(_score(spec, None, "full", "full"), fraction=1.0, variant="full model",
                 parameters=full_parameters, hidden_size=config.hidden_size,
                 intermediate_size=config.intermediate_size, trained_tokens=0)]
    widths = {}
    for fraction in spec.fractions:
        recipe = recipe_for_fraction(config, fraction, spec.base)
        size = dict(fraction=fraction, hidden_size=recipe.hidden_size, intermediate_size=recipe.intermediate_size,
                    parameters=count_parameters(config, recipe.hidden_size, recipe.intermediate_size))
        for method in METHODS:
            pruned = _pruned(spec, recipe, method, f"{fraction:g}-{method}")
            widths[(recipe.hidden_size, recipe.intermediate_size)] = pruned
            rows.append(dict(size, variant=f"{method}, untrained", trained_tokens=0,
                             **_score(spec, pruned, "overfill", f"{fraction:g}-{method}-untrained")))
            for mode in ("overfill", "pruned") if method == "lstsq" else ("overfill",):
                trained, tokens = _trained(spec, recipe, pruned, mode, f"{fraction:g}-{method}-{mode}")
                label = f"{method}, trained" if mode == "overfill" else f"{method}, trained as Pruned (baseline)"
                rows.append(dict(size, variant=label, trained_tokens=tokens,
                                 **_score(spec, trained, mode, f"{fraction:g}-{method}-{mode}-trained")))
    tpot = _side_by_side_tpot(spec, widths)
    for row in rows:
        row["tpot_ms"] = tpot.get((row["hidden_size"], row["intermediate_size"]), {})
    return {"spec": {**asdict(spec), "work": str(spec.work), "base": asdict(spec.base)},
            "num_tasks": rows[0]["num_tasks"], "rows": rows}


def _pruned(spec: DecodersBenchSpec, recipe: DecoderRecipe, method: str, name: str) -> Path:
    output = spec.work / name
    if not (output / "overfill.json").is_file():
        build_decoder(prune_spec(recipe, output, reconstruct=method))
    return output


def _trained(spec: DecodersBenchSpec, recipe: DecoderRecipe, pruned: Path, mode: str,
             name: str) -> tuple[Path, int]:
    from overfill.decoder_checkpoint import read_manifest
    from overfill.training.trainer import CHECKPOINT, train

    output = spec.work / name
    if not any(t.get("mode") == mode for t in _training(output)):
        train(train_spec(recipe, pruned, output, mode), resume=True)
        (output / CHECKPOINT).unlink(missing_ok=True)
    entry = next(t for t in read_manifest(output).training if t.get("mode") == mode)
    return output, entry["response_tokens_this_run"]


def _training(decoder: Path) -> list[dict]:
    from overfill.decoder_checkpoint import read_manifest

    return read_manifest(decoder).training if (decoder / "overfill.json").is_file() else []


def _score(spec: DecodersBenchSpec, decoder: Path | None, mode: str, name: str) -> dict:
    """Accuracy and agreement of one decoder in one mode (or of the full model), kept in the work directory."""
    cached = spec.work / f"score-{name}.json"
    if not cached.is_file():
        eval_spec = EvalSpec(model=spec.base.model, decoders=[str(decoder)] if decoder else [], tasks=spec.tasks,
                             modes=[mode], max_new_tokens=spec.max_new_tokens)
        reference = _reference(spec, eval_spec)
        row = reference.row if decoder is None else run_eval(eval_spec, reference=reference)["rows"][0]
        cached.write_text(json.dumps({"accuracy": row["accuracy"], "agreement": row["agreement"],
                                      "num_tasks": len(reference.token_ids), "mode": mode}))
    return json.loads(cached.read_text())


def _reference(spec: DecodersBenchSpec, eval_spec: EvalSpec) -> Reference:
    """The full model's outputs on the tasks, computed once per work directory."""
    path = spec.work / "reference.json"
    if not path.is_file():
        reference = full_reference(eval_spec)
        path.write_text(json.dumps(asdict(reference)))
    return Reference(**json.loads(path.read_text()))


def _side_by_side_tpot(spec: DecodersBenchSpec, widths: dict[tuple[int, int], Path]) -> dict:
    """{(hidden, mlp): {batch: median TPOT ms}} of overfill decoding with each width (and the full model's), in
    rounds that take turns, on the same prompts (128 tokens, 64 generated)."""
    import torch

    from overfill.engine.loader import load_engine
    from overfill.engine.sampling_params import SamplingParams

    engines = {key: load_engine(spec.base.model, str(path), ["overfill", "full"]).engine
               for key, path in widths.items()}
    any_engine = next(iter(engines.values()))
    full_key = (any_engine.full.hidden_size, any_engine.full.config.intermediate_size)
    generator = torch.Generator().manual_seed(0)
    samples: dict = {}
    for _ in range(spec.tpot_rounds):
        for batch in spec.tpot_batch_sizes:
            vocab_size = any_engine.geometry.vocab_size
            prompts = torch.randint(vocab_size // 8, vocab_size // 2, (batch, 128), generator=generator).tolist()
            params = SamplingParams(max_new_tokens=64)
            runs = [(key, engine, "overfill") for key, engine in engines.items()] + [(full_key, any_engine, "full")]
            for key, engine, mode in runs:
                outputs = engine.generate(prompts, params, mode)
                tpot = statistics.median(o.tpot_s for o in outputs if o.tpot_s is not None)
                samples.setdefault(key, {}).setdefault(batch, []).append(1e3 * tpot)
    return {key: {batch: round(statistics.median(values), 2) for batch, values in per_batch.items()}
            for key, per_batch in samples.items()}


def format_report(result: dict) -> str:
    batches = result["spec"]["tpot_batch_sizes"]
    head = (f"{'fraction':>8} {'hidden':>6} {'MLP':>5} {'params M':>8}  {'variant':<36} {'trained tok':>11} "
            f"{'accuracy':>8} {'agree':>6} " + " ".join(f"{f'TPOT b{b}':>8}" for b in batches))
    lines = [f"{result['num_tasks']} tasks, greedy, {result['spec']['max_new_tokens']} new tokens", head]
    for r in result["rows"]:
        tpot = " ".join(f"{r['tpot_ms'].get(b, float('nan')):8.2f}" for b in batches)
        lines.append(f"{r['fraction']:8.2f} {r['hidden_size']:6d} {r['intermediate_size']:5d} "
                     f"{r['parameters'] / 1e6:8.1f}  {r['variant']:<36} {r['trained_tokens']:11d} "
                     f"{100 * r['accuracy']:7.1f}% {r['agreement']:6.3f} {tpot}")
    return "\n".join(lines)


def plot_decoders(result: dict, path: Path) -> None:
    """Accuracy against parameter fraction, one line per variant, the full model as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (accuracy_axes, agreement_axes) = plt.subplots(1, 2, figsize=(11, 4.5))
    full = next(r for r in result["rows"] if r["variant"] == "full model")
    variants = dict.fromkeys(r["variant"] for r in result["rows"] if r["variant"] != "full model")
    for variant in variants:
        rows = sorted((r for r in result["rows"] if r["variant"] == variant), key=lambda r: r["fraction"])
        fractions = [r["fraction"] for r in rows]
        accuracy_axes.plot(fractions, [100 * r["accuracy"] for r in rows], marker="o", label=variant)
        agreement_axes.plot(fractions, [r["agreement"] for r in rows], marker="o", label=variant)
    accuracy_axes.axhline(100 * full["accuracy"], color="black", linestyle="--", label="full model")
    accuracy_axes.axhline(80 * full["accuracy"], color="gray", linestyle=":", label="80% of the full model")
    accuracy_axes.set_ylabel(f"accuracy on {result['num_tasks']} tasks (%)")
    agreement_axes.set_ylabel("token agreement with the full model")
    for axes in (accuracy_axes, agreement_axes):
        axes.set_xlabel("decoder parameters / full model parameters")
        axes.grid(alpha=0.3)
    accuracy_axes.legend(fontsize=8)
    figure.suptitle("Decoders by size: reconstruction and training (overfill) against the Pruned baseline")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
