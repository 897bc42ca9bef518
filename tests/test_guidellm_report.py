"""loadtest/guidellm_report.py on a small report shaped like guidellm 0.8.1's (trimmed from a real run of
runs/guidellm.sh: the keys it reads, a few requests' worth of numbers), and `overfill loadtest` results. guidellm
itself is not needed."""

import json
import math

import pytest

from loadtest.guidellm_report import (
    comparison,
    compare_figures,
    format_table,
    guidellm_benchmarks,
    guidellm_figures,
    load_shape,
    loadtest_figures,
    main,
    pooled,
    run_to_run_se,
)


def distribution(mean, median, std_dev, count):
    """One of guidellm's metric distributions, as it stores them per request status."""
    return {"mean": mean, "median": median, "std_dev": std_dev, "count": count, "total_sum": mean * count}


def benchmark(strategy, completed=24, errored=0, incomplete=0, duration=20.0, ttft=(500.0, 480.0, 100.0),
              itl=(60.0, 59.0, 5.0), latency_s=(4.3, 4.2, 0.43), output_tokens=64.0, prompt="a b c d"):
    """A guidellm benchmark entry: `ttft` and `itl` are (mean, median, std) in ms, `latency_s` in seconds."""
    total = completed + errored + incomplete
    metrics = {
        "request_totals": {"successful": completed, "errored": errored, "incomplete": incomplete, "total": total},
        "requests_per_second": {"successful": distribution(completed / duration, 1.0, 0.5, completed)},
        "output_tokens_per_second": {"successful": distribution(completed * output_tokens / duration, 11.3, 190.0,
                                                                int(completed * output_tokens))},
        "output_token_count": {"successful": distribution(output_tokens, output_tokens, 0.0, completed)},
        "time_to_first_token_ms": {"successful": distribution(*ttft, completed)},
        # guidellm weights the inter-token latency by each request's tokens after the first
        "inter_token_latency_ms": {"successful": distribution(*itl, int(completed * (output_tokens - 1)))},
        "request_latency": {"successful": distribution(*latency_s, completed)},
    }
    body = {"model": "smollm2-135m", "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 64,
            "prompt": prompt}
    request = {"request_args": json.dumps({"method": None, "stream": True, "body": body}), "output_tokens": 64}
    return {"type_": "generative_benchmark", "config": {"strategy": strategy}, "metrics": metrics,
            "requests": {"successful": [request], "errored": [], "incomplete": []}, "duration": duration}


SYNCHRONOUS = {"type_": "synchronous", "worker_count": 1, "max_concurrency": 1}
THROUGHPUT = {"type_": "throughput", "worker_count": 1, "max_concurrency": 12, "rampup_duration": 0.0}
CONSTANT = {"type_": "constant", "worker_count": 1, "max_concurrency": 12, "rate": 0.6377345069813543,
            "rampup_duration": 0.0}


def report(*benchmarks):
    spec = {"profile": {"kind": "sweep", "sweep_size": 4, "strategy_type": "constant", "max_concurrency": 12},
            "constraints": [{"kind": "max_requests", "stopping_scope": "current", "count": 24}],
            "data": [{"kind": "synthetic_text", "prompt_tokens": 128, "output_tokens": None, "branches": [],
                      "turns": 1}]}
    return {"metadata": {"version": 2, "guidellm_version": "0.8.1"}, "config": {"metadata": {}, "spec": spec},
            "benchmarks": list(benchmarks), "conclusions": []}


def loadtest_result(completed=24, failed=0, duration=20.0, output_tokens=64, ttft=(500.0, 480.0, 100.0),
                    tpot=(60.0, 59.0, 5.0), e2el=(4300.0, 4200.0, 430.0)):
    """`overfill loadtest`'s flat result (vLLM's keys) with only what the comparison reads, plus its settings."""
    result = {"backend": "overfill-openai", "dataset": "random", "random_input_len": 128, "random_output_len": 64,
              "random_range_ratio": 0.0, "token_source": "tokenizer", "seed": 0, "num_warmups": 0,
              "completed": completed, "failed": failed, "duration": duration,
              "total_output_tokens": completed * output_tokens, "request_throughput": completed / duration,
              "output_throughput": completed * output_tokens / duration}
    for name, (mean, median, std) in (("ttft", ttft), ("tpot", tpot), ("e2el", e2el)):
        result |= {f"mean_{name}_ms": mean, f"median_{name}_ms": median, f"std_{name}_ms": std}
    return result


# ---- load shapes -------------------------------------------------------------------------------------------------


def test_each_guidellm_strategy_becomes_the_same_load_in_loadtest_flags():
    shape = load_shape(benchmark(SYNCHRONOUS))
    assert shape.label == "synchronous"
    assert shape.loadtest_args() == ["--num-prompts", "24", "--request-rate", "inf", "--max-concurrency", "1"]

    shape = load_shape(benchmark(THROUGHPUT, completed=20, errored=3, incomplete=1))
    assert shape.label == "throughput@12"
    assert shape.loadtest_args() == ["--num-prompts", "24", "--request-rate", "inf", "--max-concurrency", "12"]

    # guidellm's constant rate sends at fixed gaps: gamma shape inf in loadtest's terms
    shape = load_shape(benchmark(CONSTANT))
    assert shape.label == "constant@0.64"
    assert shape.loadtest_args() == ["--num-prompts", "24", "--request-rate", "0.637735", "--burstiness", "inf",
                                     "--max-concurrency", "12"]

    poisson = {"type_": "poisson", "max_concurrency": None, "rate": 2.0, "random_seed": 42}
    assert load_shape(benchmark(poisson)).loadtest_args() == ["--num-prompts", "24", "--request-rate", "2",
                                                              "--burstiness", "1"]
    concurrent = {"type_": "concurrent", "streams": 4, "max_concurrency": 4}
    assert load_shape(benchmark(concurrent)).loadtest_args()[-2:] == ["--max-concurrency", "4"]


def test_a_strategy_without_a_loadtest_equivalent_is_refused_by_name():
    with pytest.raises(ValueError, match="'trace'"):
        load_shape(benchmark({"type_": "trace", "time_scale": 1.0}))
    with pytest.raises(ValueError, match="no benchmark"):
        guidellm_benchmarks(report())


# ---- figures -----------------------------------------------------------------------------------------------------


def test_guidellm_figures_come_from_the_successful_requests_distributions():
    figures = guidellm_figures(benchmark(THROUGHPUT, completed=20, errored=3, incomplete=1, duration=16.0,
                                         ttft=(3185.0, 3100.0, 900.0), itl=(74.1, 73.0, 6.0),
                                         latency_s=(7.9, 7.8, 0.9), output_tokens=63.5))
    assert figures.completed == 20 and figures.failed == 4
    assert figures.requests_per_s == pytest.approx(20 / 16.0)
    assert figures.output_tokens_per_s == pytest.approx(20 * 63.5 / 16.0)
    assert figures.output_tokens_per_request == 63.5
    assert (figures.ttft_mean_ms, figures.ttft_median_ms, figures.ttft_std_ms) == (3185.0, 3100.0, 900.0)
    assert (figures.tpot_mean_ms, figures.tpot_std_ms) == (74.1, 6.0)        # guidellm's ITL is vLLM's TPOT
    assert (figures.e2el_mean_ms, figures.e2el_std_ms) == pytest.approx((7900.0, 900.0))   # seconds -> ms


def test_loadtest_figures_come_from_the_flat_result():
    figures = loadtest_figures(loadtest_result(completed=10, failed=2, duration=5.0, output_tokens=60))
    assert (figures.completed, figures.failed) == (10, 2)
    assert figures.requests_per_s == 2.0 and figures.output_tokens_per_s == 120.0
    assert figures.output_tokens_per_request == 60.0
    assert (figures.tpot_mean_ms, figures.e2el_std_ms) == (60.0, 430.0)


def test_loadtest_throughput_is_taken_over_guidellm_s_window_when_the_run_saved_its_requests():
    # At a rate, loadtest's first request leaves one gap after the run starts (vLLM's schedule) and its `duration`
    # counts from the start: 3 requests, 1 s apart from t=1 s, each 0.5 s to its first token and 0.3 s after it.
    result = loadtest_result(completed=3, failed=1, duration=3.8, output_tokens=4)
    result |= {"send_times": [1.0, 2.0, 3.0, 3.5], "ttfts": [0.5, 0.5, 0.5, 0.0],
               "itls": [[0.1, 0.1, 0.1]] * 3 + [[]], "errors": ["", "", "", "UNAVAILABLE: replica died"]}
    figures = loadtest_figures(result)
    assert figures.duration_s == pytest.approx(2.8)               # 1.0 -> 3.8: the failed request is not counted
    assert figures.requests_per_s == pytest.approx(3 / 2.8)       # the result's own: 3 / 3.8
    assert figures.output_tokens_per_s == pytest.approx(12 / 2.8)
    del result["send_times"]
    assert loadtest_figures(result).requests_per_s == pytest.approx(3 / 3.8)


# ---- the comparison ----------------------------------------------------------------------------------------------


def rows_by_metric(rows):
    return {row["metric"]: row for row in rows}


def test_a_gap_within_two_standard_errors_is_noise_and_a_larger_one_is_not():
    # TTFT: std 100 ms over 25 requests each side: the difference's standard error is sqrt(400 + 400) = 28.3 ms.
    g = guidellm_figures(benchmark(SYNCHRONOUS, completed=25, ttft=(540.0, 530.0, 100.0)))
    near = rows_by_metric(compare_figures(g, [loadtest_figures(loadtest_result(completed=25,
                                                                               ttft=(500.0, 500.0, 100.0)))]))
    assert near["ttft_mean_ms"]["per_request_se"] == pytest.approx(math.sqrt(800))
    assert near["ttft_mean_ms"]["z"] == pytest.approx(40 / math.sqrt(800))
    assert near["ttft_mean_ms"]["ratio"] == pytest.approx(1.08)
    assert near["ttft_mean_ms"]["within_noise"]
    # the median's error is sqrt(pi/2) times the mean's: 30 ms apart is 0.85 of its 35.4 ms
    assert near["ttft_median_ms"]["z"] == pytest.approx(30 / (math.sqrt(math.pi / 2) * math.sqrt(800)))

    far = rows_by_metric(compare_figures(g, [loadtest_figures(loadtest_result(completed=25,
                                                                              ttft=(380.0, 380.0, 100.0)))]))
    assert far["ttft_mean_ms"]["z"] == pytest.approx(160 / math.sqrt(800))
    assert not far["ttft_mean_ms"]["within_noise"]


def test_throughput_noise_is_relative_to_the_end_to_end_latency_spread():
    # e2el relative spread 0.1 on both sides, 25 requests: relative error sqrt(2 * 0.01 / 25) = 0.0283 of the rate.
    g = guidellm_figures(benchmark(THROUGHPUT, completed=25, duration=20.0, latency_s=(4.0, 4.0, 0.4)))
    lt = loadtest_figures(loadtest_result(completed=25, duration=25.0, e2el=(4000.0, 4000.0, 400.0)))
    row = rows_by_metric(compare_figures(g, [lt]))["requests_per_s"]
    mean_rate = (25 / 20.0 + 25 / 25.0) / 2
    assert row["per_request_se"] == pytest.approx(math.sqrt(2 * 0.01 / 25) * mean_rate)
    assert row["ratio"] == pytest.approx(1.25)
    assert not row["within_noise"]       # 25% apart is 4.4 standard errors


def test_passes_pool_into_one_run_and_their_spread_widens_the_noise():
    runs = [loadtest_figures(loadtest_result(completed=24, duration=20.0, ttft=(500.0, 480.0, 90.0))),
            loadtest_figures(loadtest_result(completed=20, duration=25.0, ttft=(700.0, 680.0, 120.0)))]
    both = pooled(runs)
    assert both.completed == 44
    assert both.ttft_mean_ms == 600.0 and both.ttft_median_ms == 580.0
    assert both.ttft_std_ms == pytest.approx(math.sqrt((90.0 ** 2 + 120.0 ** 2) / 2))   # still one run's spread
    assert both.requests_per_s == pytest.approx((24 / 20.0 + 20 / 25.0) / 2)

    # two passes 200 ms apart: s = 141 ms, and one run of either tool against their mean: s * sqrt(1 + 1/2)
    assert run_to_run_se([500.0, 700.0]) == pytest.approx(math.sqrt(20000) * math.sqrt(1.5))
    assert run_to_run_se([500.0]) is None

    # guidellm at 780 ms: 5.6 per-request standard errors from 600 ms, but 0.95 of the passes' spread: noise
    g = guidellm_figures(benchmark(SYNCHRONOUS, ttft=(780.0, 760.0, 100.0)))
    row = rows_by_metric(compare_figures(g, runs))["ttft_mean_ms"]
    assert row["per_request_se"] < row["run_to_run_se"]
    assert row["z"] == pytest.approx(180.0 / (math.sqrt(20000) * math.sqrt(1.5)))
    assert row["within_noise"] and row["loadtest_passes"] == [500.0, 700.0]
    alone = rows_by_metric(compare_figures(g, runs[:1]))["ttft_mean_ms"]
    assert alone["run_to_run_se"] is None and not alone["within_noise"]


def test_different_output_lengths_are_flagged_not_averaged_away():
    g = guidellm_figures(benchmark(SYNCHRONOUS, output_tokens=64.0))
    same = rows_by_metric(compare_figures(g, [loadtest_figures(loadtest_result(output_tokens=64))]))
    assert same["output_tokens_per_request"]["within_noise"] and same["output_tokens_per_request"]["z"] is None
    shorter = rows_by_metric(compare_figures(g, [loadtest_figures(loadtest_result(output_tokens=50))]))
    assert not shorter["output_tokens_per_request"]["within_noise"]


def test_comparison_pairs_benchmarks_by_index_and_records_what_was_sent():
    guidellm = report(benchmark(SYNCHRONOUS), benchmark(THROUGHPUT), benchmark(CONSTANT))
    result = comparison(guidellm, {0: [loadtest_result()], 2: [loadtest_result(ttft=(900.0, 900.0, 100.0))]})
    assert [p["shape"]["label"] for p in result["points"]] == ["synchronous", "constant@0.64"]
    assert result["points"][1]["loadtest_args"][:4] == ["--num-prompts", "24", "--request-rate", "0.637735"]
    assert not result["all_within_noise"]                      # constant@0.64: TTFT 500 against 900
    assert result["guidellm_version"] == "0.8.1"
    settings = result["guidellm_settings"]
    assert settings["request_body"]["prompt"] == "<7 characters>"        # the prompt is not kept, its size is
    assert "continuous_usage_stats" not in settings["request_body"]["stream_options"]
    assert settings["data"] == [{"kind": "synthetic_text", "prompt_tokens": 128, "turns": 1}]
    assert result["loadtest_settings"]["token_source"] == "tokenizer"
    table = format_table(result)
    assert "| synchronous (24 / 24) | output tok/s | 76.8 | 76.8 | 76.8 | 1 | 0 | yes |" in table
    assert "some figures differ beyond noise" in table
    with pytest.raises(ValueError, match="no guidellm benchmark has a loadtest result"):
        comparison(guidellm, {})


def test_command_line_prints_shapes_then_compares_files(tmp_path, capsys):
    path = tmp_path / "guidellm.json"
    path.write_text(json.dumps(report(benchmark(SYNCHRONOUS), benchmark(THROUGHPUT))))
    assert main(["shapes", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "0\t--num-prompts 24 --request-rate inf --max-concurrency 1",
        "1\t--num-prompts 24 --request-rate inf --max-concurrency 12"]

    for index in (0, 1):
        for number in (1, 2):           # two loadtest passes, read in pass order whatever the file system's
            ttft = (500.0, 480.0, 100.0) if number == 1 else (540.0, 520.0, 100.0)
            (tmp_path / f"loadtest-{index}-{number}.json").write_text(json.dumps(loadtest_result(ttft=ttft)))
    out = tmp_path / "bench" / "comparison.json"
    assert main(["compare", str(path), "--loadtest-dir", str(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| throughput@12 (24 / 24 + 24) | output tok/s |" in printed
    assert "|  | TTFT mean ms | 500.0 | 520.0 | 500.0, 540.0 |" in printed
    assert "every figure within noise" in printed
    saved = json.loads(out.read_text())
    assert saved["all_within_noise"] and len(saved["points"]) == 2
    assert saved["points"][1]["guidellm"]["ttft_mean_ms"] == 500.0
    assert [run["ttft_mean_ms"] for run in saved["points"][1]["loadtest_passes"]] == [500.0, 540.0]
    assert saved["points"][1]["loadtest_reported"][0] == {"duration": 20.0, "request_throughput": 1.2,
                                                          "output_throughput": 76.8}
