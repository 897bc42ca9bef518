"""The engine against Hugging Face: logits, greedy generation, batching, sampling, and KV slot accounting."""

import pytest
import torch

from overfill.engine.generate import TwoStageEngine
from overfill.engine.runner import ModelRunner
from overfill.engine.sampling import SamplingParams
from tests.tiny import tiny_model

ARCHS = ["llama", "qwen2", "qwen3", "mistral"]


def full_engine(model, eos=()):
    return TwoStageEngine(ModelRunner(model), None, set(eos))


@pytest.mark.parametrize("arch", ARCHS)
def test_prefill_logits_match_hugging_face(arch):
    model = tiny_model(arch)
    input_ids = torch.randint(0, 320, (2, 11), generator=torch.Generator().manual_seed(1))  # longer than Mistral's window 7
    expected = model(input_ids).logits
    engine = full_engine(model)
    cache = engine.new_cache(2, 32)
    actual = engine.full.forward(cache, cache.allocate(2), input_ids, all_logits=True)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_matches_hugging_face_generate(arch):
    model = tiny_model(arch)
    prompt = torch.randint(0, 320, (1, 6), generator=torch.Generator().manual_seed(2))
    expected = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False,
                              eos_token_id=None, pad_token_id=0)[0, 6:].tolist()
    output = full_engine(model).generate([prompt[0].tolist()], SamplingParams(max_new_tokens=12), "full")[0]
    assert output.token_ids == expected
    assert output.finish_reason == "length" and output.prompt_tokens == 6


def test_batched_greedy_equals_one_by_one():
    engine = full_engine(tiny_model("qwen2"))
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 320, (n,), generator=generator).tolist() for n in (3, 9, 5, 1)]
    params = SamplingParams(max_new_tokens=10)
    batched = [o.token_ids for o in engine.generate(prompts, params, "full")]
    single = [engine.generate([p], params, "full")[0].token_ids for p in prompts]
    assert batched == single


def test_generation_stops_at_eos_and_reports_timings():
    model = tiny_model("llama")
    prompt = [5, 6, 7]
    free_run = full_engine(model).generate([prompt], SamplingParams(max_new_tokens=8), "full")[0].token_ids
    eos = free_run[3]
    stopped = full_engine(model, eos=[eos]).generate([prompt], SamplingParams(max_new_tokens=8), "full")[0]
    assert stopped.token_ids == free_run[:free_run.index(eos) + 1]
    assert stopped.finish_reason == "stop"
    assert stopped.ttft_s > 0 and (stopped.tpot_s is None or stopped.tpot_s > 0)


def test_a_stop_token_id_ends_its_request_and_ignore_eos_runs_past_eos():
    model = tiny_model("llama")
    prompt = [5, 6, 7]
    free_run = full_engine(model).generate([prompt], SamplingParams(max_new_tokens=8), "full")[0].token_ids
    stop = free_run[2]
    stopped = full_engine(model).generate([prompt], SamplingParams(max_new_tokens=8, stop_token_ids=(stop,)),
                                          "full")[0]
    assert stopped.token_ids == free_run[:free_run.index(stop) + 1] and stopped.finish_reason == "stop"
    eos = free_run[1]
    past_eos = full_engine(model, eos=[eos]).generate([prompt], SamplingParams(max_new_tokens=8, ignore_eos=True),
                                                      "full")[0]
    assert past_eos.token_ids == free_run and past_eos.finish_reason == "length"


def test_token_callback_can_end_its_row():
    """A callback returning True (a stop string reached) ends that row there; the other rows run on unchanged."""
    engine = full_engine(tiny_model("qwen2"))
    prompts, params = [[5, 6, 7], [8, 9]], SamplingParams(max_new_tokens=8)
    free_run = [o.token_ids for o in engine.generate(prompts, params, "full")]
    seen: list[list[int]] = [[], []]

    def stop_row_0_at_third_token(row: int, token: int) -> bool:
        seen[row].append(token)
        return row == 0 and len(seen[row]) == 3

    stopped = engine.generate(prompts, params, "full", on_token=stop_row_0_at_third_token)
    assert stopped[0].token_ids == free_run[0][:3] and stopped[0].finish_reason == "stop"
    assert stopped[1].token_ids == free_run[1] and stopped[1].finish_reason == "length"


def test_seeded_sampling_is_reproducible_and_batch_invariant():
    engine = full_engine(tiny_model("qwen3"))
    params = SamplingParams(temperature=0.8, top_p=0.9, seed=123, max_new_tokens=10)
    alone = engine.generate([[1, 2, 3]], params, "full")[0].token_ids
    in_batch = engine.generate([[9, 9, 9, 9], [1, 2, 3]], [SamplingParams(max_new_tokens=10), params], "full")[1]
    assert in_batch.token_ids == alone
    other_seed = engine.generate([[1, 2, 3]], SamplingParams(temperature=0.8, seed=7, max_new_tokens=10), "full")
    assert other_seed[0].token_ids != alone


def test_kv_slots_are_freed_after_generation_and_after_errors():
    engine = full_engine(tiny_model("llama"))
    cache = engine.new_cache(num_slots=4, max_seq_len=64)
    engine.generate([[1, 2], [3, 4, 5]], SamplingParams(max_new_tokens=5), "full", cache=cache)
    assert cache.num_free_slots == 4 and cache.lengths == [0, 0, 0, 0]

    def explode(row, token):
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError, match="client went away"):
        engine.generate([[1, 2]], SamplingParams(max_new_tokens=5), "full", on_token=explode, cache=cache)
    assert cache.num_free_slots == 4


@pytest.mark.parametrize("bad, message", [
    (dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(stop_token_ids=[3]), "stop_token_ids must be a tuple"), (dict(stop_token_ids=(-1,)), "stop_token_ids"),
])
def test_bad_sampling_params_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**bad)


def test_empty_prompt_and_missing_model_are_refused():
    engine = full_engine(tiny_model("llama"))
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        engine.generate([[1], []], SamplingParams(max_new_tokens=2), "full")
    with pytest.raises(ValueError, match="needs the decoder"):
        engine.generate([[1]], SamplingParams(max_new_tokens=2), "overfill")
