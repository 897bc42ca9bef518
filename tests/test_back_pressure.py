"""Back-pressure without Ray: the prefill replica's token budgets (queued prompt tokens; KV queued, running or
leased) refuse with RESOURCE_EXHAUSTED at once and admit again once KV is freed; the config fields are validated."""

import asyncio

import pytest

from overfill.engine.runner import ModelRunner
from overfill.engine.sampling import SamplingParams
from overfill.serving.config import ConfigError, load_config
from overfill.serving.prefill_worker import PrefillSettings, PrefillWorker
from overfill.serving.types import PrefillRequest, ServiceError
from overfill.transport.inprocess import InProcessSender
from tests.tiny import tiny_model

PROMPT = [5, 9, 13, 17, 21, 25, 29, 33]  # 8 tokens


@pytest.fixture(scope="module")
def runner():
    return ModelRunner(tiny_model("llama"))


def worker(runner, **budgets) -> PrefillWorker:
    settings = PrefillSettings(max_seq_len=64, max_batch_tokens=64, max_batch_size=4, **budgets)
    return PrefillWorker(runner, InProcessSender(), set(), settings)


async def burst(prefill: PrefillWorker, names: list[str]) -> list:
    """Concurrent prefills, all queued before the batch loop first runs (tasks run in creation order)."""
    sampling = SamplingParams(max_new_tokens=4)
    return await asyncio.gather(*(prefill.prefill(PrefillRequest(n, PROMPT, sampling)) for n in names),
                                return_exceptions=True)


def refused(results) -> list[ServiceError]:
    assert all(isinstance(r, ServiceError) or r.ticket is not None for r in results), results
    return [r for r in results if isinstance(r, ServiceError)]


def test_queued_prompt_tokens_are_bounded(runner):
    prefill = worker(runner, max_queued_tokens=20, max_leased_tokens=1000)

    async def run():
        results = await burst(prefill, ["a", "b", "c", "d"])  # 8 + 8 fit in 20, a third 8 does not
        errors = refused(results)
        assert len(errors) == 2 and all(e.code == "RESOURCE_EXHAUSTED" for e in errors)
        assert "prefill queue is full (16 prompt tokens waiting, 8 more exceed 20)" in errors[0].message
        for r in results:
            if not isinstance(r, ServiceError):
                prefill.sender.release(r.request_id)
        assert not refused(await burst(prefill, ["e", "f"]))  # the queue drained: admitted again

    asyncio.run(run())
    assert prefill.stats()["queued_prompt_tokens"] == 0
    prefill.close()


def test_kv_budget_counts_queued_running_and_leased_tokens(runner):
    prefill = worker(runner, max_queued_tokens=1000, max_leased_tokens=24)

    async def run():
        first = refused(await burst(prefill, ["a", "b", "c", "d"]))  # 3 x 8 = 24 queued fit, the fourth does not
        assert len(first) == 1 and "prefill KV budget is spent (24 prompt tokens queued, running or leased" \
            in first[0].message
        assert prefill.stats()["leased_tokens"] == 24
        # Nothing queued now, but the three leases (nobody pulled them) still hold 24 tokens of KV.
        (error,) = refused(await burst(prefill, ["e"]))
        assert error.code == "RESOURCE_EXHAUSTED" and "24 prompt tokens" in error.message
        assert prefill.sender.release("a")  # a decode replica pulled one: room for one more
        assert not refused(await burst(prefill, ["e"]))
        for name in ("b", "c", "e"):
            assert prefill.sender.release(name)

    asyncio.run(run())
    assert prefill.stats()["leased_tokens"] == 0 and prefill.sender.num_leases == 0
    prefill.close()


@pytest.mark.parametrize("overrides, message", [
    (["prefill.max_queued_tokens=1000"], "prefill.max_queued_tokens = 1000 is invalid: must be >= "
                                         "server.max_context_tokens = 2048"),
    (["prefill.max_leased_tokens=2047"], "prefill.max_leased_tokens = 2047 is invalid"),
    (["server.max_context_tokens=100", "server.max_tokens_limit=50", "server.default_max_tokens=8",
      "prefill.max_leased_tokens=99"], "prefill.max_leased_tokens = 99 is invalid: must be >= "
                                       "server.max_context_tokens = 100"),
    (["server.max_queued_requests=0"], "server.max_queued_requests = 0 is invalid: must be >= 1"),
    (["server.max_ongoing_requests=0"], "server.max_ongoing_requests = 0 is invalid: must be >= 1"),
])
def test_budget_config_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value)


def test_budget_config_defaults_and_overrides():
    config = load_config(None, ["prefill.max_queued_tokens=4096", "server.max_queued_requests=8"])
    assert config.prefill.max_queued_tokens == 4096 and config.prefill.max_leased_tokens == 65536
    assert config.server.max_queued_requests == 8 and config.server.max_ongoing_requests == 2048


def test_ray_serve_refusals_in_the_router_become_statuses():
    """A pool's handle queue full (Ray Serve's BackPressureError, raised in the router) is RESOURCE_EXHAUSTED, a pool
    that failed to deploy is UNAVAILABLE; before, both left the router as INTERNAL."""
    from ray.serve._private.common import DeploymentID
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    from services.router.server import service_error_of

    full = service_error_of(BackPressureError(num_queued_requests=30, max_queued_requests=30))
    assert full.code == "RESOURCE_EXHAUSTED" and "max_queued_requests=30" in full.message
    gone = service_error_of(DeploymentUnavailableError(DeploymentID(name="decode", app_name="overfill")))
    assert gone.code == "UNAVAILABLE" and "decode" in gone.message
    assert service_error_of(RuntimeError("a bug")) is None  # stays INTERNAL, with the request id
