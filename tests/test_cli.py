"""The `overfill` command line on a tiny model directory."""

import json

from overfill.cli.main import main
from tests.tiny import CORPUS


def test_prune_then_generate_json_in_every_mode(tiny_dir, tmp_path, capsys):
    calibration = tmp_path / "cal.jsonl"
    calibration.write_text("".join(json.dumps({"text": t}) + "\n" for t in CORPUS))
    decoder = tmp_path / "decoder"
    assert main(["prune", "--model", str(tiny_dir), "--hidden-size", "32", "--intermediate-size", "48",
                 "--calibration", str(calibration), "--output", str(decoder)]) == 0
    assert "hidden 64 -> 32" in capsys.readouterr().out

    for mode in ("overfill", "full", "pruned"):
        assert main(["generate", "--model", str(tiny_dir), "--decoder", str(decoder), "--mode", mode,
                     "--max-new-tokens", "5", "--json", "hello", "what is the capital"]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 2
        for line in lines:
            record = json.loads(line)
            assert set(record) >= {"text", "token_ids", "prompt_tokens", "ttft_s", "tpot_s", "mode"}
            assert record["mode"] == mode and 1 <= len(record["token_ids"]) <= 5


def test_generate_streams_text_and_chat_flag_changes_the_prompt(tiny_dir, capsys):
    assert main(["generate", "--model", str(tiny_dir), "--mode", "full", "--max-new-tokens", "4", "--json",
                 "--no-chat", "hi"]) == 0
    raw = json.loads(capsys.readouterr().out)
    assert main(["generate", "--model", str(tiny_dir), "--mode", "full", "--max-new-tokens", "4", "--json", "hi"]) == 0
    chat = json.loads(capsys.readouterr().out)
    assert chat["prompt_tokens"] > raw["prompt_tokens"]  # the template wraps the message

    assert main(["generate", "--model", str(tiny_dir), "--mode", "full", "--max-new-tokens", "4", "hi"]) == 0
    out = capsys.readouterr()
    assert "TTFT" in out.err


def test_bad_arguments_exit_2_with_a_message(tiny_dir, tmp_path, capsys):
    assert main(["prune", "--model", str(tiny_dir), "--hidden-size", "30", "--intermediate-size", "48",
                 "--output", str(tmp_path / "d")]) == 2
    assert "nearest accepted: 28 or 32" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "nowhere"), "--mode", "full", "hi"]) == 2
    assert "neither a local Hugging Face directory" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny_dir), "--mode", "full", "--temperature", "-1", "hi"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_bench_decode_runs_greedy_and_sampled_side_by_side(tiny_dir, tmp_path, capsys):
    out = tmp_path / "decode.json"
    assert main(["bench", "decode", "--model", str(tiny_dir), "--modes", "full", "--batch-sizes", "2", "--prompt-len",
                 "8", "--gen-len", "4", "--repeats", "1", "--temperature", "0.8", "--top-p", "0.9", "--top-k", "50",
                 "--seed", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert sorted(r["sampling"] for r in result["rows"]) == ["greedy", "sampled"]
    (ratio,) = result["sampling_ratios"]
    assert ratio["mode"] == "full" and ratio["sampled_over_greedy_tokens_per_s"] > 0
    assert "sampled (temperature 0.8, top_p 0.9, top_k 50) / greedy tokens/s" in capsys.readouterr().out
    assert main(["bench", "decode", "--model", str(tiny_dir), "--modes", "full", "--top-k", "-1"]) == 2
    assert "top_k" in capsys.readouterr().err


def test_decoder_build_for_a_fraction_then_info(tiny_dir, tmp_path, capsys, monkeypatch):
    import json

    from tests.test_training import CONVERSATIONS

    monkeypatch.setenv("OVERFILL_HOME", str(tmp_path / "home"))
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in CONVERSATIONS))  # calibrates too (ShareGPT included)
    decoder = tmp_path / "half"
    assert main(["decoder", "build", "--model", str(tiny_dir), "--fraction", "0.5", "--output", str(decoder),
                 "--data", str(data), "--calibration", str(data), "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "parameters (4" in out and str(decoder) in out  # a fraction of 40-something percent, at most 50
    assert main(["decoder", "info", str(decoder)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameter_fraction"] <= 0.5 and info["reconstruction"]["method"] == "lstsq"
    assert [t["steps"] for t in info["training"]] == [2] and info["recipe"]["steps"] == 2
