"""Fault injection and a rolling upgrade on the running service (one application on the session's Ray cluster, tiny
models, 2 prefill + 2 decode replicas): a decode replica killed mid-stream (migrated once, then UNAVAILABLE), a
prefill replica killed between its ticket and the pull, a KV connection dropped mid-transfer, a transfer that starts after its lease
expired, a decode step stalled past the deadline, and both pools redeployed under load. For each: the client's
status and message (with the request id) within its deadline, Serve replacing the dead replicas, the others serving
the tokens in-process generation gives, and no lease or slot left on any replica (their accounting, then Prometheus).

Faults that need injection are armed for one request id (tests/faults/chaos.py): the pools run the chaos servers,
which wrap the production ones, so a test breaks exactly the request it watches. Replicas are killed with ray.kill
on their actor (tests/faults/replicas.py).
Killed replicas are replaced while the next tests run; `test_serve_replaces_every_killed_replica` waits for it. No
test needs another's stall to have ended: a decode replica held by a step sends new requests to the other one.
"""

import asyncio
import itertools
import time

import pytest

from overfill.client import AsyncOverFillClient, OverFillClient, OverFillError
from tests.faults.chaos import CHAOS_IMPORT_PATH, FaultPlan, arm
from tests.faults.replicas import (
    assert_no_kv_anywhere,
    busy_replica,
    kill_replica,
    metric,
    pool_states,
    replica_actors,
    exported_replicas,
    replica_stats,
    scrape,
    wait_pool_restored,
)
from tests.service_helpers import (in_process, serve_file_for_tests, session_ray, tiny_service, tiny_service_config,
                                   wait_for)

pytestmark = pytest.mark.service
LEASE_TTL_S = 3.0
MAX_STEP_S = 4.0
UNHEALTHY_STEP_S = 12.0  # past the stalls other tests make before they kill or release their replica
PROMPTS = ["one two three", "What is the capital of France?", "alpha is a word", "count with me: one two three",
           "The quick brown fox", "def add(a, b):"]
WORDS = ["alpha", "bravo", "one", "two", "fox", "sun", "7", "42", "the", "cat", "x", "def", "1", "2", "3", "4"]


OVERRIDES = ("prefill.num_replicas=2", "decode.num_replicas=2", f"kv.lease_ttl_s={LEASE_TTL_S}", "kv.chunk_bytes=1024",
             f"decode.max_step_s={MAX_STEP_S}", f"decode.unhealthy_step_s={UNHEALTHY_STEP_S}",
             "decode.graceful_shutdown_timeout_s=25")


@pytest.fixture(scope="module")
def service(service_models):
    session_ray()
    # The session's cluster may export the metrics of earlier modules' replicas: this module counts its own only.
    earlier = exported_replicas(tiny_service_config(*service_models))
    with tiny_service(service_models, *OVERRIDES, chaos=True) as service:
        yield {**service, "app": service["config"].server.app_name, "earlier_replicas": earlier}


def prompt_ids(service, prompt: str) -> list[int]:
    return service["engine"].tokenizer(prompt)["input_ids"]


def long_prompt(service, max_tokens: int) -> str:
    """A prompt whose greedy answer runs to max_tokens (no early EOS), so a stream has a middle to break."""
    return next(p for p in PROMPTS if len(in_process(service, prompt_ids(service, p), max_tokens)) == max_tokens)


def faulty_client(service, request_id: str, timeout_s: float = 30.0, **plan) -> OverFillClient:
    """A client for the request `request_id`, which meets the faults `plan` names (FaultPlan's fields)."""
    arm(request_id, FaultPlan(**plan))
    return OverFillClient(service["address"], timeout_s=timeout_s)


def assert_serves_correctly(service) -> None:
    """The replicas left (and their replacements) answer greedy requests with in-process tokens."""
    with OverFillClient(service["address"], timeout_s=60) as client:
        for prompt in PROMPTS[:3]:
            tokens = list(client.generate_unary(prompt, max_tokens=12).token_ids)
            assert tokens == in_process(service, prompt_ids(service, prompt), 12), prompt


def read_until(stream, num_tokens: int) -> list[int]:
    tokens = []
    while len(tokens) < num_tokens:
        tokens += next(stream).token_ids
    return tokens


def test_a_decode_replica_killed_mid_stream_is_migrated_without_repeating_a_token(service):
    app, max_tokens, stall_at = service["app"], 24, 6
    # A prompt where continuing from the full model's KV of prompt + the first 6 tokens (what a migration does)
    # gives other tokens than the uninterrupted decoder: the check below then tells the two apart. Tiny random models
    # mostly repeat one token, so the search runs past PROMPTS through word triples (about 1 in 10 qualifies).
    candidates = PROMPTS + [" ".join(words) for words in itertools.permutations(WORDS, 3)]
    prompt, ids, reference, continuation = next(
        (p, ids, ref, in_process(service, ids + ref[:stall_at], max_tokens - stall_at))
        for p in candidates for ids in [prompt_ids(service, p)] for ref in [in_process(service, ids, max_tokens)]
        if len(ref) == max_tokens and in_process(service, ids + ref[:stall_at], max_tokens - stall_at) != ref[stall_at:])
    with faulty_client(service, "migrate-1", stall_after_tokens=stall_at, stall_step_s=30) as client:
        stream = client.generate(prompt, max_tokens=max_tokens, request_id="migrate-1")
        tokens = read_until(stream, stall_at)  # its decode replica now holds the model thread
        killed = busy_replica(app, "decode", "num_running")
        kill_replica(app, "decode", killed)
        pieces = list(stream)
    tokens += [t for p in pieces for t in p.token_ids]
    # The client got the tokens before the kill as streamed, then what the full model prefilling prompt + those
    # tokens and the decoder continuing make (a prefill refresh), each token exactly once and max_tokens in all.
    assert tokens == reference[:stall_at] + continuation and tokens != reference
    assert pieces[-1].finish_reason == "length" and pieces[-1].usage.completion_tokens == max_tokens
    assert pieces[-1].request_id == "migrate-1" and killed not in replica_actors(app, "decode")
    assert_serves_correctly(service)  # the other decode replica, while Serve replaces the dead one
    assert_no_kv_anywhere(service["config"])


def test_a_prefill_replica_killed_between_ticket_and_pull(service):
    app = service["app"]
    with faulty_client(service, "orphaned-1", delay_pull_s=3) as client:  # decode waits 3 s before it pulls
        stream = client.generate(long_prompt(service, 24), max_tokens=24, request_id="orphaned-1")
        assert len(next(stream).token_ids) == 1  # the first token: the ticket is out, its KV leased
        kill_replica(app, "prefill", busy_replica(app, "prefill", "num_leases"))
        started = time.monotonic()
        with pytest.raises(OverFillError) as error:
            list(stream)
    assert error.value.code == "UNAVAILABLE" and "orphaned-1" in error.value.message
    assert "KV pull" in error.value.message and time.monotonic() - started < 10
    assert_serves_correctly(service)  # the surviving prefill replica, before the replacement is up
    assert_no_kv_anywhere(service["config"])


def test_a_kv_connection_dropped_mid_transfer(service):
    with faulty_client(service, "dropped-1", drop_pull_after_chunks=1) as client:  # 1 KiB chunks: several
        with pytest.raises(OverFillError) as error:
            list(client.generate(long_prompt(service, 24), max_tokens=24, request_id="dropped-1"))
    assert error.value.code == "UNAVAILABLE" and "dropped-1" in error.value.message
    assert "KV pull" in error.value.message and "link to it failed" in error.value.message
    assert "injected fault" not in error.value.message  # the transport's own words stay in the replica's log
    assert_serves_correctly(service)
    assert_no_kv_anywhere(service["config"])  # the router released the lease decode never acknowledged


def test_a_transfer_delayed_past_its_lease_is_aborted(service):
    app = service["app"]
    expired_before = sum(s["leases_expired"] for s in replica_stats(app, "prefill").values())
    with faulty_client(service, "late-1", delay_pull_s=LEASE_TTL_S + 1) as client:
        started = time.monotonic()
        with pytest.raises(OverFillError) as error:
            list(client.generate(long_prompt(service, 24), max_tokens=24, request_id="late-1"))
    assert error.value.code == "ABORTED" and "late-1" in error.value.message
    assert "no longer leased" in error.value.message and time.monotonic() - started < LEASE_TTL_S + 5
    assert sum(s["leases_expired"] for s in replica_stats(app, "prefill").values()) == expired_before + 1
    assert_serves_correctly(service)
    assert_no_kv_anywhere(service["config"])


def test_a_decode_step_stalled_past_the_deadline(service):
    # The client's deadline leaves room for the prefill and the first tokens before the stall, which take seconds on
    # two cores while killed replicas are being replaced (MAX_STEP_S + 1.5 s was seen too short).
    deadline_s = MAX_STEP_S + 10
    with faulty_client(service, "stalled-1", deadline_s, stall_after_tokens=2, stall_step_s=5.5) as client:
        started = time.monotonic()
        with pytest.raises(OverFillError) as error:
            list(client.generate(long_prompt(service, 24), max_tokens=24, request_id="stalled-1"))
    # decode.max_step_s ends it on the server, before the client's own deadline, with a message.
    assert error.value.code == "DEADLINE_EXCEEDED" and "stalled-1" in error.value.message
    assert "decode.max_step_s" in error.value.message and time.monotonic() - started < deadline_s
    assert_serves_correctly(service)  # on another replica, or on this one once its step returned
    assert_no_kv_anywhere(service["config"])  # the stalled step's slot too, once it returned


def test_a_decode_replica_stuck_in_a_step_is_replaced(service):
    """A step that never comes back (a wedged device): the request fails at decode.max_step_s, then the replica's
    health check fails past decode.unhealthy_step_s and Serve replaces it while the other replica serves."""
    app = service["app"]
    with faulty_client(service, "stuck-1", MAX_STEP_S + 5, stall_after_tokens=2, stall_step_s=600) as client:
        stream = client.generate(long_prompt(service, 24), max_tokens=24, request_id="stuck-1")
        read_until(stream, 2)
        stuck = busy_replica(app, "decode", "num_running")
        with pytest.raises(OverFillError) as error:
            list(stream)
    assert error.value.code == "DEADLINE_EXCEEDED" and "stuck-1" in error.value.message
    assert_serves_correctly(service)  # the other replica, while this one's model thread stays held
    assert wait_for(lambda: stuck not in replica_actors(app, "decode"), UNHEALTHY_STEP_S + 60), \
        "Serve did not replace the replica whose step never returned"
    wait_pool_restored(app, "decode", service["config"].decode.num_replicas)
    assert_serves_correctly(service)
    assert_no_kv_anywhere(service["config"])


def test_a_request_refused_at_admission_is_served_by_asking_the_decode_pool_again(service):
    """Each decode replica refuses the request once, as if full (`refuse_admission`): the router asks the pool again
    with the same ticket, its lease intact, until a replica takes it (with two replicas, by the third call)."""
    config = service["config"]
    wait_pool_restored(service["app"], "decode", config.decode.num_replicas)  # two replicas, each refusing once

    def retries() -> float:
        return sum(metric(scrape(config), "ray_overfill_decode_admission_retries_total",
                          exclude=service["earlier_replicas"]).values())

    before = retries()
    prompt = PROMPTS[1]
    with faulty_client(service, "refused-once", refuse_admission=True) as client:
        reply = client.generate_unary(prompt, max_tokens=12, request_id="refused-once")
    assert list(reply.token_ids) == in_process(service, prompt_ids(service, prompt), 12)
    assert wait_for(lambda: retries() - before in (1, 2), 15), retries() - before
    assert_no_kv_anywhere(config)


def test_serve_replaces_every_killed_replica(service):
    config = service["config"]
    for pool in ("prefill", "decode"):
        wait_pool_restored(service["app"], pool, getattr(config, pool).num_replicas)
    assert_serves_correctly(service)
    assert_no_kv_anywhere(config)


def test_a_second_decode_death_ends_the_request_with_unavailable(service):
    app, stall_at = service["app"], 4
    # The two decode replicas that serve it in turn both stall after their 4th token: each is killed there.
    with faulty_client(service, "migrate-2", stall_after_tokens=stall_at, stall_step_s=30, stall_replicas=2) as client:
        stream = client.generate(long_prompt(service, 24), max_tokens=24, request_id="migrate-2")
        tokens = read_until(stream, stall_at)
        kill_replica(app, "decode", busy_replica(app, "decode", "num_running"))
        tokens += read_until(stream, stall_at)  # migrated: the re-prefill's token and 3 decoded ones
        kill_replica(app, "decode", busy_replica(app, "decode", "num_running"))
        started = time.monotonic()
        with pytest.raises(OverFillError) as error:
            list(stream)
    assert len(tokens) == 2 * stall_at and error.value.code == "UNAVAILABLE"
    assert "migrate-2" in error.value.message and "after 1 migration" in error.value.message
    assert time.monotonic() - started < 10
    wait_pool_restored(app, "decode", service["config"].decode.num_replicas)
    assert_serves_correctly(service)
    assert_no_kv_anywhere(service["config"])


def test_a_rolling_upgrade_of_both_pools_under_load_fails_no_request(service):
    """Redeploy the Serve config with new actor options for both pools (what changes them: Ray Serve restarts
    replicas one at a time, each stopped one draining its calls and, for prefill, its leases) while 8 streams run."""
    from ray.serve.context import _get_global_client

    from services.app import start_service

    app, config = service["app"], service["config"]
    before = {pool: set(replica_actors(app, pool)) for pool in ("router", "prefill", "decode")}
    references = {p: in_process(service, prompt_ids(service, p), 16) for p in PROMPTS}
    upgrade = serve_file_for_tests(CHAOS_IMPORT_PATH, deployments=[
        {"name": pool, "ray_actor_options": {"num_cpus": 0.2}} for pool in ("prefill", "decode")])

    def upgraded() -> bool:
        return all(pool_states(app, pool) == {"RUNNING": 2} and not set(replica_actors(app, pool)) & before[pool]
                   for pool in ("prefill", "decode"))

    async def run() -> tuple[list[bool], list[OverFillError]]:
        outcomes, failures, done = [], [], asyncio.Event()
        async with AsyncOverFillClient(service["address"], timeout_s=60) as client:
            async def stream_forever(worker: int) -> None:
                for turn in range(10_000):
                    if done.is_set():
                        return
                    prompt = PROMPTS[(worker + turn) % len(PROMPTS)]
                    try:
                        tokens = [t async for piece in client.generate(prompt, max_tokens=16) for t in piece.token_ids]
                        outcomes.append(tokens == references[prompt])
                    except OverFillError as e:
                        failures.append(e)

            streams = [asyncio.create_task(stream_forever(worker)) for worker in range(8)]
            await asyncio.sleep(1.0)
            await asyncio.to_thread(start_service, config, serve_file=upgrade,  # returns once deployed
                                    import_path=CHAOS_IMPORT_PATH)
            assert await asyncio.to_thread(wait_for, upgraded, 120)
            await asyncio.sleep(1.0)
            done.set()
            await asyncio.gather(*streams)
        return outcomes, failures

    outcomes, failures = asyncio.run(run())
    assert failures == [] and len(outcomes) >= 16 and all(outcomes)
    assert set(replica_actors(app, "router")) == before["router"]  # untouched: only the pools were redeployed
    details = _get_global_client().get_serve_details()["applications"][app]["deployments"]
    assert details["decode"]["deployment_config"]["graceful_shutdown_timeout_s"] == 25  # decode's config field
    assert_no_kv_anywhere(config)


def test_metrics_account_for_every_fault_and_show_no_kv_held(service):
    config, app, earlier = service["config"], service["app"], service["earlier_replicas"]

    def settled() -> bool:
        samples = scrape(config)
        live_prefill, live_decode = set(replica_stats(app, "prefill")), set(replica_stats(app, "decode"))
        leases = metric(samples, "ray_overfill_kv_leases")
        usage = metric(samples, "ray_overfill_kv_cache_usage_perc", role="decode")
        statuses = {code: sum(metric(samples, "ray_overfill_requests_total", exclude=earlier, status=code).values())
                    for code in ("UNAVAILABLE", "ABORTED", "DEADLINE_EXCEEDED")}
        return (sum(metric(samples, "ray_overfill_requests_migrated_total", exclude=earlier).values()) >= 2
                and statuses["UNAVAILABLE"] >= 3 and statuses["ABORTED"] >= 1 and statuses["DEADLINE_EXCEEDED"] >= 1
                and live_prefill <= set(leases) and all(leases[r] == 0 for r in live_prefill)
                and live_decode <= set(usage) and all(usage[r] == 0 for r in live_decode))

    assert wait_for(settled, timeout_s=60)
