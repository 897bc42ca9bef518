"""The committed Python stubs are exactly what protoc generates from proto/ (run `make proto` after editing)."""

from pathlib import Path

import pytest
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = sorted((ROOT / "proto").rglob("*.proto"))


@pytest.mark.parametrize("proto", PROTOS, ids=lambda p: p.name)
def test_committed_stubs_match_the_proto(proto, tmp_path):
    relative = proto.relative_to(ROOT / "proto")
    status = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                          f"--pyi_out={tmp_path}", str(proto)])
    assert status == 0
    stem = relative.with_suffix("")
    for suffix in ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi"):
        generated = (tmp_path / f"{stem}{suffix}").read_text()
        committed = (ROOT / f"{stem}{suffix}").read_text()
        assert committed == generated, f"{stem}{suffix} is stale: run `make proto`"
