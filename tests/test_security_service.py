"""Security of the running service (one tiny application for the module): API keys at the ingress (from a file
and from the environment), TLS through the front (services/tls_front.py) with a self-signed certificate made here,
grpc.health.v1 and reflection on the TLS port, and no prompt in any log file the cluster wrote (gRPC and HTTP)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest

from overfill.client import AsyncOverFillClient, OverFillClient, OverFillError
from tests.service_helpers import assert_no_kv_left, free_port, serve_file_for_tests, tiny_service, wait_for

pytestmark = pytest.mark.service

FILE_KEY = "file-key-0123456789abcdef"
ENV_KEY = "env-key-fedcba9876543210"
KEYS_ENV = "OVERFILL_SECURITY_TEST_KEYS"
MAX_PER_KEY = 2  # auth.max_requests_per_key: the tests below send at most this many at once per key but one
PROMPT = "xylophone pelican 4812 ravioli"  # appears in no log line unless server.log_prompts


def write_self_signed_certificate(root: Path) -> tuple[Path, Path]:
    """A CA-capable self-signed certificate for localhost / 127.0.0.1 / ::1 and its key (PEM): (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "overfill-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = root / "server.pem", root / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def service(tmp_path_factory, service_models):
    import ray

    root = tmp_path_factory.mktemp("security-service")
    cert, key = write_self_signed_certificate(root)
    keys_file = root / "api-keys"
    keys_file.write_text(f"# keys of the test service\n\n{FILE_KEY}\n")
    tls_port = free_port()
    # The environment key reaches the router's process through the application's environment (the session's
    # cluster is up already, with an environment of its own).
    serve_file = serve_file_for_tests(env_vars={KEYS_ENV: ENV_KEY})
    with tiny_service(service_models, "auth.enabled=true", f"auth.api_keys_file={keys_file}",
                      f"auth.api_keys_env={KEYS_ENV}", f"auth.max_requests_per_key={MAX_PER_KEY}",
                      f"server.tls_cert_file={cert}", f"server.tls_key_file={key}",
                      f"server.tls_port={tls_port}", serve_file=serve_file) as service:
        config = service["config"]
        logs_dir = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
        yield {"plain": f"127.0.0.1:{config.server.grpc_port}", "tls": f"127.0.0.1:{tls_port}", "cert": cert,
               "config": config, "logs_dir": logs_dir}


def http_post(service, path: str, body: dict) -> int:
    """The HTTP status of a POST to the OpenAI-compatible API with a valid key."""
    import json
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{service['config'].server.http_port}{path}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "authorization": f"Bearer {FILE_KEY}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def refused(call) -> OverFillError:
    with pytest.raises(OverFillError) as error:
        call()
    return error.value


def naming_the_request(message: str, error) -> str:
    """The service's message as the client reports it: Generate calls carry a request id, which it appends."""
    return f"{message} (request {error.request_id!r})" if error.request_id else message


def test_every_rpc_but_health_needs_a_valid_key(service):
    with OverFillClient(service["plain"], timeout_s=60) as anonymous:
        assert anonymous.health() == "SERVING"  # probes carry no key
        for call in (anonymous.model_info, lambda: anonymous.generate_unary(PROMPT, max_tokens=4),
                     lambda: list(anonymous.generate(PROMPT, max_tokens=4))):
            error = refused(call)
            assert (error.code, error.message) == ("UNAUTHENTICATED", naming_the_request(
                "missing API key: send `authorization: Bearer <key>` (gRPC metadata, or the HTTP header)", error))
    wrong = "wrong-key-" + "9" * 16
    with OverFillClient(service["plain"], timeout_s=60, api_key=wrong) as client:
        error = refused(lambda: list(client.generate(PROMPT, max_tokens=4)))
        assert len(error.request_id) == 32 and wrong not in str(error)
        assert (error.code, error.message) == ("UNAUTHENTICATED", naming_the_request("invalid API key", error))
    with OverFillClient(service["plain"], timeout_s=60, metadata=(("authorization", FILE_KEY),)) as client:
        assert refused(client.model_info).code == "UNAUTHENTICATED"  # no Bearer scheme
    outputs = []
    for key in (FILE_KEY, ENV_KEY):  # from auth.api_keys_file, and from $OVERFILL_SECURITY_TEST_KEYS
        with OverFillClient(service["plain"], timeout_s=60, api_key=key) as client:
            assert client.model_info().max_tokens_limit == service["config"].server.max_tokens_limit
            outputs.append([t for piece in client.generate(PROMPT, max_tokens=8) for t in piece.token_ids])
            assert list(client.generate_unary(PROMPT, max_tokens=8).token_ids) == outputs[-1]
    assert outputs[0] == outputs[1] and len(outputs[0]) == 8
    assert_no_kv_left(service["config"])


def test_one_key_past_its_limit_is_refused_while_another_key_is_served(service):
    """Many streams of one key at once: past auth.max_requests_per_key some are refused with RESOURCE_EXHAUSTED
    naming the field, the others are served, another key is served meanwhile, and every place is given back
    (streams cancelled at their first token included), so the key is served again afterwards."""
    import asyncio

    async def one_stream(key: str, max_tokens: int, leave_early: bool = False) -> str:
        async with AsyncOverFillClient(service["plain"], api_key=key, timeout_s=60) as client:
            stream = client.generate(PROMPT, max_tokens=max_tokens)
            try:
                async for _ in stream:
                    if leave_early:
                        await stream.aclose()
                        return "left"
                return "OK"
            except OverFillError as e:
                assert e.code != "RESOURCE_EXHAUSTED" or "auth.max_requests_per_key = 2" in e.message, e.message
                return e.code

    async def flood():
        limit = service["config"].server.max_tokens_limit
        return await asyncio.gather(*[one_stream(FILE_KEY, limit) for _ in range(4 * MAX_PER_KEY)],
                                    one_stream(ENV_KEY, 8))

    async def all_at_once(leave_early: bool):
        return await asyncio.gather(*[one_stream(FILE_KEY, 8, leave_early) for _ in range(MAX_PER_KEY)])

    *flooded, other = asyncio.run(flood())
    assert other == "OK" and "RESOURCE_EXHAUSTED" in flooded and set(flooded) <= {"OK", "RESOURCE_EXHAUSTED"}
    for _ in range(3):  # streams cancelled at their first piece give their places back (a leak would refuse all)
        assert set(asyncio.run(all_at_once(leave_early=True))) <= {"left", "RESOURCE_EXHAUSTED"}
        assert wait_for(lambda: asyncio.run(all_at_once(leave_early=False)) == ["OK"] * MAX_PER_KEY, timeout_s=10)
    assert http_post(service, "/v1/completions", {"model": service["config"].models.full, "prompt": PROMPT,
                                                  "max_tokens": 4}) == 200
    assert_no_kv_left(service["config"])


def test_tls_front_forwards_calls_statuses_deadlines_and_cancellation(service):
    import asyncio

    with OverFillClient(service["plain"], timeout_s=60, api_key=FILE_KEY) as direct:
        expected = [t for piece in direct.generate(PROMPT, max_tokens=12) for t in piece.token_ids]
    with OverFillClient(service["tls"], timeout_s=60, api_key=ENV_KEY, tls_root_cert=service["cert"]) as client:
        assert client.health() == "SERVING"
        pieces = list(client.generate(PROMPT, max_tokens=12))
        assert [t for p in pieces for t in p.token_ids] == expected and pieces[-1].finish_reason == "length"
        assert list(client.generate_unary(PROMPT, max_tokens=12).token_ids) == expected
        error = refused(lambda: client.generate_unary(PROMPT, max_tokens=12, temperature=-1.0))
        assert error.code == "INVALID_ARGUMENT" and "temperature" in error.message  # status and details relayed
    with OverFillClient(service["tls"], timeout_s=60, tls_root_cert=service["cert"].read_bytes()) as anonymous:
        assert refused(anonymous.model_info).code == "UNAUTHENTICATED"  # the key is checked behind the front
    with OverFillClient(service["tls"], timeout_s=0.05, api_key=FILE_KEY, tls_root_cert=service["cert"]) as client:
        assert refused(lambda: list(client.generate(PROMPT, max_tokens=64))).code == "DEADLINE_EXCEEDED"

    async def leave_after_the_first_piece():
        async with AsyncOverFillClient(service["tls"], api_key=FILE_KEY, tls_root_cert=service["cert"]) as client:
            stream = client.generate(PROMPT, max_tokens=64)
            first = await stream.__anext__()
            await stream.aclose()  # cancels the call: the front cancels upstream, decode frees the slot
            return first

    assert (asyncio.run(leave_after_the_first_piece())).token_ids
    assert_no_kv_left(service["config"])


def test_tls_front_serves_grpc_health_and_reflection(service):
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    credentials = grpc.ssl_channel_credentials(root_certificates=service["cert"].read_bytes())
    with grpc.secure_channel(service["tls"], credentials) as channel:
        health = health_pb2_grpc.HealthStub(channel)  # forwarded to the router, no key needed
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=30).status == \
            health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service="overfill.v1.Generation"), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())  # answered by the front
    assert {"overfill.v1.Generation", "grpc.health.v1.Health"} <= services


def test_the_tls_front_forwards_no_ray_serve_internals(service):
    """Ray Serve's RayServeAPIService lists every application of the cluster without a key: the public edge does not
    forward it."""
    import grpc
    from ray.serve.generated import serve_pb2, serve_pb2_grpc

    credentials = grpc.ssl_channel_credentials(root_certificates=service["cert"].read_bytes())
    with grpc.secure_channel(service["tls"], credentials) as channel:
        with pytest.raises(grpc.RpcError) as error:
            serve_pb2_grpc.RayServeAPIServiceStub(channel).ListApplications(serve_pb2.ListApplicationsRequest(),
                                                                             timeout=30)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_the_tls_port_refuses_plaintext_and_unknown_certificates(service, tmp_path):
    with OverFillClient(service["tls"], timeout_s=10, api_key=FILE_KEY) as plaintext:
        assert refused(plaintext.health).code == "UNAVAILABLE"
    other_cert, _ = write_self_signed_certificate(tmp_path)
    with OverFillClient(service["tls"], timeout_s=10, api_key=FILE_KEY, tls_root_cert=other_cert) as untrusted:
        assert refused(untrusted.health).code == "UNAVAILABLE"


def test_no_prompt_in_any_log_file(service):
    """After the requests above and these error paths, no file under the cluster's log directory (Ray Serve's
    replica and proxy logs, every worker's stdout and stderr) holds the prompt."""
    with OverFillClient(service["plain"], timeout_s=60, api_key=FILE_KEY) as client:
        for bad in (dict(temperature=float("nan")), dict(max_tokens=10_000), dict(stop=["x" * 1000])):
            assert refused(lambda: client.generate_unary(PROMPT, **bad)).code == "INVALID_ARGUMENT"
        assert refused(lambda: client.generate_unary(" ".join([PROMPT] * 40))).code == "RESOURCE_EXHAUSTED"
    # The HTTP API's refusals (a bad field next to the prompt, a context overflow) and a completion log no prompt.
    for body, status in (({"prompt": PROMPT, "temperature": "hot"}, 400), ({"prompt": " ".join([PROMPT] * 40)}, 400),
                         ({"prompt": PROMPT, "max_tokens": 4}, 200)):
        assert http_post(service, "/v1/completions", {"model": service["config"].models.full, **body}) == status
    logs = [p for p in service["logs_dir"].rglob("*") if p.is_file()]

    def logged(text: str) -> list[Path]:
        return [p for p in logs if text.encode() in p.read_bytes()]

    assert wait_for(lambda: logged("Generate"), timeout_s=10)  # the logs are there: Serve logged the calls
    assert wait_for(lambda: logged("RESOURCE_EXHAUSTED"), timeout_s=10)  # and the refusals
    assert logged(PROMPT) == [] and logged("xylophone") == []


def test_the_kv_secret_is_in_no_log_file(service, monkeypatch):
    """The KV secret reaches the application through the cluster's store (services/kv_secret.py), not through its
    args or runtime_env, which Ray logs (runtime_env_agent.log held it): after the requests above and one more KV
    transfer, no file under the cluster's log directory holds it."""
    from overfill.serving.config import KV_SECRET_ENV, load_config
    from services.kv_secret import resolve_kv_secret

    secret = service["config"].kv.secret
    monkeypatch.setenv(KV_SECRET_ENV, "the-environment-comes-second")
    assert resolve_kv_secret(load_config(None)).kv.secret == secret  # what the application's builder resolved
    with OverFillClient(service["plain"], timeout_s=60, api_key=FILE_KEY) as client:
        assert len([t for piece in client.generate(PROMPT, max_tokens=4) for t in piece.token_ids]) == 4
    logs = [p for p in service["logs_dir"].rglob("*") if p.is_file()]
    # The runtime_env agent logged this application's environment (the API keys' variable): it would hold a secret
    # handed over there.
    assert any(KEYS_ENV.encode() in p.read_bytes() for p in logs if p.name.startswith("runtime_env_agent"))
    assert [p for p in logs if secret.encode() in p.read_bytes()] == []
