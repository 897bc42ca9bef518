"""What only a GPU can check, end to end, without Ray (runs/gpu_check.sh runs this file): KV exported from a CUDA cache
and imported into another after a gRPC transfer, bit for bit; both service workers on CUDA (sampled requests
included, and decode from CUDA graphs) giving the in-process engine's tokens; seeded sampling alone and in a batch."""

import asyncio

import pytest
import torch

from overfill.engine.generate import TwoStageEngine
from overfill.engine.kv_cache import CacheSpec, KVCache
from overfill.engine.runner import ModelRunner
from overfill.engine.sampling import SamplingParams
from overfill.serving.decode_worker import DecodeSettings, DecodeWorker
from overfill.serving.prefill_worker import PrefillSettings, PrefillWorker
from overfill.serving.types import PrefillRequest
from overfill.transport.base import make_receiver, make_sender
from overfill.transport.wire import DTYPE_NAMES, KVLayout
from tests.tiny import tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")

SECRET = "cuda-test-secret"
SAMPLED = SamplingParams(temperature=0.8, top_p=0.9, seed=1234, max_new_tokens=12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kv_exported_from_a_cuda_cache_arrives_bit_exact_in_another_over_grpc(dtype):
    spec = CacheSpec(num_layers=3, num_kv_heads=2, head_dim=16, num_slots=2, max_seq_len=300, dtype=dtype,
                     device="cuda")
    source, target = KVCache(spec), KVCache(spec)
    (slot,) = source.allocate(1)
    source.k[:, slot, :, :257].normal_()
    source.v[:, slot, :, :257].normal_()
    source.lengths[slot] = 257
    sender, receiver = make_sender("grpc", secret=SECRET, chunk_bytes=4096), make_receiver("grpc", secret=SECRET)
    try:
        k, v = source.export_slot(slot)  # [L, H, T, D] on the GPU
        assert k.is_cuda and k.shape == (3, 2, 257, 16)
        ticket = sender.publish("r", k, v)
        pulled_k, pulled_v = receiver.pull(ticket, KVLayout(3, 2, 16, DTYPE_NAMES[dtype], 0))
        (into,) = target.allocate(1)
        target.import_slot(into, pulled_k.to("cuda"), pulled_v.to("cuda"))
        torch.cuda.synchronize()
        assert target.lengths[into] == 257
        assert torch.equal(target.k[:, into, :, :257], source.k[:, slot, :, :257])
        assert torch.equal(target.v[:, into, :, :257], source.v[:, slot, :, :257])
        assert receiver.release(ticket) and sender.num_leases == 0
    finally:
        receiver.close()
        sender.close()


PROMPTS = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8], [1, 6, 1, 8, 0, 3, 3, 9, 8, 8, 7], [5, 7, 7]]


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_both_workers_on_cuda_give_the_engines_tokens_sampled_requests_included(cuda_graphs):
    full = ModelRunner(tiny_model("qwen3").to("cuda"))
    decoder = ModelRunner(tiny_model("qwen3", seed=1).to("cuda"))
    sender, receiver = make_sender("inprocess", secret=SECRET), make_receiver("inprocess", secret=SECRET)
    prefill = PrefillWorker(full, sender, {2}, PrefillSettings(max_seq_len=128, max_batch_size=4))
    decode = DecodeWorker(decoder, receiver, {2}, DecodeSettings(num_slots=4, max_seq_len=128,
                                                                 cuda_graphs=cuda_graphs))
    params = [SamplingParams(max_new_tokens=10), SAMPLED, SamplingParams(temperature=1.0, top_k=20, seed=7,
                                                                         max_new_tokens=9), SAMPLED]

    async def one(rid, prompt, sampling):
        result = await prefill.prefill(PrefillRequest(rid, prompt, sampling))
        tokens = [result.first_token]
        if result.finish_reason is None:
            tokens += [t async for chunk in decode.generate(result, sampling) for t in chunk.token_ids]
        return tokens

    async def run():
        return await asyncio.gather(*(one(f"r{i}", p, s) for i, (p, s) in enumerate(zip(PROMPTS, params))))

    try:
        served = asyncio.run(run())
    finally:
        prefill.close(), decode.close()
    engine = TwoStageEngine(full, decoder, {2})
    assert served == [engine.generate([p], s, "overfill")[0].token_ids for p, s in zip(PROMPTS, params)]
    assert decode.cache.num_free_slots == 4 and prefill.cache.num_free_slots == 4 and sender.num_leases == 0
    if cuda_graphs:
        assert decode.step.graphs.num_graph_steps > 0


def test_a_seeded_request_samples_the_same_tokens_alone_and_in_a_batch_on_cuda():
    engine = TwoStageEngine(ModelRunner(tiny_model("llama").to("cuda")), None, set(), cuda_graphs=True)
    alone = engine.generate([PROMPTS[0]], SAMPLED, "full")[0].token_ids
    others = [SamplingParams(max_new_tokens=12), SamplingParams(temperature=1.2, top_p=0.5, seed=5, max_new_tokens=12),
              SamplingParams(temperature=0.7, top_k=3, max_new_tokens=12)]
    batched = engine.generate(PROMPTS[1:] + [PROMPTS[0]], others + [SAMPLED], "full")
    assert batched[-1].token_ids == alone
