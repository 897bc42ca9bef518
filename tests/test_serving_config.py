"""Service config (YAML + overrides, field-named errors) and request validation (statuses naming the field)."""

import pytest

from overfill.serving.config import ConfigError, ServiceConfig, load_config, torch_threads_of
from overfill.serving.types import ServiceError
from overfill.serving.validation import Limits, StopStringMatcher, validate_request
from overfill.v1 import generation_pb2 as pb
from tests.tiny import tiny_tokenizer


def test_yaml_and_overrides_map_onto_the_dataclasses(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("models:\n  full: /m\n  decoder: /d\nprefill:\n  num_replicas: 2\nkv:\n  lease_ttl_s: 5\n")
    config = load_config(path, ["decode.num_slots=4", "server.grpc_port=9100"])
    assert config.models.full == "/m" and config.prefill.num_replicas == 2 and config.kv.lease_ttl_s == 5.0
    assert config.decode.num_slots == 4 and config.server.grpc_port == 9100
    assert load_config(None) == ServiceConfig()


@pytest.mark.parametrize("text, overrides, message", [
    ("prefill:\n  num_replica: 2\n", [], "unknown field prefill.num_replica; allowed: "),
    ("decode:\n  num_slots: two\n", [], "decode.num_slots must be int, got 'two'"),
    ("", ["server.grpc_port=70000"], r"server.grpc_port = 70000 is invalid: must be in \[1, 65535\]"),
    ("", ["models.dtype=int4"], "models.dtype = 'int4' is invalid"),
    ("", ["kv.transport=carrier"], "kv.transport = 'carrier' is invalid: must be one of grpc, nccl, gloo, inprocess"),
    ("", ["kv.transport=nccl"], "kv.transport = 'nccl' is invalid: must be grpc or gloo unless models.device is cuda"),
    ("", ["kv.transport=nccl", "models.device=cuda", "decode.num_gpus=1"],
     r"prefill.num_gpus = 0.0 is invalid: must be >= 1 with kv.transport nccl"),
    ("", ["decode.accelerator_type=H100"], "decode.accelerator_type = 'H100' is invalid: .* with num_gpus > 0"),
    ("", ["kv.transfer_timeout_s=0"], r"kv.transfer_timeout_s = 0.0 is invalid: must be > 0"),
    ("", ["decode.stream_messages_per_s=-1"], r"decode.stream_messages_per_s = -1.0 is invalid: must be >= 0"),
    ("", ["server.max_chat_messages=0"], r"server.max_chat_messages = 0 is invalid: must be >= 1"),
    ("", ["server.max_prompt_chars=0"], r"server.max_prompt_chars = 0 is invalid: must be in \[1, 1048576\]"),
    ("", ["server.max_prompt_chars=1048577"], r"server.max_prompt_chars = 1048577 is invalid: must be in \[1, 1048576\] "
                                              r"\(a larger request is refused on the wire"),
    ("", ["server.max_tokenizer_queue=0"], r"server.max_tokenizer_queue = 0 is invalid: must be >= 1"),
    ("", ["prefill.max_batch_s=0"], r"prefill.max_batch_s = 0.0 is invalid: must be > 0"),
    ("", ["prefill.max_batch_s=30", "prefill.unhealthy_batch_s=20"],
     r"prefill.unhealthy_batch_s = 20.0 is invalid: must be >= prefill.max_batch_s = 30"),
    ("", ["prefill.max_batch_s=30", "prefill.max_ticket_wait_s=20"],
     r"prefill.max_ticket_wait_s = 20.0 is invalid: must be >= prefill.max_batch_s = 30"),
    ("", ["nodot=1"], "section.field=value"),
    ("gpu: {}\n", [], "unknown field gpu"),
])
def test_config_errors_name_the_field(tmp_path, text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, overrides)


def test_shipped_local_config_is_valid():
    from pathlib import Path

    config = load_config(Path(__file__).resolve().parents[1] / "deploy" / "local.yaml")
    assert config.models.full == "smollm2-135m" and config.models.decoder == "default"
    assert config.prefill.num_replicas == 1 and config.decode.num_replicas == 1 and config.server.grpc_port == 9000


@pytest.mark.parametrize("overrides, threads", [
    (["decode.num_cpus=0.5"], 1),            # a fraction of a core: one thread, not Ray's default of every core
    (["decode.num_cpus=0"], 1),
    (["decode.num_cpus=2"], 2),
    (["decode.num_cpus=2.6"], 3),
    (["decode.num_cpus=0.5", "decode.torch_threads=4"], 4),  # an explicit count wins
])
def test_a_pools_torch_threads_follow_its_cpus(overrides, threads):
    assert torch_threads_of(load_config(None, overrides).decode) == threads


def test_secret_is_resolved_once(monkeypatch):
    monkeypatch.delenv("OVERFILL_KV_SECRET", raising=False)
    assert len(ServiceConfig().with_secret().kv.secret) == 32
    monkeypatch.setenv("OVERFILL_KV_SECRET", "from-env")
    assert ServiceConfig().with_secret().kv.secret == "from-env"


LIMITS = Limits(max_context_tokens=64, max_tokens_limit=32, default_max_tokens=8)


def test_valid_requests_tokenize_once():
    tokenizer = tiny_tokenizer()
    raw = validate_request(pb.GenerateRequest(prompt="hello", max_tokens=4, seed=3), tokenizer, LIMITS)
    assert raw.prompt_ids == tokenizer("hello")["input_ids"] and raw.sampling.max_new_tokens == 4
    assert raw.sampling.seed == 3 and raw.sampling.greedy and len(raw.request_id) == 32 and raw.sampling.top_k == 0
    top_k = validate_request(pb.GenerateRequest(prompt="hello", temperature=0.7, top_k=5), tokenizer, LIMITS)
    assert top_k.sampling.top_k == 5 and top_k.sampling.temperature == pytest.approx(0.7)
    chat = validate_request(pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="hi")]),
                                               request_id="abc-1"), tokenizer, LIMITS)
    assert chat.request_id == "abc-1" and chat.sampling.max_new_tokens == 8 and len(chat.prompt_ids) > 2


def test_an_invalid_chat_role_is_quoted_short_whatever_its_length():
    role = "r" * 100_000
    with pytest.raises(ServiceError) as error:
        validate_request(pb.GenerateRequest(chat=pb.ChatMessages(messages=[pb.ChatMessage(role=role, content="hi")])),
                         tiny_tokenizer(), LIMITS)
    assert error.value.code == "INVALID_ARGUMENT" and len(error.value.message) < 200
    assert error.value.message.endswith(f"got {'r' * 32!r}... (100000 characters)")


@pytest.mark.parametrize("fields, code, message", [
    (dict(), "INVALID_ARGUMENT", "one of prompt, chat or prompt_token_ids"),
    (dict(prompt="  "), "INVALID_ARGUMENT", "prompt is empty"),
    (dict(prompt="x", max_tokens=33), "INVALID_ARGUMENT", r"max_tokens must be in \[1, 32\]"),
    (dict(prompt="x", temperature=-0.5), "INVALID_ARGUMENT", "temperature"),
    (dict(prompt="x", temperature=float("nan")), "INVALID_ARGUMENT", "temperature"),
    (dict(prompt="x", top_p=0.0), "INVALID_ARGUMENT", "top_p"),
    (dict(prompt="x", stop=[""]), "INVALID_ARGUMENT", r"stop\[0\]"),
    (dict(prompt="x", stop=["a"] * 9), "INVALID_ARGUMENT", "at most 8"),
    (dict(prompt="x", request_id="bad id!"), "INVALID_ARGUMENT", "request_id"),
    (dict(chat=pb.ChatMessages(messages=[pb.ChatMessage(role="robot", content="hi")])), "INVALID_ARGUMENT",
     r"chat.messages\[0\].role"),
    (dict(chat=pb.ChatMessages()), "INVALID_ARGUMENT", "chat.messages is empty"),
    (dict(prompt="word " * 60, max_tokens=32), "RESOURCE_EXHAUSTED", "exceeds the context of 64"),
])
def test_bad_requests_get_their_status(fields, code, message):
    with pytest.raises(ServiceError, match=message) as error:
        validate_request(pb.GenerateRequest(**fields), tiny_tokenizer(), LIMITS)
    assert error.value.code == code


def test_stop_matcher_holds_back_partial_matches():
    matcher = StopStringMatcher(["END", "\n\n"])
    pieces = [matcher.push(t) for t in ["Hello E", "N", "ough. Then E", "ND tail"]]
    assert "".join(text for text, _ in pieces) == "Hello ENough. Then "
    assert [stopped for _, stopped in pieces] == [False, False, False, True]
    plain = StopStringMatcher([])
    assert plain.push("abc") == ("abc", False) and plain.flush() == ""
