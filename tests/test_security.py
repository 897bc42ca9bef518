"""Security without a Ray cluster: API key loading and the constant-time check, the config's security fields, the
KV service bound to its configured address only, and the router's logs free of prompts and outputs unless
server.log_prompts (the router and both pools in process, KV handed over in memory)."""

from __future__ import annotations

import asyncio
import logging
import socket

import grpc
import pytest

from overfill.serving import auth
from overfill.serving.auth import ApiKeyChecker, load_api_keys
from overfill.serving.config import AuthConfig, ConfigError, load_config
from overfill.serving.request_log import failure_summary
from overfill.v1 import generation_pb2 as pb

KEY_A, KEY_B, KEY_C = "a" * 20 + "-key-one", "B" * 24, "key.three_" + "c" * 12


# ---- key loading ---------------------------------------------------------------------------------------------------

def test_keys_come_from_the_file_and_the_environment(tmp_path):
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# service keys\n\n  {KEY_A}  \n# {KEY_C} is retired\n{KEY_B}\n")
    config = AuthConfig(api_keys_file=str(keys_file), api_keys_env="TEST_KEYS")
    assert load_api_keys(config, {"TEST_KEYS": f"{KEY_C}, {KEY_A},"}) == [KEY_A, KEY_B, KEY_C]
    assert load_api_keys(AuthConfig(api_keys_env="TEST_KEYS"), {"TEST_KEYS": KEY_C}) == [KEY_C]
    assert load_api_keys(AuthConfig(enabled=False), {}) == []


@pytest.mark.parametrize("file_text, env, message", [
    (None, "", r"auth.api_keys_file = '.*missing' cannot be read"),
    ("# only a comment\n", "", r"auth.enabled is true but no API key was found in auth.api_keys_file = .* or "
                               r"\$TEST_KEYS \(auth.api_keys_env\)"),
    ("short-key\n", "", r"auth.api_keys_file .*keys:1: an API key must have at least 16 characters, this one has 9"),
    (f"{KEY_A}\n{KEY_B} trailing\n", "", r"auth.api_keys_file .*keys:2: an API key must be printable ASCII"),
    ("", f"{KEY_A},tiny", r"\$TEST_KEYS \(auth.api_keys_env\), key 2: an API key must have at least 16"),
    ("", "clé-avec-accent-é-1234", r"key 1: an API key must be printable ASCII without spaces"),
])
def test_bad_keys_are_config_errors_that_never_quote_the_key(tmp_path, file_text, env, message):
    keys_file = tmp_path / ("keys" if file_text is not None else "missing")
    if file_text is not None:
        keys_file.write_text(file_text)
    with pytest.raises(ConfigError, match=message) as raised:
        load_api_keys(AuthConfig(api_keys_file=str(keys_file), api_keys_env="TEST_KEYS"), {"TEST_KEYS": env})
    for secret in ("short-key", "trailing", "tiny", "clé", KEY_A, KEY_B):
        assert secret not in str(raised.value)


@pytest.mark.parametrize("overrides, message", [
    (["auth.api_keys_env=''"], r"auth.enabled = True is invalid: must be false when neither auth.api_keys_file nor "
                               r"auth.api_keys_env is set"),
    (["auth.api_keys_env=MY-KEYS"], r"auth.api_keys_env = 'MY-KEYS' is invalid: must be an environment variable name"),
    (["auth.enabled=yes please"], r"auth.enabled must be bool, got 'yes please'"),
    (["auth.api_key=abc"], r"unknown field auth.api_key; allowed: api_keys_env, api_keys_file, enabled"),
    (["server.tls_cert_file=/c.pem"], r"server.tls_key_file = '' is invalid: must be set together with "
                                      r"server.tls_cert_file"),
    (["server.tls_key_file=/k.pem"], r"server.tls_key_file = '/k.pem' is invalid: must be set together"),
    (["server.tls_cert_file=/c.pem", "server.tls_key_file=/k.pem", "server.tls_port=9000"],
     r"server.tls_port = 9000 is invalid: must be a port of its own \(not grpc_port, http_port or metrics_port\)"),
    (["server.tls_port=0"], r"server.tls_port = 0 is invalid: must be in \[1, 65535\]"),
    (["server.log_prompts=1"], r"server.log_prompts must be bool, got 1"),
])
def test_security_config_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_auth_is_on_unless_the_config_turns_it_off():
    assert load_config(None).auth == AuthConfig(enabled=True, api_keys_file="", api_keys_env="OVERFILL_API_KEYS")
    assert load_config(None).server.log_prompts is False
    with pytest.raises(ConfigError, match=r"auth.enabled is true but no API key was found in \$OVERFILL_API_KEYS"):
        load_api_keys(load_config(None).auth, {})


# ---- the check -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metadata, refusal", [
    ((), "missing"),
    ((("x-other", "1"),), "missing"),
    ((("authorization", f"Basic {KEY_A}"),), "malformed"),
    ((("authorization", "Bearer"),), "malformed"),
    ((("authorization", "Bearer   "),), "malformed"),
    ((("authorization", KEY_A),), "malformed"),
    ((("authorization", f"Bearer {KEY_A}x"),), "invalid"),
    ((("authorization", f"Bearer {KEY_A[:-1]}"),), "invalid"),
    ((("authorization", f"Bearer {KEY_A}"),), None),
    ((("user-agent", "t"), ("authorization", f"bearer {KEY_C}")), None),
    ((("Authorization", f"Bearer {KEY_B}".encode()),), None),
])
def test_refusals(metadata, refusal):
    assert ApiKeyChecker([KEY_A, KEY_B, KEY_C]).refusal(metadata) == refusal


def test_every_key_is_compared_in_constant_time(monkeypatch):
    """No early exit: the first key matching still costs one compare_digest per key, all on equal-length digests."""
    calls = []

    def recording(a, b):
        calls.append((len(a), len(b)))
        return a == b

    monkeypatch.setattr(auth.hmac, "compare_digest", recording)
    checker = ApiKeyChecker([KEY_A, KEY_B, KEY_C])
    assert checker.refusal([("authorization", f"Bearer {KEY_A}")]) is None
    assert checker.refusal([("authorization", "Bearer nope")]) == "invalid"
    assert calls == [(32, 32)] * 6


# ---- the KV service's address --------------------------------------------------------------------------------------

def other_interface_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback (psutil comes with Ray)."""
    import psutil

    return [a.address for addresses in psutil.net_if_addrs().values() for a in addresses
            if a.family == socket.AF_INET and not a.address.startswith("127.")]


def test_kv_service_listens_on_the_configured_address_only():
    from overfill.transport.grpc_backend import SECRET_METADATA_KEY, GrpcKVSender
    from overfill.v1 import kv_transfer_pb2 as kv_pb
    from overfill.v1 import kv_transfer_pb2_grpc as kv_grpc

    bind_host = load_config(None).kv.bind_host
    assert bind_host == "127.0.0.1"
    sender = GrpcKVSender(secret="s3cret", bind_address=f"{bind_host}:0")
    try:
        host, port = sender.address.rsplit(":", 1)
        assert host == bind_host

        def release(address: str, secret: str) -> kv_pb.ReleaseResponse:
            with grpc.insecure_channel(address) as channel:
                return kv_grpc.KVTransferStub(channel).Release(kv_pb.ReleaseRequest(request_id="r"), timeout=5,
                                                               metadata=((SECRET_METADATA_KEY, secret),))

        assert release(sender.address, "s3cret").released is False  # reachable on its address, with the secret
        with pytest.raises(grpc.RpcError) as refused:
            release(sender.address, "wrong")
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        for address in other_interface_addresses():  # this machine's other interfaces: nothing listens there
            with pytest.raises(OSError), socket.create_connection((address, int(port)), timeout=2):
                pass
    finally:
        sender.close()


# ---- logs: no prompts, no outputs, unless server.log_prompts -----------------------------------------------------

PROMPT = "zanzibar quokka marmalade 7391"


class _Recorded:
    def __init__(self):
        self.calls = []

    def inc(self, value, tags=None):
        self.calls.append((value, tags))


class _Context:
    """The part of RayServegRPCContext the router uses."""

    def __init__(self, metadata=()):
        self.metadata, self.code, self.details = list(metadata), None, None

    def invocation_metadata(self):
        return self.metadata

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details


class _LocalHandle:
    """A DeploymentHandle stand-in over an object in this process: `.method.remote(*args)` is awaitable, or an
    async iterator with cancel() after `.options(stream=True)`."""

    def __init__(self, target, stream: bool = False):
        self.target, self.stream = target, stream

    def options(self, stream: bool = False):
        return _LocalHandle(self.target, stream)

    def __getattr__(self, name):
        method, stream = getattr(self.target, name), self.stream

        class Remote:
            @staticmethod
            def remote(*args, **kwargs):
                call = method(*args, **kwargs)
                return _LocalStream(call) if stream else asyncio.ensure_future(call)
        return Remote


class _LocalStream:
    """Like Ray Serve's DeploymentResponseGenerator: an async iterator with cancel()."""

    def __init__(self, generator):
        self.generator = generator

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self.generator.__anext__()

    def cancel(self):
        asyncio.ensure_future(self.generator.aclose())


class _FailingPrefill:
    """The prefill pool, except that prompts holding `poison` fail the way a library error quoting its input
    would: the exception's message carries the prompt."""

    def __init__(self, server, tokenizer, poison: str):
        self.server, self.tokenizer, self.poison = server, tokenizer, poison

    async def prefill(self, request):
        text = self.tokenizer.decode(request.prompt_ids)
        if self.poison in text:
            raise ValueError(f"could not prefill {text!r}")
        return await self.server.prefill(request)

    def __getattr__(self, name):
        return getattr(self.server, name)


@pytest.fixture(scope="module")
def tiny_models(service_models):
    return service_models


def in_process_router(tiny_models, monkeypatch, *overrides):
    """GenerationRouter with the prefill and decode servers in this process (inprocess KV transport)."""
    import torch

    import services.router.server as router_module
    from services.decode.server import DecodeServer
    from services.prefill.server import PrefillServer
    from tests.service_helpers import tiny_service_config

    class NoReplicaCounts:  # outside Ray Serve there is no controller to ask
        def __init__(self, *args):
            pass

        async def get(self):
            return {}

    monkeypatch.setattr(router_module, "ReplicaCounts", NoReplicaCounts)
    config = tiny_service_config(*tiny_models, "kv.transport=inprocess", *overrides).with_secret()
    threads = torch.get_num_threads()
    prefill, decode = PrefillServer(config), DecodeServer(config)
    torch.set_num_threads(threads)  # the servers set the process's torch threads
    router = router_module.GenerationRouter(config, None, _LocalHandle(decode))
    router.prefill = _LocalHandle(_FailingPrefill(prefill, router.tokenizer, poison="FAIL"))
    return router, prefill, decode


def assert_no_kv_left_and_close(prefill, decode) -> None:
    assert asyncio.run(prefill.stats())["num_leases"] == 0
    assert asyncio.run(decode.stats())["num_free_slots"] == decode.worker.settings.num_slots
    prefill.worker.close(), prefill.sender.close(), decode.worker.close()


class _CapturedLogs(logging.Handler):
    """Every record from the root logger and from `ray` (which does not propagate), formatted with tracebacks."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines = []

    def emit(self, record):
        self.lines.append(self.format(record))

    def __enter__(self):
        self.loggers = [(logger, logger.level) for logger in (logging.getLogger(), logging.getLogger("ray"),
                                                               logging.getLogger("ray.serve"))]
        for logger, _ in self.loggers:
            logger.addHandler(self)
            logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc):
        for logger, level in self.loggers:
            logger.removeHandler(self)
            logger.setLevel(level)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


async def _call(router, request: pb.GenerateRequest):
    """One Generate through the router: (text, status code or None)."""
    context, pieces = _Context(), []
    try:
        async for response in router.Generate(request, context):
            pieces.append(response.text)
    except Exception:  # noqa: BLE001  the status is on the context
        return "".join(pieces), context.code
    return "".join(pieces), None


def run_requests(router) -> dict:
    async def run():
        return {
            "ok": await _call(router, pb.GenerateRequest(prompt=PROMPT, max_tokens=12, request_id="ok-1")),
            "chat": await _call(router, pb.GenerateRequest(chat=pb.ChatMessages(messages=[
                pb.ChatMessage(role="user", content=PROMPT)]), max_tokens=6, request_id="chat-1")),
            "stop": await _call(router, pb.GenerateRequest(prompt=PROMPT, max_tokens=12, stop=["e"],
                                                          request_id="stop-1")),
            "internal": await _call(router, pb.GenerateRequest(prompt=f"FAIL {PROMPT}", request_id="bad-1")),
            "invalid": await _call(router, pb.GenerateRequest(prompt=PROMPT, temperature=float("nan"))),
        }
    return asyncio.run(run())


@pytest.mark.parametrize("log_prompts", [False, True])
def test_prompts_and_outputs_reach_the_logs_only_with_log_prompts(tiny_models, monkeypatch, capsys, log_prompts):
    with _CapturedLogs() as logs:
        router, prefill, decode = in_process_router(tiny_models, monkeypatch, f"server.log_prompts={log_prompts}")
        results = run_requests(router)
    printed = capsys.readouterr()
    text = "\n".join([logs.text, printed.out, printed.err])
    assert results["ok"][1] is None and results["chat"][1] is None and results["stop"][1] is None
    assert results["internal"][1] == grpc.StatusCode.INTERNAL and results["invalid"][1] == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert "request bad-1 failed" in text  # the failure itself is logged, by id
    output = results["ok"][0]
    assert len(output.strip()) >= 4  # long enough to be recognised in the logs
    if log_prompts:
        assert PROMPT in text and f"FAIL {PROMPT}" in text and repr(output) in text
    else:
        assert PROMPT not in text and output not in text
        assert "ValueError (message withheld: server.log_prompts is false)" in text
    assert_no_kv_left_and_close(prefill, decode)


def test_refusals_are_unauthenticated_counted_and_never_echo_the_key(tiny_models, monkeypatch):
    monkeypatch.setenv("SECURITY_TEST_KEYS", KEY_A)
    router, prefill, decode = in_process_router(tiny_models, monkeypatch, "auth.enabled=true",
                                                "auth.api_keys_env=SECURITY_TEST_KEYS")
    router.metrics.auth_rejections = recorded = _Recorded()
    wrong = "w" * 20

    async def run():
        outcomes = []
        for metadata in [(), [("authorization", f"Bearer {wrong}")], [("authorization", wrong)],
                         [("authorization", f"Bearer {KEY_A}")]]:
            context = _Context(metadata)
            try:
                await router.GetModelInfo(pb.ModelInfoRequest(), context)
                pieces = [r async for r in router.Generate(pb.GenerateRequest(prompt="hi", max_tokens=2), context)]
                outcomes.append((None, None, len(pieces)))
            except Exception:  # noqa: BLE001
                outcomes.append((context.code, context.details, 0))
        health = await router.Health(pb.HealthRequest(), _Context())  # no key: probes are exempt
        return outcomes, health

    outcomes, health = asyncio.run(run())
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    assert [o[:2] for o in outcomes[:3]] == [(unauthenticated, auth.REFUSALS["missing"]),
                                             (unauthenticated, auth.REFUSALS["invalid"]),
                                             (unauthenticated, auth.REFUSALS["malformed"])]
    assert all(wrong not in o[1] for o in outcomes[:3])
    assert outcomes[3][0] is None and outcomes[3][2] >= 1
    assert recorded.calls == [(1, {"reason": r}) for r in ("missing", "invalid", "malformed")]
    assert health.status == "SERVING"
    assert_no_kv_left_and_close(prefill, decode)


def test_failure_summary_keeps_frames_and_types_but_no_messages():
    def inner():
        raise KeyError("secret prompt text")

    try:
        try:
            inner()
        except KeyError as e:
            raise RuntimeError("outer quoting secret prompt text") from e
    except RuntimeError as e:
        summary = failure_summary(e)
    assert "secret prompt text" not in summary
    assert "builtins.RuntimeError" in summary and "builtins.KeyError" in summary and "in inner" in summary
