"""runs/gpu_check.sh in its CPU form (--cpu-smoke): every section that does not need CUDA runs on tiny models, in a
process where importing Ray, gguf or OpenTelemetry fails, as on the GPU machine (which has none of them)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_check_runs_on_cpu_without_ray_and_writes_its_json_and_table(tmp_path):
    blocked = tmp_path / "blocked"
    for name in ("ray", "gguf", "opentelemetry"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(blocked)}
    done = subprocess.run(["bash", str(ROOT / "runs" / "gpu_check.sh"), "--cpu-smoke", "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    sections = result["sections"]
    assert result["failed_sections"] == [] and result["spec"]["cpu_smoke"]
    assert sections["cuda_tests"]["skipped"] == "--cpu-smoke"
    assert {(r["mode"], r["batch_size"]) for r in sections["decode"]["rows"]} == {
        ("full", 1), ("full", 4), ("overfill", 1), ("overfill", 4)}
    assert all(r["tpot_ms"] > 0 and r["roofline_ms"] > 0 for r in sections["decode"]["rows"])
    assert [r["prompt_tokens"] for r in sections["ttft"]["rows"]] == [16, 64]
    assert sections["sampling"]["ok"] and sections["sampling"]["tiny_float32"]["same_in_batch"]
    assert sections["kv_transfer"]["bit_exact"] and sections["kv_transfer"]["gb_s"] > 0
    assert sections["training"]["tokens_per_s"] > 0 and sections["training"]["losses_finite"]
    assert "decode: full" in done.stdout and "failed sections: none" in done.stdout
