"""The live experiments of issue 15 against a running service, as an outsider would run them: each attack runs while
one healthy stream is served, and the table says what that stream saw, how the attack's requests were answered,
what was left held afterwards, and whether the issue's "Done when" criterion is met.

    bash runs/hostile.sh                      # prints the table, writes docs/bench/hostile.json

It starts the service itself (services.app.start_service) from deploy/local.yaml with API keys on (a key file it
writes) and the TLS front on (a throwaway CA and certificate it writes), so keyless attacks meet the real ingress: the
Health flood runs against the public TLS port (services/tls_front.py, which answers health from its own cache) and,
for comparison, against Ray Serve's proxy port behind it. Malformed frames are also sent to a bare grpcio server with
the same message limit, nothing of Ray or ours in it, as the reference for what gRPC's own refusal costs there. It serves the embedded default model when the default decoder
is built (overfill.default_decoder), else tiny random models built the way the tests build them (the ingress,
parsers and queues under attack are the same; tokenizer timings are then those of the tiny tokenizer).

Why a healthy stream: the attacks matter by what they do to other callers. Its "longest gap" is the longest time
between two messages of one stream inside the window; the quiet value is measured just before each attack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
from collections import Counter
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from overfill.client import AsyncOverFillClient, OverFillClient, OverFillError, make_request  # noqa: E402
from overfill.v1 import generation_pb2 as pb  # noqa: E402
from overfill.v1 import generation_pb2_grpc as pb_grpc  # noqa: E402

MALFORMED_FRAME = b"\x18\x01" * 4_190_000 + b"\x0a\x05ab"  # 8 MiB that protobuf refuses (issue 15, item 1)
GENERATE_METHOD = "/overfill.v1.Generation/Generate"
HEALTHY_PROMPT = "Count slowly from one to one hundred:"
WORST_CASE_CHARS = 166_000  # about the longest text the default limits let through (81 chars x 2047 tokens)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---- what is measured --------------------------------------------------------------------------------------------

@dataclass
class Row:
    attack: str
    quiet_gap_s: float | None = None        # the healthy stream's longest gap just before the attack
    attack_gap_s: float | None = None       # ... and during it
    answers: dict[str, int] = field(default_factory=dict)  # status -> how many of the attack's requests
    refusal_p50_s: float | None = None
    refusal_max_s: float | None = None
    leases_after: int | None = None
    busy_slots_after: int | None = None
    criterion: str = ""
    passed: bool | None = None              # None: skipped (or a reference row)
    reference: bool = False                 # a measurement to compare with, not an attack on the service
    note: str = ""


class HealthyStream:
    """One well-behaved client in a process of its own (so the attackers' client-side work, such as building 300k
    messages, cannot stall it through this process's GIL): streams back to back with a valid key and reports the
    arrival of every message, so any window's longest gap between two messages of one stream can be read after."""

    def __init__(self, address: str, api_key: str, max_tokens: int):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.arrivals: list[tuple[int, float]] = []  # (stream number, time.monotonic(): system-wide on Linux)
        self.errors: list[str] = []
        self._stop, self._reports = context.Event(), context.Queue()
        self._process = context.Process(target=stream_back_to_back, name="healthy-stream", daemon=True,
                                        args=(address, api_key, max_tokens, self._stop, self._reports))
        self._reader = threading.Thread(target=self._read, name="healthy-stream-reader", daemon=True)

    def start(self) -> None:
        self._process.start()
        self._reader.start()

    def stop(self) -> None:
        self._stop.set()
        self._process.join(timeout=60)
        self._reports.put(None)
        self._reader.join(timeout=10)

    def _read(self) -> None:
        while (report := self._reports.get()) is not None:
            if isinstance(report, str):
                self.errors.append(report)
            else:
                self.arrivals.append(report)

    def longest_gap(self, start: float, end: float) -> float | None:
        gaps, previous = [], None
        for number, at in self.arrivals:
            if start <= at <= end and previous is not None and previous[0] == number and previous[1] >= start:
                gaps.append(at - previous[1])
            previous = (number, at)
        return max(gaps) if gaps else None


def stream_back_to_back(address: str, api_key: str, max_tokens: int, stop, reports) -> None:
    """The healthy stream's process: (stream number, arrival time) per message, a status name per failure."""
    with OverFillClient(address, timeout_s=120, api_key=api_key) as client:
        number = 0
        while not stop.is_set():
            number += 1
            try:
                for _ in client.generate(HEALTHY_PROMPT, max_tokens=max_tokens, ignore_eos=True):
                    reports.put((number, time.monotonic()))
            except OverFillError as e:
                reports.put(str(e.code))


def summarize(row: Row, outcomes: list[tuple[str, float]]) -> None:
    """Counts by status and the time to refusal (p50, max) of every request not answered OK."""
    for status, _ in outcomes:
        row.answers[status] = row.answers.get(status, 0) + 1
    refusals = [seconds for status, seconds in outcomes if status != "OK"]
    if refusals:
        row.refusal_p50_s, row.refusal_max_s = statistics.median(refusals), max(refusals)


def kv_held(config) -> tuple[int, int]:
    """(leases held by prefill, decode slots in use), from the pools' own `stats()` through Serve handles."""
    from ray import serve

    prefill = serve.get_deployment_handle("prefill", config.server.app_name).stats.remote().result()
    decode = serve.get_deployment_handle("decode", config.server.app_name).stats.remote().result()
    return prefill["num_leases"], config.decode.num_slots - decode["num_free_slots"]


def wait_for_no_kv(config, timeout_s: float, num_healthy_slots: int) -> tuple[int, int, float]:
    """Poll until no lease and no slot but the healthy stream's is held, or `timeout_s`: (leases, busy slots beyond
    the healthy stream's, seconds waited)."""
    start = time.monotonic()
    while True:
        leases, busy = kv_held(config)
        busy = max(0, busy - num_healthy_slots)
        if (leases == 0 and busy == 0) or time.monotonic() - start > timeout_s:
            return leases, busy, time.monotonic() - start
        time.sleep(0.25)


# ---- the attacks ---------------------------------------------------------------------------------------------------

async def malformed_frames(address: str, num_clients: int, duration_s: float) -> list[tuple[str, float]]:
    """Keyless clients sending 8 MiB frames protobuf refuses, raw bytes through an identity serializer, back to back."""
    outcomes = []

    async def one_client():
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_stream(GENERATE_METHOD, request_serializer=None, response_deserializer=None)
            end = time.monotonic() + duration_s
            while time.monotonic() < end:
                start = time.monotonic()
                try:
                    async for _ in call(MALFORMED_FRAME, timeout=60):
                        pass
                    status = "OK"
                except grpc.aio.AioRpcError as e:
                    status = e.code().name
                outcomes.append((status, time.monotonic() - start))

    await asyncio.gather(*(one_client() for _ in range(num_clients)))
    return outcomes


async def health_flood(address: str, num_calls: int, concurrency: int,
                       root_certificates: bytes | None = None) -> list[tuple[str, float]]:
    """Keyless `Health` calls, `concurrency` at a time (over TLS when `root_certificates` is given)."""
    outcomes, left = [], iter(range(num_calls))

    async def worker(stub):
        for _ in left:
            start = time.monotonic()
            try:
                reply = await stub.Health(pb.HealthRequest(), timeout=30)
                status = "OK" if reply.status == "SERVING" else reply.status
            except grpc.aio.AioRpcError as e:
                status = e.code().name
            outcomes.append((status, time.monotonic() - start))

    channel = (grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(root_certificates))
               if root_certificates else grpc.aio.insecure_channel(address))
    async with channel:
        await asyncio.gather(*(worker(pb_grpc.GenerationStub(channel)) for _ in range(concurrency)))
    return outcomes


BARE_SERVER = """
import sys
from concurrent import futures
import grpc
server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.max_receive_message_length", int(sys.argv[1]))])
server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("overfill.v1.Generation", {
    "Generate": grpc.unary_stream_rpc_method_handler(lambda request, context: iter(()))})])
print(server.add_insecure_port("127.0.0.1:0"), flush=True)
server.start()
server.wait_for_termination()
"""


def bare_grpc_reference(num_clients: int, duration_s: float) -> list[tuple[str, float]]:
    """The malformed frames against a bare grpcio server in a process of its own, with the proxy's message limit and
    nothing of Ray or ours: what gRPC itself takes to refuse them on this machine."""
    import subprocess

    from services.router.grpc_handlers import MAX_REQUEST_BYTES

    server = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(MAX_REQUEST_BYTES)], stdout=subprocess.PIPE,
                              text=True)
    try:
        port = int(server.stdout.readline())
        return asyncio.run(malformed_frames(f"127.0.0.1:{port}", num_clients, duration_s))
    finally:
        server.terminate()
        server.wait(timeout=10)


def worst_case_requests() -> list[tuple[str, dict]]:
    """(name, GenerateRequest fields) of the tokenizer's worst cases: sizes past every limit, and the longest texts
    that may pass them, in the shapes that tokenize slowest."""
    n = WORST_CASE_CHARS
    return [
        ("660K-char prompt", {"prompt": "word " * 132_000}),
        ("chat of 300k empty messages", {"messages": [{"role": "user", "content": ""}] * 300_000}),
        ("no spaces", {"prompt": ("abcdefghij" * (n // 10 + 1))[:n]}),
        ("one repeated letter", {"prompt": "a" * n}),
        ("CJK", {"prompt": ("漢字仮名交じり文" * (n // 8 + 1))[:n]}),
        ("combining marks", {"prompt": ("e\u0301\u0302\u0303" * (n // 4 + 1))[:n]}),
    ]


async def tokenizer_worst_cases(address: str, http_url: str, api_key: str) -> list[tuple[str, str, float]]:
    """Each worst case over gRPC, then the 300k-message chat over HTTP (the JSON schema's own cap): (name, status,
    seconds). Requests are built before the clock starts: building 300k messages in Python takes the client a
    second."""
    outcomes = []
    metadata = (("authorization", f"Bearer {api_key}"),)
    async with grpc.aio.insecure_channel(address, options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = pb_grpc.GenerationStub(channel)
        for name, fields in worst_case_requests():
            request = make_request(max_tokens=1, **fields)
            start = time.monotonic()
            try:
                await stub.GenerateUnary(request, timeout=60, metadata=metadata)
                status = "OK"
            except grpc.aio.AioRpcError as e:
                status = e.code().name
            outcomes.append((name, status, time.monotonic() - start))
    body = json.dumps({"model": "m", "messages": [{"role": "user"}] * 300_000}).encode()
    start = time.monotonic()
    status = await asyncio.to_thread(http_status, f"{http_url}/v1/chat/completions", body, api_key)
    outcomes.append((f"HTTP chat of 300k messages ({len(body) >> 20} MiB)", f"HTTP {status}",
                     time.monotonic() - start))
    return outcomes


def http_status(url: str, body: bytes, api_key: str) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "authorization": f"Bearer {api_key}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


async def per_key_flood(address: str, flooding_key: str, other_key: str, num_streams: int,
                        max_tokens: int) -> tuple[list[tuple[str, float]], str, list[tuple[str, str]]]:
    """`num_streams` streams of one key at once, and one request of another key meanwhile: (the flood's outcomes,
    the other key's status, (status, message) of every refusal)."""
    messages = []

    async def one(key: str) -> tuple[str, float]:
        start = time.monotonic()
        async with AsyncOverFillClient(address, timeout_s=120, api_key=key) as client:
            try:
                async for _ in client.generate(HEALTHY_PROMPT, max_tokens=max_tokens, ignore_eos=True):
                    pass
                return "OK", time.monotonic() - start
            except OverFillError as e:
                messages.append((e.code, e.message))
                return e.code, time.monotonic() - start

    *flood, (other, _) = await asyncio.gather(*(one(flooding_key) for _ in range(num_streams)), one(other_key))
    return flood, other, messages


async def cancel_storm(address: str, keys: list[str], num_streams: int,
                       per_key: int) -> tuple[list[tuple[str, float]], list[str]]:
    """`num_streams` streams, each cancelled at its first token, spread over `keys` with at most `per_key` of a key
    open at once (the per-key limit): (outcomes, the message of every refusal)."""
    outcomes, refusals, left = [], [], iter(range(num_streams))

    async def worker(client):
        for _ in left:
            start = time.monotonic()
            stream = client.generate(HEALTHY_PROMPT, max_tokens=64, ignore_eos=True)
            try:
                await anext(stream)
                status = "cancelled at first token"
            except OverFillError as e:
                status = e.code
                refusals.append(e.message)
            finally:
                await stream.aclose()
            outcomes.append((status, time.monotonic() - start))

    clients = [AsyncOverFillClient(address, timeout_s=60, api_key=key) for key in keys]
    try:
        await asyncio.gather(*(worker(client) for client in clients for _ in range(per_key)))
    finally:
        for client in clients:
            await client.close()
    return outcomes, refusals


def secrets_in_logs(logs_dir: Path, secrets: dict[str, str]) -> dict[str, list[str]]:
    """Which log files (under the Ray session's logs) hold which secret: name -> file names."""
    found = {name: [] for name in secrets}
    for path in logs_dir.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        for name, secret in secrets.items():
            if secret.encode() in data:
                found[name].append(str(path.relative_to(logs_dir)))
    return found


# ---- the run -------------------------------------------------------------------------------------------------------

def service_config(work: Path, keys_file: Path, max_per_key: int):
    """deploy/local.yaml with API keys on, a per-key limit and the TLS front (a certificate for 127.0.0.1 from a CA
    made here, `work`/tls/ca.crt); the default models if the default decoder is built, else tiny random ones (and
    the small limits the tests use with them)."""
    from overfill.default_decoder import default_decoder_dir
    from overfill.serving.config import load_config
    from tests.test_kv_mtls import write_ca_and_certificate

    tls = write_ca_and_certificate(work / "tls", "hostile", ["localhost"], ["127.0.0.1"])
    overrides = ["auth.enabled=true", f"auth.api_keys_file={keys_file}", f"auth.max_requests_per_key={max_per_key}",
                 "auth.api_keys_env=OVERFILL_HOSTILE_UNSET",  # keys from the file only
                 f"server.tls_cert_file={tls.cert}", f"server.tls_key_file={tls.key}"]
    if default_decoder_dir().is_dir():
        return load_config(REPO / "deploy/local.yaml", overrides), "smollm2-135m + default decoder"
    from tests.service_helpers import build_tiny_models

    full_dir, decoder_dir = build_tiny_models(work / "models")
    overrides += [f"models.full={full_dir}", f"models.decoder={decoder_dir}", "server.max_context_tokens=256",
                  "server.max_tokens_limit=64", "server.default_max_tokens=16"]
    return load_config(REPO / "deploy/local.yaml", overrides), "tiny random models (default decoder not built)"


def run(args) -> list[Row]:
    import ray

    from services.app import read_serve_file, start_service

    work = Path(tempfile.mkdtemp(prefix="overfill-hostile-"))
    import secrets as random_keys
    keys = {name: random_keys.token_urlsafe(24) for name in ("healthy", "flooding", "other",
                                                             *(f"storm{i}" for i in range(args.storm_keys)))}
    keys_file = work / "api-keys"
    keys_file.write_text("".join(f"{key}\n" for key in keys.values()))
    config, models = service_config(work, keys_file, args.max_per_key)
    progress(f"starting the service ({models}), API keys on, auth.max_requests_per_key={args.max_per_key}")
    config = start_service(config, serve_file=read_serve_file(REPO / "deploy/local.yaml"))
    address = f"127.0.0.1:{config.server.grpc_port}"
    tls_address, root_certificates = f"127.0.0.1:{config.server.tls_port}", (work / "tls" / "ca.crt").read_bytes()
    max_tokens = config.server.max_tokens_limit
    healthy = HealthyStream(address, keys["healthy"], min(max_tokens, 256))
    healthy.start()
    rows: list[Row] = []

    def attack(row: Row, body, bounds_gap: bool = True) -> Row:
        """Quiet window, then the attack; the healthy stream's longest gap in each, then what is held after.
        `body(row)` runs the attack and says whether its own criterion is met; `bounds_gap`: the criterion also
        asks that the healthy stream's longest gap stay within 3x its quiet value."""
        progress(f"{row.attack}: quiet {args.quiet_s:g} s")
        time.sleep(args.quiet_s)
        row.quiet_gap_s = healthy.longest_gap(time.monotonic() - args.quiet_s, time.monotonic())
        progress(f"{row.attack}: attacking")
        start = time.monotonic()
        met = body(row)
        row.attack_gap_s = healthy.longest_gap(start, time.monotonic())
        row.passed = met and (not bounds_gap or gap_ok(row))
        row.leases_after, row.busy_slots_after = kv_held(config)
        progress(f"{row.attack}: done ({row.answers})")
        rows.append(row)
        return row

    def gap_ok(row: Row) -> bool:
        return None not in (row.quiet_gap_s, row.attack_gap_s) and row.attack_gap_s <= 3 * row.quiet_gap_s

    try:
        # 1) Malformed 8 MiB frames, keyless.
        def malformed(row):
            summarize(row, asyncio.run(malformed_frames(address, args.malformed_clients, args.malformed_s)))
            return row.refusal_max_s is not None and row.refusal_max_s < 1.0 and "OK" not in row.answers
        attack(Row(f"{args.malformed_clients} keyless clients, malformed 8 MiB frames for {args.malformed_s:g} s",
                   criterion="gap <= 3x quiet; every frame refused in < 1 s"), malformed)
        progress("reference: the same frames against a bare grpcio server")
        reference = Row(f"reference, not an attack on the service: the same frames for {args.malformed_s:g} s "
                        "against a bare grpcio server with the same limit (no Ray, nothing of ours)",
                        criterion="reported only: what gRPC's own refusal takes on this machine", reference=True)
        summarize(reference, bare_grpc_reference(args.malformed_clients, args.malformed_s))
        rows.append(reference)

        # 2) Health flood, keyless: at the public port (the TLS front), then at Ray Serve's proxy port behind it.
        for where, target, roots in (("the TLS front (public port)", tls_address, root_certificates),
                                     ("Ray Serve's proxy port (grpc_port, not public with TLS on)", address, None)):
            def flood(row, target=target, roots=roots):
                summarize(row, asyncio.run(health_flood(target, args.health_calls, 64, roots)))
                return set(row.answers) == {"OK"}
            attack(Row(f"keyless Health flood on {where}, {args.health_calls} calls, 64 at once",
                       criterion="gap <= 3x quiet; every call answered SERVING"), flood)

        # 3) Tokenizer worst cases, one after the other, with a valid key (a keyless one is refused before).
        def worst(row):
            cases = asyncio.run(tokenizer_worst_cases(address, f"http://127.0.0.1:{config.server.http_port}",
                                                      keys["other"]))
            summarize(row, [(status, seconds) for _, status, seconds in cases])
            row.note = "; ".join(f"{name}: {status} {seconds:.2f} s" for name, status, seconds in cases)
            too_big = [cases[0], cases[1], cases[-1]]  # 660K chars, 300k messages over gRPC and over HTTP
            return all(status not in ("OK", "HTTP 200") and seconds < 1.0 for _, status, seconds in too_big)
        attack(Row("tokenizer worst cases (660K chars, 300k messages on gRPC and HTTP, 166K chars x 4 shapes)",
                   criterion="gap <= 3x quiet; the 660K prompt and 300k-message chats refused in < 1 s"), worst)

        # 4) Per-key flood.
        def per_key(row):
            flood, other, messages = asyncio.run(per_key_flood(
                address, keys["flooding"], keys["other"], 4 * args.max_per_key, max_tokens))
            summarize(row, flood)
            named = all("auth.max_requests_per_key" in m for code, m in messages if code == "RESOURCE_EXHAUSTED")
            row.note = f"the other key's request: {other}"
            return other == "OK" and row.answers.get("RESOURCE_EXHAUSTED", 0) > 0 and named \
                and row.answers.get("OK", 0) <= args.max_per_key * config.server.num_replicas
        attack(Row(f"one key opens {4 * args.max_per_key} streams (limit {args.max_per_key}), another key served",
                   criterion="past the limit RESOURCE_EXHAUSTED naming the field; the other key served"), per_key,
               bounds_gap=False)

        # 5) Cancel storm.
        def storm(row):
            storm_keys = [keys[f"storm{i}"] for i in range(args.storm_keys)]
            # One stream at a time per key: a cancelled stream's place comes back only once the router has freed
            # its KV, a moment after its client left, and the storm is not about the per-key limit.
            outcomes, refusals = asyncio.run(cancel_storm(address, storm_keys, args.storm_streams, 1))
            summarize(row, [(s, t) for s, t in outcomes if s != "cancelled at first token"])
            row.answers["cancelled at first token"] = args.storm_streams - sum(row.answers.values())
            leases, busy, waited = wait_for_no_kv(config, config.kv.lease_ttl_s, num_healthy_slots=1)
            reasons = Counter(m.split(" (request")[0][:90] for m in refusals)
            row.note = f"KV free {waited:.1f} s after the storm (lease TTL {config.kv.lease_ttl_s:g} s)" + "".join(
                f"; refused {num}x: {reason}" for reason, num in reasons.most_common(3))
            return leases == 0 and busy == 0
        attack(Row(f"cancel storm: {args.storm_streams} streams cancelled at their first token",
                   criterion="0 leases and 0 slots held within the lease TTL"), storm, bounds_gap=False)
    finally:
        healthy.stop()

    # 6) Secrets in logs: every file of the Ray session's logs, for the KV secret and every API key.
    logs_dir = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    progress(f"grepping {sum(1 for p in logs_dir.rglob('*') if p.is_file())} log files for the secrets")
    found = secrets_in_logs(logs_dir, {"kv.secret": config.kv.secret, **{f"API key {n}": k for n, k in keys.items()}})
    leaked = {name: files for name, files in found.items() if files}
    rows.append(Row("grep every Ray log file for the KV secret and the API keys", criterion="no secret in any log",
                    passed=not leaked, note=json.dumps(leaked) if leaked else f"{len(found)} secrets, none found"))

    # 7) A blackholed KV port needs packet filtering (iptables) and root.
    rows.append(Row("blackholed KV port", criterion="requests fail within their deadline", passed=None,
                    note="skipped: needs root/iptables"))
    if healthy.errors:
        rows[0].note = (rows[0].note + f"; healthy stream errors over the run: {healthy.errors}").lstrip("; ")
    return rows


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def table(rows: list[Row]) -> str:
    lines = ["| attack | healthy gap quiet s | under attack s | answers | refusal p50 s | max s | leases, "
             "busy slots after (the healthy stream holds 1) | criterion | result |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        answers = ", ".join(f"{status} {num}" for status, num in row.answers.items()) or "-"
        held = "-" if row.leases_after is None else f"{row.leases_after}, {row.busy_slots_after}"
        result = "reference" if row.reference else (
            "skipped" if row.passed is None else ("pass" if row.passed else "FAIL"))
        lines.append(f"| {row.attack} | {seconds(row.quiet_gap_s)} | {seconds(row.attack_gap_s)} | {answers} | "
                     f"{seconds(row.refusal_p50_s)} | {seconds(row.refusal_max_s)} | {held} | {row.criterion} | "
                     f"{result} |")
    notes = [f"- {row.attack}: {row.note}" for row in rows if row.note]
    return "\n".join(lines + [""] + notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=REPO / "docs/bench/hostile.json")
    parser.add_argument("--quiet-s", type=float, default=4.0, help="the healthy stream alone before each attack")
    parser.add_argument("--malformed-clients", type=int, default=4)
    parser.add_argument("--malformed-s", type=float, default=10.0)
    parser.add_argument("--health-calls", type=int, default=3000)
    parser.add_argument("--max-per-key", type=int, default=4, help="auth.max_requests_per_key for the run")
    parser.add_argument("--storm-streams", type=int, default=500)
    parser.add_argument("--storm-keys", type=int, default=16,
                        help="keys the cancel storm is spread over, one stream at a time each")
    args = parser.parse_args(argv)
    from services.app import stop_service

    started = time.monotonic()
    try:
        rows = run(args)
    finally:
        progress("stopping the service")
        stop_service()  # and the Ray cluster it started, also after a failure
    print(table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "machine": f"{os.cpu_count()} CPUs", "seconds": round(time.monotonic() - started, 1),
        "settings": {k: v for k, v in vars(args).items() if k != "json"}, "rows": [asdict(r) for r in rows],
    }, indent=2, default=str) + "\n")
    progress(f"wrote {args.json}")
    return 0 if all(row.passed is not False for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
