"""The static-shape decode step behind CUDA graphs: bucketing and padding as pure logic, the static step run eagerly
on CPU against `ModelRunner.forward`, and (GPU only) graph replays against eager decoding."""

import pytest
import torch

from overfill.engine.cuda_graphs import GraphDecoder, batch_buckets, bucket_for, kv_buckets, plan_step
from overfill.engine.generate import TwoStageEngine
from overfill.engine.kv_cache import CacheSpec, KVCache
from overfill.engine.runner import ModelRunner
from overfill.engine.sampling import SamplingParams
from tests.tiny import tiny_model


def test_buckets():
    assert [bucket_for(n, (1, 2, 4, 8)) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, None]
    assert batch_buckets(16) == (1, 2, 4, 8, 16) and batch_buckets(6) == (1, 2, 4, 6)
    assert batch_buckets(64) == (1, 2, 4, 8, 16, 32) and batch_buckets(1) == (1,)
    assert kv_buckets(2048) == (128, 256, 512, 1024, 2048) and kv_buckets(300) == (128, 256, 300)
    assert kv_buckets(64) == (64,)


def test_plan_pads_with_a_donor_slot_at_the_last_position():
    plan = plan_step([11, 12, 13], [5, 2, 7], [40, 99, 3], max_seq_len=256, batch_sizes=(1, 2, 4, 8),
                     kv_sizes=(128, 256))
    assert (plan.batch, plan.kv_len, plan.num_rows) == (4, 128, 3)  # the longest row writes position 99: 100 keys
    assert plan.input_ids == [11, 12, 13, 11] and plan.slots == [5, 2, 7, 5]
    assert plan.positions == [40, 99, 3, 255] and plan.ends == [41, 100, 4, 1]
    # The donor is a row whose own sequence has not reached the last position.
    plan = plan_step([1, 2, 3], [0, 1, 2], [255, 10, 4], 256, (4,), (256,))
    assert plan.slots[3] == 1 and plan.positions[3] == 255


def test_plan_gives_up_when_no_bucket_fits():
    assert plan_step([1] * 9, list(range(9)), [3] * 9, 64, (1, 2, 4, 8), (64,)) is None  # more rows than buckets
    assert plan_step([1], [0], [255], 256, (2,), (256,)) is None  # padding needed, but every row is at the end
    assert plan_step([1, 2], [0, 1], [255, 255], 256, (2,), (256,)).batch == 2  # no padding needed
    with pytest.raises(ValueError, match="full"):
        plan_step([1], [0], [64], 64, (1,), (64,))


def prefill(runner, cache, prompts):
    slots = cache.allocate(len(prompts))
    lengths = [len(p) for p in prompts]
    ids = torch.zeros(len(prompts), max(lengths), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt)] = torch.tensor(prompt)
    return slots, runner.forward(cache, slots, ids, num_new=lengths).argmax(-1).tolist()


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen3"])  # mistral: sliding window; qwen3: q/k norms
def test_static_step_run_eagerly_equals_the_forward(arch):
    runner = ModelRunner(tiny_model(arch))
    spec = CacheSpec.for_geometry(runner.geometry, 6, 300, runner.dtype, "cpu")  # KV buckets 128, 256, 300
    eager_cache, static_cache = KVCache(spec), KVCache(spec)
    static = GraphDecoder(runner, static_cache, capture=False)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 320, (n,), generator=generator).tolist() for n in (5, 120, 3)]  # 120: crosses 128
    eager_cache.allocate(2)  # rows sit in slots 2, 3, 4 (not starting at 0) on both sides
    static_cache.allocate(2)
    slots, first = prefill(runner, eager_cache, prompts)
    assert (slots, first) == prefill(runner, static_cache, prompts)
    eager_tokens, static_tokens = {s: [t] for s, t in zip(slots, first)}, {s: [t] for s, t in zip(slots, first)}
    for step in range(30):
        active = slots if step < 16 else [slots[0], slots[2]]  # three rows (padded to 4), then two non-adjacent
        eager = runner.forward(eager_cache, active, torch.tensor([[eager_tokens[s][-1]] for s in active]))
        replayed = static.step(active, [static_tokens[s][-1] for s in active])
        assert replayed.shape == eager.shape and torch.allclose(replayed, eager, atol=1e-5, rtol=1e-5)
        for row, slot in enumerate(active):
            eager_tokens[slot].append(eager[row].argmax().item())
            static_tokens[slot].append(replayed[row].argmax().item())
    assert static_tokens == eager_tokens
    assert static.num_graph_steps == 30 and static.num_eager_steps == 0
    assert {kv_len for _, kv_len in static._steps} == {128, 256}  # the long row moved up a KV bucket
    assert static_cache.lengths == eager_cache.lengths
    for slot in slots:  # every valid position holds the same KV; the padding rows' writes landed nowhere visible
        n = eager_cache.lengths[slot]
        assert torch.allclose(static_cache.k[:, slot, :, :n], eager_cache.k[:, slot, :, :n], atol=1e-5)
        assert torch.allclose(static_cache.v[:, slot, :, :n], eager_cache.v[:, slot, :, :n], atol=1e-5)


def test_graphs_need_cuda_and_the_engine_ignores_the_flag_elsewhere():
    runner = ModelRunner(tiny_model("llama"))
    cache = KVCache(CacheSpec.for_geometry(runner.geometry, 2, 32, runner.dtype, "cpu"))
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA cache"):
        GraphDecoder(runner, cache, capture=True)
    assert TwoStageEngine(runner, None, {2}, cuda_graphs=True).cuda_graphs is False


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_replays_equal_the_same_step_run_eagerly_bit_for_bit(dtype):
    runner = ModelRunner(tiny_model("mistral").to("cuda", dtype))
    spec = CacheSpec.for_geometry(runner.geometry, 4, 160, dtype, "cuda")
    caches = [KVCache(spec), KVCache(spec)]
    decoders = [GraphDecoder(runner, caches[0], capture=True), GraphDecoder(runner, caches[1], capture=False)]
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 320, (n,), generator=generator).tolist() for n in (6, 125, 17)]
    slots, first = prefill(runner, caches[0], prompts)
    assert (slots, first) == prefill(runner, caches[1], prompts)
    tokens = [list(first), list(first)]
    for step in range(12):
        active = [0, 1, 2] if step < 6 else [0, 2]
        outputs = [d.step([slots[r] for r in active], [tokens[i][r] for r in active]) for i, d in enumerate(decoders)]
        assert torch.equal(outputs[0], outputs[1])
        for i in range(2):
            for row, r in enumerate(active):
                tokens[i][r] = outputs[i][row].argmax().item()
    for slot in slots:  # (beyond a slot's length lie the writes of capture warm-ups and padding rows)
        n = caches[1].lengths[slot]
        assert caches[0].lengths[slot] == n and torch.equal(caches[0].k[:, slot, :, :n], caches[1].k[:, slot, :, :n])
        assert torch.equal(caches[0].v[:, slot, :, :n], caches[1].v[:, slot, :, :n])
    assert all(static.graph is not None for static in decoders[0]._steps.values())
    assert {kv_len for _, kv_len in decoders[0]._steps} == {128, 160}


@needs_cuda
def test_graph_decode_equals_eager_decode_on_cuda():
    runner = ModelRunner(tiny_model("qwen3").to("cuda"))
    eager = TwoStageEngine(runner, None, eos_token_ids=set())
    graphs = TwoStageEngine(runner, None, eos_token_ids=set(), cuda_graphs=True)
    generator = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 320, (n,), generator=generator).tolist() for n in (7, 30, 12)]
    params = [SamplingParams(max_new_tokens=n) for n in (40, 25, 33)]  # rows leave at different steps
    cache = graphs.new_cache(4, 80)
    expected = [o.token_ids for o in eager.generate(prompts, params, "full")]
    for _ in range(2):  # the second run replays the graphs the first one captured
        assert [o.token_ids for o in graphs.generate(prompts, params, "full", cache=cache)] == expected
    decoder = graphs.model_step(runner, cache).graphs
    assert decoder.num_graph_steps > 0 and decoder.num_eager_steps == 0
    assert all(static.graph is not None for static in decoder._steps.values())
