"""Evaluation: scoring of each match type, task parsing errors, and a run of every mode with its plot."""

import json

import pytest

from overfill.evaluation import EvalTaskError, agreement, load_tasks, score


@pytest.mark.parametrize("output, answer, match, expected", [
    (" yes. ", "yes", "exact", True), ("Yes", "yes", "exact", False), ("yes, it is", "yes", "exact", False),
    ("The capital is PARIS!", "Paris", "contains", True), ("Lyon", "Paris", "contains", False),
    ("7 + 5 = 12", "12", "number", True), ("12 or maybe 13", "12", "number", False),
    ("It costs 1,000 dollars", "1000", "number", True), ("about 2.50", "2.5", "number", True),
    ("no digits here", "3", "number", False), ("-4 degrees", "-4", "number", True),
])
def test_scoring(output, answer, match, expected):
    assert score(output, answer, match) is expected


def test_agreement_is_a_token_level_match_rate():
    assert agreement([1, 2, 3], [1, 2, 3]) == 1.0
    assert agreement([1, 9, 3, 4], [1, 2, 3]) == 0.5
    assert agreement([], []) == 1.0


@pytest.mark.parametrize("line, message", [
    ("{bad", "tasks.jsonl:2: not valid JSON"),
    ('{"messages": [], "answer": "x", "match": "exact"}', "tasks.jsonl:2: needs a non-empty"),
    ('{"messages": [{"role": "user", "content": "q"}], "answer": "x", "match": "fuzzy"}', "tasks.jsonl:2: needs a string"),
])
def test_task_errors_name_the_line(tmp_path, line, message):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}], "answer": "a", "match": "exact"})
                    + "\n" + line + "\n")
    with pytest.raises(EvalTaskError, match=message):
        load_tasks(path)


def test_eval_runs_every_mode_and_plots(tiny_dir, tmp_path, capsys):
    from overfill.build_decoder import PruneSpec, build_decoder
    from overfill.cli.main import main
    from tests.tiny import CORPUS

    calibration = tmp_path / "cal.jsonl"
    calibration.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    decoder = tmp_path / "decoder"
    build_decoder(PruneSpec(str(tiny_dir), 64, 96, output=decoder, calibration=[calibration]), progress=False)  # no-op
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}], "answer": a, "match": m}) + "\n"
                             for q, a, m in [("What is 2+2?", "4", "number"), ("Capital of France?", "Paris", "contains"),
                                             ("Is ice cold?", "yes", "exact")]))
    out, plot = tmp_path / "eval.json", tmp_path / "pareto.png"
    assert main(["eval", "--model", str(tiny_dir), "--decoder", str(decoder), "--tasks", str(tasks), "--modes",
                 "full,pruned,overfill,speculative", "--max-new-tokens", "6", "--refresh-every", "2", "--json", str(out),
                 "--plot", str(plot)]) == 0
    result = json.loads(out.read_text())
    rows = {r["mode"]: r for r in result["rows"]}
    assert set(rows) == {"full", "pruned", "overfill", "speculative", "overfill+refresh2"}
    # The decoder is a no-op prune: every mode reproduces the full model's greedy tokens.
    assert all(rows[m]["agreement"] == 1.0 for m in ("pruned", "overfill", "speculative", "overfill+refresh2"))
    assert rows["speculative"]["ttft_ms"] is None and rows["overfill"]["tpot_ms"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "speculative" in capsys.readouterr().out


def test_decoders_bench_builds_scores_and_resumes(tiny_dir, tmp_path, capsys):
    """`overfill bench decoders` on a tiny model: every variant scored, a table, JSON and PNG; run again, it reuses
    every decoder and score it kept."""
    from overfill.cli.main import main
    from tests.test_training import CONVERSATIONS

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}], "answer": a, "match": "contains"})
                             + "\n" for q, a in [("What is 2+2?", "4"), ("Capital of France?", "Paris")]))
    out = tmp_path / "decoders.json"
    args = ["bench", "decoders", "--model", str(tiny_dir), "--fractions", "0.6", "--work", str(tmp_path / "work"),
            "--tasks", str(tasks), "--steps", "2", "--max-new-tokens", "4", "--json", str(out),
            "--data", str(data), "--calibration", str(data)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    variants = [r["variant"] for r in result["rows"]]
    assert variants == ["full model", "none, untrained", "none, trained", "lstsq, untrained", "lstsq, trained",
                        "lstsq, trained as Pruned (baseline)"]
    full, *decoders = result["rows"]
    assert full["agreement"] == 1.0 and all(r["parameters"] <= 0.6 * full["parameters"] for r in decoders)
    assert all(r["trained_tokens"] > 0 for r in decoders if "untrained" not in r["variant"])
    assert all(set(r["tpot_ms"]) == {"1", "8"} for r in result["rows"])
    assert out.with_suffix(".png").stat().st_size > 0 and "lstsq, trained" in capsys.readouterr().out
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("*.safetensors")}
    assert main(args) == 0  # resumed: nothing built or trained again
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("*.safetensors")} == stamps
