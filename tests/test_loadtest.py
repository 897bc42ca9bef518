"""The load generator's pure parts, no server: vLLM's metrics on hand-computed traces, arrival statistics, datasets,
result JSON keys, the sweep's rate choice, the Locust timing and the CLI's flag checks."""

import json
import math

import grpc
import numpy as np
import pytest

from loadtest.arrivals import RampUp, Stage, parse_stages, send_times, stage_send_times
from loadtest.datasets import RandomSpec, jsonl_requests, random_requests, usable_token_ids
from loadtest.metrics import compute_metrics, parse_goodput, parse_percentiles, percentile_key
from loadtest.records import RequestRecord
from loadtest.result import build_result, format_table, result_filename
from loadtest.runner import RunOutput, TimeSample
from loadtest.stream_timing import E2E_NAME, TTFT_NAME, time_stream
from loadtest.sweep import max_rate_meeting_slo
from overfill.cli.main import main

# ---- metrics on hand-computed traces ---------------------------------------------------------------------------


def record(index, send, chunks, status="OK", prompt_len=10):
    """chunks: [(arrival time, tokens in the message), ...]"""
    r = RequestRecord(index, f"r{index}", prompt_len, 16, scheduled_s=send, send_s=send, status=status,
                      error="" if status == "OK" else "refused")
    r.chunk_times_s = [t for t, _ in chunks]
    r.chunk_tokens = [n for _, n in chunks]
    return r


def trace():
    return [
        # A: 6 tokens in 4 chunks (2-token chunks in the middle): TTFT 100, E2EL 300, TPOT 200/5 = 40, ITLs 50 100 50.
        record(0, 0.0, [(0.100, 1), (0.150, 2), (0.250, 2), (0.300, 1)], prompt_len=10),
        # B: 3 tokens one per chunk: TTFT 200, E2EL 400, TPOT 100, ITLs 100 100.
        record(1, 1.0, [(1.2, 1), (1.3, 1), (1.4, 1)], prompt_len=20),
        # C: one token: TTFT 50, E2EL 50, no TPOT (0 for goodput), no ITL.
        record(2, 2.0, [(2.05, 1)], prompt_len=30),
        # D: refused; E: streamed a little, then its deadline passed. Both are left out of every latency.
        record(3, 0.5, [], status="RESOURCE_EXHAUSTED"),
        record(4, 0.6, [(0.7, 1), (3.9, 5)], status="DEADLINE_EXCEEDED"),
    ]


def test_metrics_match_hand_computed_values_and_itl_differs_from_tpot():
    m = compute_metrics(trace(), duration_s=4.0, percentiles=[50.0, 99.0], input_lens={0: 11})
    assert (m.completed, m.failed) == (3, 2)
    assert m.errors_by_code == {"DEADLINE_EXCEEDED": 1, "RESOURCE_EXHAUSTED": 1}
    assert (m.total_input, m.total_output) == (11 + 20 + 30, 6 + 3 + 1)  # the service's count wins for request 0
    assert m.request_throughput == pytest.approx(3 / 4)
    assert m.output_throughput == pytest.approx(10 / 4)
    assert m.total_token_throughput == pytest.approx(71 / 4)
    ttft, tpot, itl, e2el = (m.latency[k] for k in ("ttft", "tpot", "itl", "e2el"))
    assert ttft.mean_ms == pytest.approx(350 / 3) and ttft.median_ms == pytest.approx(100)
    assert ttft.std_ms == pytest.approx(math.sqrt(35000 / 9))            # population std, as numpy/vLLM
    assert ttft.percentiles_ms[99.0] == pytest.approx(100 + 0.98 * 100)  # linear between 100 and 200
    assert tpot.mean_ms == pytest.approx(70) and tpot.percentiles_ms[50.0] == pytest.approx(70)
    assert itl.mean_ms == pytest.approx(80) and itl.median_ms == pytest.approx(100)  # pooled: 50 100 50 100 100
    assert e2el.mean_ms == pytest.approx(250) and e2el.median_ms == pytest.approx(300)
    # Request A alone: ITL (gaps between chunks) and TPOT (per token) differ when chunks carry several tokens.
    a = trace()[0]
    assert np.mean(a.itls_s) * 1000 == pytest.approx(200 / 3) and a.tpot_s * 1000 == pytest.approx(40)
    assert m.request_goodput is None and m.slo_attainment_pct is None
    assert (m.max_output_tokens_per_s, m.max_concurrent_requests) == (6.0, 1)


def test_goodput_counts_requests_meeting_every_slo_and_failures_miss():
    m = compute_metrics(trace(), 4.0, [99.0], parse_goodput(["ttft:150", "tpot:50"]))
    assert m.good == 2                                   # A (100, 40) and C (50, TPOT 0); B misses TTFT
    assert m.request_goodput == pytest.approx(2 / 4)
    assert m.slo_attainment_pct == pytest.approx(100 * 2 / 5)  # failed requests count as misses
    assert compute_metrics(trace(), 4.0, [99.0], {"e2el": 100.0}).good == 1  # only C
    assert compute_metrics(trace(), 4.0, [99.0], {"tpot": 50.0}).good == 2   # A and C (B's TPOT is 100)


def test_no_successful_request_gives_zeros_like_vllm():
    m = compute_metrics(trace()[3:], 2.0, [99.0], {"ttft": 100.0})
    assert m.completed == 0 and m.failed == 2 and m.latency["ttft"].mean_ms == 0.0
    assert m.slo_attainment_pct == 0.0 and m.max_output_tokens_per_s == 0.0


@pytest.mark.parametrize("pairs, field", [
    (["ttft"], "NAME:MS"), (["itl:5"], "unknown metric 'itl'"), (["ttft:abc"], "not a number"),
    (["ttft:-1"], ">= 0"),
])
def test_goodput_errors_name_the_flag(pairs, field):
    with pytest.raises(ValueError, match="--goodput") as e:
        parse_goodput(pairs)
    assert field in str(e.value)


def test_percentiles_and_their_key_names():
    assert parse_percentiles("50,90,99.9") == [50.0, 90.0, 99.9]
    assert [percentile_key(p) for p in (50.0, 99.0, 99.9)] == ["p50", "p99", "p99.9"]
    with pytest.raises(ValueError, match="--metric-percentiles"):
        parse_percentiles("50,101")


# ---- arrivals -------------------------------------------------------------------------------------------------


def cv2(x):
    return np.var(x) / np.mean(x) ** 2


@pytest.mark.parametrize("burstiness, tolerance", [(1.0, 0.05), (0.5, 0.1), (4.0, 0.05)])
def test_gamma_arrivals_have_the_rate_and_burstiness_asked_for(burstiness, tolerance):
    n, rate = 20000, 8.0
    times = send_times(n, rate, burstiness, seed=3)
    gaps = np.diff(np.concatenate([[0.0], times]))
    assert np.all(gaps >= 0)
    assert n / times[-1] == pytest.approx(rate, rel=1e-9)             # rescaled like vLLM: last send at n / rate
    assert 1 / np.mean(gaps[: n // 2]) == pytest.approx(rate, rel=0.03)  # and the rate holds along the way
    assert 1 / cv2(gaps) == pytest.approx(burstiness, rel=tolerance)   # burstiness = 1 / CV^2 of the gaps


def test_infinite_rate_sends_everything_at_once_and_infinite_burstiness_is_regular():
    assert np.all(send_times(50, math.inf) == 0.0)
    gaps = np.diff(send_times(100, 4.0, math.inf))
    assert np.allclose(gaps, 0.25)


def test_arrivals_are_deterministic_per_seed():
    assert np.array_equal(send_times(100, 5.0, 0.7, seed=1), send_times(100, 5.0, 0.7, seed=1))
    assert not np.array_equal(send_times(100, 5.0, 0.7, seed=1), send_times(100, 5.0, 0.7, seed=2))


@pytest.mark.parametrize("strategy", ["linear", "exponential"])
def test_ramp_up_follows_its_shape(strategy):
    n, ramp = 20000, RampUp(strategy, 2.0, 50.0)
    rates = np.array([ramp.rate_at(i, n) for i in range(n)])
    assert rates[0] == pytest.approx(2.0) and rates[-1] == pytest.approx(50.0)
    middle = 26.0 if strategy == "linear" else 10.0                    # arithmetic vs geometric mean of 2 and 50
    assert ramp.rate_at(1, 3) == pytest.approx(middle)                 # halfway
    times = send_times(n, burstiness=1.0, ramp_up=ramp, seed=0)
    gaps = np.diff(np.concatenate([[0.0], times]))
    for block in (slice(0, 2000), slice(9000, 11000), slice(n - 2000, n)):  # local gaps follow the local rate
        assert np.mean(gaps[block]) == pytest.approx(np.mean(1 / rates[block]), rel=0.06)
    assert times[-1] == pytest.approx(np.sum(1 / rates), rel=0.03)      # no rescaling under a ramp


def test_ramp_up_and_rate_errors_name_the_flag():
    with pytest.raises(ValueError, match="--ramp-up-start-rps"):
        RampUp("linear", 0.0, 5.0)
    with pytest.raises(ValueError, match="must not exceed --ramp-up-end-rps"):
        RampUp("linear", 6.0, 5.0)
    with pytest.raises(ValueError, match="--ramp-up-strategy"):
        RampUp("cubic", 1.0, 5.0)
    with pytest.raises(ValueError, match="--burstiness"):
        send_times(10, 1.0, 0.0)
    with pytest.raises(ValueError, match="--request-rate"):
        send_times(10, -1.0)


def test_step_stages_send_at_their_rates_and_idle_stages_send_nothing():
    stages = [Stage(50.0, 100.0), Stage(0.0, 10.0), Stage(200.0, 50.0)]
    times, ids = stage_send_times(stages, seed=5)
    assert np.all(np.diff(times) >= 0)
    counts = np.bincount(ids, minlength=3)
    assert counts[0] == pytest.approx(5000, rel=0.04) and counts[1] == 0 and counts[2] == pytest.approx(10000, rel=0.03)
    assert times[ids == 0].max() < 100 and times[ids == 2].min() >= 110 and times[ids == 2].max() < 160
    same, _ = stage_send_times(stages, seed=5)
    assert np.array_equal(times, same)


@pytest.mark.parametrize("stages, field", [
    ([], "non-empty"), ([{"rate": 1}], "--stages[0]"), ([{"rate": 1, "duration": 1}, {"rate": -1, "duration": 1}],
                                                         "--stages[1].rate"),
    ([{"rate": 1, "duration": 0}], "--stages[0].duration"), ([{"rate": "2", "duration": 1}], "--stages[0].rate"),
])
def test_stage_errors_name_the_stage(stages, field):
    with pytest.raises(ValueError) as e:
        parse_stages(stages)
    assert field in str(e.value)


# ---- datasets -------------------------------------------------------------------------------------------------


def test_random_prompts_with_a_tokenizer_have_the_drawn_token_lengths():
    from tests.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    spec = RandomSpec(input_len=24, output_len=8, range_ratio=0.5)
    requests = random_requests(40, spec, tokenizer, seed=2)
    drawn = spec.lengths(24, 40, np.random.default_rng(2))               # the same first draw as the dataset
    for request, length in zip(requests, drawn):
        assert len(tokenizer(request.prompt, add_special_tokens=False)["input_ids"]) == request.prompt_len == length
        assert 4 <= request.max_tokens <= 12 and request.messages is None
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    assert not special & set(usable_token_ids(tokenizer).tolist())
    assert random_requests(40, spec, tokenizer, seed=2) == requests      # seeded


def test_random_prompts_without_a_tokenizer_are_words_of_the_drawn_count():
    requests = random_requests(30, RandomSpec(16, 4, 0.0), None, seed=0)
    assert all(len(r.prompt.split()) == r.prompt_len == 16 and r.max_tokens == 4 for r in requests)
    with pytest.raises(ValueError, match="--random-range-ratio"):
        RandomSpec(16, 4, 1.0)


def test_jsonl_dataset_reads_messages_and_prompts_with_their_max_tokens(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi there"}], "max_tokens": 5}) + "\n\n"
                    + json.dumps({"prompt": "raw text prompt"}) + "\n")
    requests = jsonl_requests(path, 5, default_max_tokens=7, seed=0)
    assert len(requests) == 5
    chats = [r for r in requests if r.messages]
    raws = [r for r in requests if r.prompt]
    assert chats and raws and all(r.max_tokens == 5 for r in chats) and all(r.max_tokens == 7 for r in raws)
    assert chats[0].messages == ({"role": "user", "content": "hi there"},) and raws[0].prompt_len == 3
    path.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": "x", "messages": []}) + "\n")
    with pytest.raises(ValueError, match=r"data.jsonl:2: expected exactly one of"):
        jsonl_requests(path, 1)


# ---- result JSON ----------------------------------------------------------------------------------------------

VLLM_KEYS = {
    "date", "backend", "label", "model_id", "tokenizer_id", "num_prompts", "request_rate", "burstiness",
    "max_concurrency", "duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
    "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
    "max_output_tokens_per_s", "max_concurrent_requests",
    *(f"{stat}_{m}_ms" for stat in ("mean", "median", "std", "p99") for m in ("ttft", "tpot", "itl", "e2el")),
}
DETAILED_KEYS = {"input_lens", "output_lens", "ttfts", "itls", "errors"}


def a_result(save_detailed: bool):
    from datetime import datetime

    records = trace()
    run = RunOutput(records, 4.0, datetime(2026, 1, 2, 3, 4, 5),
                    [TimeSample(1.0, 2, 5.0, 1.0, 1.0, 0.0, {"decode": 2, "prefill": 1})], {0: 11})
    metrics = compute_metrics(records, 4.0, [50.0, 99.0, 99.9], {"ttft": 150.0}, run.prompt_tokens)
    setup = {"label": None, "model_id": "/models/smollm2", "tokenizer_id": None, "num_prompts": 5,
             "request_rate": math.inf, "burstiness": 1.0, "max_concurrency": 4,
             "metric_percentiles": [50.0, 99.0, 99.9]}
    return build_result(setup, metrics, run, save_detailed)


def test_result_has_vllms_flat_keys_and_ours():
    result = json.loads(json.dumps(a_result(save_detailed=False)))       # plain JSON all the way
    assert VLLM_KEYS <= set(result)
    assert {"p50_ttft_ms", "p99.9_itl_ms", "schema_version", "errors_by_code", "slo_attainment_pct",
            "time_series"} <= set(result)
    assert not DETAILED_KEYS & set(result)
    assert result["request_rate"] == "inf" and result["backend"] == "overfill-grpc"
    assert result["errors_by_code"] == {"DEADLINE_EXCEEDED": 1, "RESOURCE_EXHAUSTED": 1}
    assert result["time_series"][0]["replicas"] == {"decode": 2, "prefill": 1}
    assert result_filename(result) == "overfill-grpc-infqps-concurrency4-smollm2-20260102-030405.json"
    table = format_table(result)
    assert "Serving Benchmark Result" in table and "P99.9 ITL (ms):" in table and "RESOURCE_EXHAUSTED:" in table


def test_detailed_result_lists_every_request():
    result = a_result(save_detailed=True)
    assert DETAILED_KEYS <= set(result)
    assert result["input_lens"] == [11, 20, 30, 10, 10] and result["output_lens"] == [6, 3, 1, 0, 0]
    assert result["ttfts"][1] == pytest.approx(0.2) and result["ttfts"][3] == 0.0
    assert result["itls"][1] == pytest.approx([0.1, 0.1]) and result["itls"][4] == []
    assert result["errors"][:3] == ["", "", ""] and result["errors"][3].startswith("RESOURCE_EXHAUSTED")


# ---- sweep ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("points, expected", [
    ([(8, 60.0), (1, 100.0), (4, 91.0), (2, 95.0)], (4, 8)),   # any order in
    ([(1, 100.0), (2, 90.0), (4, 89.9)], (2, 4)),              # exactly 90% meets it
    ([(1, 100.0), (2, 80.0), (4, 95.0)], (1, 2)),              # a pass above a miss does not count
    ([(1, 50.0), (2, 95.0)], (None, 1)),
    ([(1, 99.0), (2, 98.0)], (2, None)),
])
def test_sweep_picks_the_highest_rate_below_the_first_miss(points, expected):
    assert max_rate_meeting_slo(points, 90.0) == expected


# ---- Locust timing --------------------------------------------------------------------------------------------


class Message:
    def __init__(self, n):
        self.token_ids = [1] * n


class FakeRpcError(grpc.RpcError):
    pass


def clock(*ticks):
    it = iter(ticks)
    return lambda: next(it)


def test_stream_timing_reports_ttft_and_e2e_as_two_locust_entries():
    timing = time_stream(lambda: iter([Message(1), Message(0), Message(3)]), clock(10.0, 10.2, 10.9))
    assert timing.ttft_ms == pytest.approx(200) and timing.e2e_ms == pytest.approx(900)
    assert timing.output_tokens == 4 and timing.error is None
    ttft, e2e = timing.events()
    assert (ttft["name"], ttft["request_type"], ttft["response_time"]) == (TTFT_NAME, "grpc", pytest.approx(200))
    assert (e2e["name"], e2e["response_time"], e2e["response_length"]) == (E2E_NAME, pytest.approx(900), 4)


def test_stream_timing_reports_failures_on_both_entries():
    def failing():
        yield Message(1)
        raise FakeRpcError("deadline")

    timing = time_stream(failing, clock(0.0, 0.1, 0.5))
    assert isinstance(timing.error, FakeRpcError) and timing.ttft_ms == pytest.approx(100)
    assert timing.e2e_ms == pytest.approx(500)
    assert all(event["exception"] is timing.error for event in timing.events())
    empty = time_stream(lambda: iter([Message(0)]), clock(0.0, 0.3))
    assert empty.ttft_ms is None and empty.error is not None and empty.events()[0]["response_time"] == 300


# ---- the OpenAI-compatible HTTP backend's reading of events and errors -------------------------------------------


@pytest.mark.parametrize("http_status, body, status", [
    (400, {"error": {"message": "m", "code": "invalid_argument"}}, "INVALID_ARGUMENT"),
    (400, {"error": {"message": "m", "code": "context_length_exceeded"}}, "RESOURCE_EXHAUSTED"),  # as on gRPC
    (401, {"error": {"message": "m", "code": "invalid_api_key"}}, "UNAUTHENTICATED"),
    (200, {"error": {"message": "m", "code": "unavailable"}}, "UNAVAILABLE"),  # an error event mid-stream
    (429, {"error": {"message": "m", "code": None}}, "RESOURCE_EXHAUSTED"),  # another server: from the HTTP status
    (504, "not json we could read", "DEADLINE_EXCEEDED"),
    (502, {}, "HTTP_502"),
])
def test_openai_errors_are_recorded_under_the_grpc_status_names(http_status, body, status):
    from loadtest.openai_client import status_of_error

    assert status_of_error(http_status, body)[0] == status


def test_openai_chunks_carry_text_from_chat_deltas_and_text_completions_only():
    from loadtest.openai_client import chunk_text

    assert chunk_text({"choices": [{"delta": {"role": "assistant", "content": "Hi"}}]}) == "Hi"
    assert chunk_text({"choices": [{"text": " there", "finish_reason": None}]}) == " there"
    assert chunk_text({"choices": [{"delta": {}, "finish_reason": "stop"}]}) == ""
    assert chunk_text({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}) == ""


# ---- command line ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["loadtest", "--num-prompts", "3"], "needs --target"),
    (["loadtest", "--target", "h:1", "--rates", "1,2"], "--rates is for"),
    (["loadtest", "step", "--target", "h:1", "--window-s", "0"], "step needs --stages"),
    (["loadtest", "step", "--target", "h:1", "--stages", "[{"], "--stages is not valid JSON"),
    (["loadtest", "sweep", "--target", "h:1", "--rates", "1,x"], "--rates takes"),
    (["loadtest", "sweep", "--target", "h:1", "--rates", "1,2"], "sweep needs --goodput"),
    (["loadtest", "--target", "nohost", "--request-rate", "2"], "--target must be HOST:PORT"),
    (["loadtest", "--target", "h:1", "--request-rate", "2", "--ramp-up-strategy", "linear",
      "--ramp-up-start-rps", "1", "--ramp-up-end-rps", "4"], "exclude each other"),
    (["loadtest", "--target", "h:1", "--ramp-up-strategy", "linear"], "needs both"),
    (["loadtest", "client-capacity", "--target", "h:1"], "--target is not used"),
    (["loadtest", "step", "--target", "h:1", "--num-prompts", "5"], "--num-prompts is for `overfill loadtest run"),
    (["loadtest", "sweep", "--target", "h:1", "--request-rate", "5"], "--request-rate is for"),
    (["loadtest", "client-capacity", "--backend", "openai"], "--backend is for"),
])
def test_cli_errors_name_the_flag(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
