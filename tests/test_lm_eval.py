"""The `overfill` lm-eval model, offline, on tiny random models and tiny tasks written as local YAML + JSONL.

References are computed without the model class: log-likelihoods with Hugging Face modules (the full model's
`past_key_values` continued by the decoder, the OverFill training forward), generations with `TwoStageEngine`.
The tiny models are Qwen2 (untied embeddings): their greedy text varies, so stop strings cut it mid-way and the
two-stage numbers differ from the full model's.
"""

from __future__ import annotations

import copy
import json
import os
from functools import partial
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import lm_eval  # noqa: E402
import lm_eval.tasks  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from overfill.build_decoder import PruneSpec, build_decoder  # noqa: E402
from overfill.engine.loader import load_engine  # noqa: E402
from overfill.engine.sampling import SamplingParams  # noqa: E402
from overfill.lm_eval_model import OverFillLM  # noqa: E402
from tests.tiny import CORPUS, save_tiny  # noqa: E402

MAX_LENGTH = 24  # small, so the rolling document spans several windows
MAX_GEN_TOKS = 12
MC_DOCS = [
    {"question": "The quick brown", "choices": [" fox", " dog jumps", " lazy"], "label": 0},
    {"question": "What is the capital of France?", "choices": [" Paris", " one two three"], "label": 1},
    {"question": "def add(a, b):", "choices": ["\n    return a + b", " seven"], "label": 0},
]
GEN_PROMPTS = ["The quick brown", "Paris is", "Calibration text"]
ROLLING_TEXT = " ".join(CORPUS)  # ~60 tokens: three windows of MAX_LENGTH


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny Qwen2 full model, its decoder pruned to hidden 48 / MLP 64, and one 'pruned' to full size."""
    root = tmp_path_factory.mktemp("lm-eval-models")
    full = save_tiny(root / "full", arch="qwen2")
    calibration = root / "cal.jsonl"
    calibration.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    for name, hidden, mlp in (("decoder", 48, 64), ("identity", 64, 96)):
        build_decoder(PruneSpec(str(full), hidden, mlp, output=root / name, calibration=[calibration]), progress=False)
    return {"full": full, "decoder": root / "decoder", "identity": root / "identity"}


@pytest.fixture(scope="module")
def hf(models):
    load = partial(AutoModelForCausalLM.from_pretrained, dtype=torch.float32)
    return {"full": load(models["full"]).eval(), "decoder": load(models["decoder"]).eval(),
            "tokenizer": AutoTokenizer.from_pretrained(models["full"])}


def reference_logprob(full, decoder, context: list[int], continuation: list[int],
                      refresh_every: int = 0) -> tuple[float, bool]:
    """Two-stage log p(continuation | context) with Hugging Face modules: the full model's logits at the last context
    token score continuation[0]; the decoder, fed continuation[:-1] on the full model's KV, scores the rest. With
    refresh_every N, after every N decoder tokens the full model re-reads them into the KV instead."""
    with torch.no_grad():
        out = full(torch.tensor([context]), use_cache=True)
        past, logprobs = out.past_key_values, [out.logits[0, -1].log_softmax(-1)]
        inputs = continuation[:-1]
        step = refresh_every or max(1, len(inputs))
        for begin in range(0, len(inputs), step):
            piece = torch.tensor([inputs[begin:begin + step]])
            scratch = copy.deepcopy(past) if refresh_every else past
            logprobs.extend(decoder(piece, past_key_values=scratch, use_cache=True).logits[0].log_softmax(-1))
            if refresh_every:
                past = full(piece, past_key_values=past, use_cache=True).past_key_values
    total = sum(float(lp[token]) for lp, token in zip(logprobs, continuation))
    return total, all(int(lp.argmax()) == token for lp, token in zip(logprobs, continuation))


def split_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """How lm-eval tokenizes a (context, continuation) pair for causal models (trailing context spaces move over)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = tokenizer(context)["input_ids"]
    return context_ids, tokenizer(context + continuation)["input_ids"][len(context_ids):]


def pick_stop(text: str) -> str:
    """A two-character stop string whose first occurrence is inside `text` (not at its start)."""
    for k in range(len(text) // 2, len(text) - 1):
        if text.find(text[k:k + 2]) >= 1:
            return text[k:k + 2]
    raise AssertionError(f"no usable stop string in {text!r}")


def write_tasks(root: Path, gen_docs: list[dict], stop: str) -> Path:
    tasks = root / "tasks"
    tasks.mkdir()
    data = {"mc": MC_DOCS, "gen": gen_docs, "rolling": [{"text": ROLLING_TEXT}]}
    for name, docs in data.items():
        (tasks / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    common = (f"dataset_path: json\ndataset_kwargs:\n  cache_dir: {root / 'hf-datasets'}\n  data_files:\n"
              "    test: {path}\ntest_split: test\n")
    (tasks / "mc.yaml").write_text(
        "task: overfill_tiny_mc\noutput_type: multiple_choice\n" + common.format(path=tasks / "mc.jsonl")
        + "doc_to_text: '{{question}}'\ndoc_to_choice: choices\ndoc_to_target: label\n"
        + "metric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n")
    (tasks / "gen.yaml").write_text(
        "task: overfill_tiny_gen\noutput_type: generate_until\n" + common.format(path=tasks / "gen.jsonl")
        + "doc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
        + f"generation_kwargs:\n  until: [{json.dumps(stop)}]\n  max_gen_toks: {MAX_GEN_TOKS}\n  do_sample: false\n"
        + "metric_list:\n  - {metric: exact_match, aggregation: mean, higher_is_better: true}\n")
    (tasks / "rolling.yaml").write_text(
        "task: overfill_tiny_rolling\noutput_type: loglikelihood_rolling\n"
        + common.format(path=tasks / "rolling.jsonl")
        + "doc_to_text: ''\ndoc_to_target: '{{text}}'\nmetric_list:\n"
        + "  - {metric: word_perplexity, aggregation: weighted_perplexity, higher_is_better: false}\n")
    return tasks


def test_simple_evaluate_matches_two_stage_references(models, hf, tmp_path):
    tokenizer, full, decoder = hf["tokenizer"], hf["full"], hf["decoder"]
    # The generation reference first: the task's stop string comes from the first prompt's output (generation
    # kwargs are per task), and that prompt's doc has the one answer the output will match.
    loaded = load_engine(str(models["full"]), str(models["decoder"]), ["overfill"])
    texts = [tokenizer.decode(loaded.engine.generate([tokenizer(prompt)["input_ids"]],
                                                     SamplingParams(max_new_tokens=MAX_GEN_TOKS), "overfill")[0]
                              .token_ids, skip_special_tokens=True) for prompt in GEN_PROMPTS]
    stop = pick_stop(texts[0])
    expected_text = {prompt: text[:text.find(stop)] if stop in text else text
                     for prompt, text in zip(GEN_PROMPTS, texts)}
    assert sum(stop in text for text in texts) < len(texts)  # some outputs are cut, some are not
    gen_docs = [{"prompt": prompt, "answer": expected_text[prompt] if index == 0 else "no such output"}
                for index, prompt in enumerate(GEN_PROMPTS)]
    tasks = write_tasks(tmp_path, gen_docs, stop)

    result = lm_eval.simple_evaluate(
        model="overfill", model_args={"model": str(models["full"]), "decoder": str(models["decoder"]),
                                      "max_length": MAX_LENGTH},
        tasks=["overfill_tiny_mc", "overfill_tiny_gen", "overfill_tiny_rolling"], batch_size=2, device="cpu",
        task_manager=lm_eval.tasks.TaskManager(include_path=str(tasks), include_defaults=False), log_samples=True)
    assert result["config"]["overfill_mode"] == "overfill"
    metrics, samples = result["results"], result["samples"]

    # Multiple choice: every choice's log-likelihood equals the Hugging Face two-stage computation.
    correct = []
    for sample in samples["overfill_tiny_mc"]:
        scores = []
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
            expected_logprob, expected_greedy = reference_logprob(full, decoder,
                                                                  *split_pair(tokenizer, context, continuation))
            assert resp[0][0] == pytest.approx(expected_logprob, abs=1e-4)
            assert resp[0][1] == expected_greedy
            scores.append(expected_logprob)
        correct.append(max(range(len(scores)), key=scores.__getitem__) == sample["doc"]["label"])
    assert metrics["overfill_tiny_mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct))

    # generate_until: the engine's two-stage greedy text, cut before the stop string; exact_match scores it.
    for sample in samples["overfill_tiny_gen"]:
        (context, gen_kwargs), = sample["arguments"]
        assert gen_kwargs["until"] == [stop]
        assert sample["filtered_resps"] == [expected_text[context]]
    assert metrics["overfill_tiny_gen"]["exact_match,none"] == pytest.approx(1 / len(GEN_PROMPTS))

    # Rolling: the sum over the harness's windows, each window two-stage.
    (sample,) = samples["overfill_tiny_rolling"]
    tokens = tokenizer(ROLLING_TEXT)["input_ids"]
    windows = list(map(make_disjoint_window, get_rolling_token_windows(tokens, tokenizer.eos_token_id,
                                                                       MAX_LENGTH, 1)))
    assert len(windows) >= 3
    expected = sum(reference_logprob(full, decoder, c, r)[0] for c, r in windows)
    assert sample["resps"][0][0] == pytest.approx(expected, abs=1e-3)
    assert metrics["overfill_tiny_rolling"]["word_perplexity,none"] > 1


def requests(kind: str, *args_list) -> list[Instance]:
    return [Instance(kind, {}, args, index) for index, args in enumerate(args_list)]


def test_identity_decoder_scores_like_the_full_model(models):
    """A decoder 'pruned' to the full size is the full model: two-stage scores must equal full-model scores, and
    differ from those of the real (smaller) decoder."""
    pairs = requests("loglikelihood", *[(d["question"], c) for d in MC_DOCS for c in d["choices"]])
    rolling = requests("loglikelihood_rolling", (ROLLING_TEXT,))
    common = {"model": str(models["full"]), "max_length": MAX_LENGTH, "batch_size": 3, "device": "cpu"}
    by_mode = {}
    for name, decoder, mode in (("full", None, "full"), ("identity", models["identity"], "overfill"),
                                ("pruned", models["decoder"], "overfill")):
        lm = OverFillLM(decoder=None if decoder is None else str(decoder), mode=mode, **common)
        by_mode[name] = (lm.loglikelihood(pairs, disable_tqdm=True), lm.loglikelihood_rolling(rolling, True))
    (full_pairs, full_rolling), (identity_pairs, identity_rolling) = by_mode["full"], by_mode["identity"]
    assert [g for _, g in identity_pairs] == [g for _, g in full_pairs]
    assert [lp for lp, _ in identity_pairs] == pytest.approx([lp for lp, _ in full_pairs], abs=1e-4)
    assert identity_rolling == pytest.approx(full_rolling, abs=1e-3)
    assert by_mode["pruned"][0][0][0] != pytest.approx(full_pairs[0][0], abs=1e-2)


def test_prefill_refresh_in_scoring_and_generation(models, hf):
    """refresh_every N: the full model rewrites the decoder's KV every N tokens, in scoring as in generation."""
    lm = OverFillLM(model=str(models["full"]), decoder=str(models["decoder"]), refresh_every=2, batch_size=2,
                    device="cpu")
    pairs = [(d["question"], d["choices"][1]) for d in MC_DOCS] + [("Paris", " is the capital of France.")]
    scored = lm.loglikelihood(requests("loglikelihood", *pairs), disable_tqdm=True)
    for (context, continuation), (logprob, greedy) in zip(pairs, scored):
        ids = split_pair(hf["tokenizer"], context, continuation)
        expected_logprob, expected_greedy = reference_logprob(hf["full"], hf["decoder"], *ids, refresh_every=2)
        assert logprob == pytest.approx(expected_logprob, abs=1e-4) and greedy == expected_greedy
    # The long continuation is refreshed twice before its last tokens: without refresh its score differs.
    assert len(ids[1]) >= 6
    assert scored[-1][0] != pytest.approx(reference_logprob(hf["full"], hf["decoder"], *ids)[0], abs=1e-3)

    loaded = load_engine(str(models["full"]), str(models["decoder"]), ["overfill"])
    prompt = hf["tokenizer"](GEN_PROMPTS[1])["input_ids"]
    refreshed, plain = (loaded.engine.generate([prompt], SamplingParams(max_new_tokens=MAX_GEN_TOKS), "overfill",
                                               refresh_every=every)[0].token_ids for every in (2, 0))
    assert refreshed != plain  # on this prompt refresh changes the output, so the check below can tell
    request = (GEN_PROMPTS[1], {"until": [], "max_gen_toks": MAX_GEN_TOKS})
    (text,) = lm.generate_until(requests("generate_until", request), disable_tqdm=True)
    assert text == hf["tokenizer"].decode(refreshed, skip_special_tokens=True)


def test_cli_runs_the_registered_model(models, tmp_path, monkeypatch):
    """`overfill lm-eval ...` is lm-eval's own CLI with `--model overfill` resolvable."""
    from overfill.cli.main import main

    tasks = write_tasks(tmp_path, [{"prompt": "x", "answer": "z"}], stop="y")
    # lm-eval's CLI indexes its ~14,000 built-in task YAMLs first (12-25 s here); this test needs only its own.
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", partial(lm_eval.tasks.TaskManager, include_defaults=False))
    out = tmp_path / "out"
    code = main(["lm-eval", "run", "--model", "overfill", "--model_args",
                 f"model={models['full']},decoder={models['decoder']},max_length={MAX_LENGTH}",
                 "--tasks", "overfill_tiny_mc", "--include_path", str(tasks), "--device", "cpu",
                 "--batch_size", "4", "--output_path", str(out)])
    assert code == 0
    (results_file,) = out.rglob("results_*.json")
    results = json.loads(results_file.read_text())
    assert 0 <= results["results"]["overfill_tiny_mc"]["acc,none"] <= 1
    assert results["config"]["model"] == "overfill" and results["config"]["overfill_mode"] == "overfill"


@pytest.mark.parametrize("model_args, field", [
    ({"mode": "speculative"}, "mode"), ({"batch_size": "auto"}, "batch_size"),
    ({"mode": "full", "refresh_every": 2}, "refresh_every"), ({"max_length": 0}, "max_length"),
])
def test_bad_model_args_name_the_field(models, model_args, field):
    with pytest.raises(ValueError, match=field):
        OverFillLM(model=str(models["full"]), decoder=str(models["decoder"]), device="cpu", **model_args)


def test_bad_generation_kwargs_name_the_key(models):
    lm = OverFillLM(model=str(models["full"]), decoder=str(models["decoder"]), device="cpu", max_length=MAX_LENGTH)
    with pytest.raises(ValueError, match="top_k"):
        lm.generate_until(requests("generate_until", ("x", {"until": ["\n"], "top_k": 5})), disable_tqdm=True)
    with pytest.raises(ValueError, match="max_gen_toks"):
        lm.generate_until(requests("generate_until", ("x", {"max_gen_toks": MAX_LENGTH})), disable_tqdm=True)
