"""`overfill bench prefill-memory` on a tiny model: both variants run in their own process over the same requests,
and the table, JSON and plot come out."""

import json

import pytest

from overfill.bench.prefill_memory import PrefillMemorySpec
from overfill.cli.main import main


def test_the_bench_runs_each_variant_and_writes_table_json_and_plot(tmp_path, capsys, service_models):
    full_dir, _ = service_models
    out = tmp_path / "memory.json"
    assert main(["bench", "prefill-memory", "--model", str(full_dir), "--cache-entries", "0,8", "--num-requests",
                 "60", "--warmup", "10", "--prompt-lens", "5-30", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["label"] for r in result["rows"]] == ["oneDNN defaults", "8 entries"]
    for row in result["rows"]:
        counts = [s["requests"] for s in row["samples"]]  # one sample per 25 prompts crossed, and the end
        assert len(counts) == 3 and 25 <= counts[0] < 29 and 50 <= counts[1] < 54 and counts[2] == 60
        assert row["rss_end_mib"] > 0 and row["prefill_us_per_token"] > 0
    assert out.with_suffix(".png").stat().st_size > 0
    table = capsys.readouterr().out
    assert "oneDNN defaults" in table and "8 entries" in table and "prefill time 8 entries / oneDNN defaults" in table


@pytest.mark.parametrize("fields, message", [
    ({"min_len": 10, "max_len": 5}, "1 <= min <= max"),
    ({"num_requests": 60, "warmup": 50}, "at least twice the warm-up"),
    ({"cache_entries": [-1]}, "each >= 0"),
])
def test_bad_specs_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        PrefillMemorySpec(**fields)
