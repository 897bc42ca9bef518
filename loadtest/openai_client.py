"""The OpenAI-compatible HTTP side of the load generator (`overfill loadtest --backend openai`): streamed completions
over one aiohttp session, timed as the gRPC side times Generate so that the same metrics come out.

A request with `messages` goes to POST /v1/chat/completions, one with a raw `prompt` to /v1/completions, both with
`stream: true` and `stream_options.include_usage`. A *chunk* is one server-sent event that carries text: its arrival
time feeds TTFT, ITL and E2EL as a gRPC message does. The events carry no token counts, so each counts one token
until the last event's usage gives the request's real counts (prompt and completion tokens, as the service counted
them); the rest of the completion tokens are added to the last chunk, which changes TPOT and the token totals but no
chunk time. Failures are recorded under the gRPC status names the gRPC side records (from the error body's `code`,
else from the HTTP status), so errors_by_code reads the same for both APIs.

    OpenAITarget(connection)   same methods as loadtest.client.GrpcTarget: connect, probe, send, replicas
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time

import aiohttp

from loadtest.client import Connection, Progress, ServiceInfo
from loadtest.datasets import SampleRequest
from loadtest.records import OK, RequestRecord
from overfill.status import StatusCode

# OpenAI's own error codes for cases the gRPC API has a status for (overfill/serving/openai_errors.py).
STATUS_OF_OPENAI_CODE = {"context_length_exceeded": "RESOURCE_EXHAUSTED", "invalid_api_key": "UNAUTHENTICATED",
                         "model_not_found": "NOT_FOUND"}
# Google's gRPC-to-HTTP table read backwards, for a server whose error body names no gRPC status.
STATUS_OF_HTTP = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
                  503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
GRPC_STATUS_NAMES = {code.value for code in StatusCode}


def status_of_error(http_status: int, body: object) -> tuple[str, str]:
    """(gRPC status name, message) of an OpenAI error body `{"error": {"message", "code", ...}}` or of the HTTP
    status alone."""
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    code = str(error.get("code") or "")
    status = (code.upper() if code.upper() in GRPC_STATUS_NAMES else STATUS_OF_OPENAI_CODE.get(code)) \
        or STATUS_OF_HTTP.get(http_status, f"HTTP_{http_status}")
    return status, str(error.get("message") or f"HTTP {http_status}")


def chunk_text(event: dict) -> str:
    """The text a streamed chat or text completion chunk carries ("" for the role, finish and usage chunks)."""
    choices = event.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    return (choice.get("delta") or {}).get("content") or choice.get("text") or ""


class OpenAITarget:
    """The OpenAI-compatible HTTP API at http(s)://TARGET/v1 through one aiohttp session (as many connections as
    requests in flight): `async with OpenAITarget(connection) as target`."""

    def __init__(self, connection: Connection):
        self.connection = connection
        scheme = "https" if connection.tls_ca else "http"
        self.root_url = f"{scheme}://{connection.target}"
        self.model: str | None = None  # the served model id, learnt by connect() or probe()

    async def __aenter__(self) -> OpenAITarget:
        connection = self.connection
        tls = ssl.create_default_context(cafile=str(connection.tls_ca)) if connection.tls_ca else None
        headers = {"authorization": f"Bearer {connection.api_key}"} if connection.api_key else {}
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=tls if tls is not None else True),  # limit 0: no cap
            headers=headers, timeout=aiohttp.ClientTimeout(total=None))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.session.close()

    def _request_options(self) -> dict:
        name = self.connection.tls_server_name
        return {"server_hostname": name} if name else {}

    async def _get(self, path: str, timeout_s: float) -> tuple[int, object]:
        async with self.session.get(self.root_url + path, timeout=aiohttp.ClientTimeout(total=timeout_s),
                                    **self._request_options()) as response:
            return response.status, await response.json(content_type=None)

    async def _served_model(self) -> tuple[str, dict]:
        """The model id and its `overfill` entry (GetModelInfo) from GET /v1/models; a refused key names the flag."""
        status, body = await self._get("/v1/models", timeout_s=10)
        if status != 200:
            code, message = status_of_error(status, body)
            hint = " (check --api-key / $OVERFILL_API_KEY)" if code == "UNAUTHENTICATED" else ""
            raise ValueError(f"--target {self.connection.target}: GET /v1/models: {code}: {message}{hint}")
        (card, *_) = body["data"]
        self.model = card["id"]
        return card["id"], card.get("overfill") or {}

    async def connect(self, timeout_s: float = 30.0) -> None:
        """Reach the service and learn the model id before a benchmark's clock starts."""
        await asyncio.wait_for(self._served_model(), timeout=timeout_s)

    async def probe(self, ready_timeout_s: float) -> ServiceInfo:
        """Wait until GET /health answers 200 (SERVING), then read the served model from GET /v1/models."""
        deadline = time.monotonic() + ready_timeout_s
        last = "no answer"
        while True:
            try:
                status, body = await self._get("/health", timeout_s=5)
                if status == 200:
                    break
                last = f"/health answers {status} {body.get('status') if isinstance(body, dict) else ''}".strip()
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
                last = f"{type(e).__name__}: {e}"
            if time.monotonic() > deadline:
                raise ValueError(f"--target {self.connection.target} is not ready after {ready_timeout_s:.0f} s "
                                 f"({last})")
            await asyncio.sleep(0.5)
        model, info = await self._served_model()
        return ServiceInfo(info.get("full_model") or None, info.get("max_tokens_limit") or None, model)

    async def replicas(self, timeout_s: float) -> dict[str, int] | None:
        """Running replicas per pool from GET /health's `replicas`; None if it is missing or /health failed."""
        try:
            _, body = await self._get("/health", timeout_s)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return None
        replicas = body.get("replicas") if isinstance(body, dict) else None
        if not isinstance(replicas, dict):
            return None
        return {name: int(n) for name, n in sorted(replicas.items())} or None

    def _body(self, sample: SampleRequest, temperature: float | None) -> tuple[str, dict]:
        body: dict = {"model": self.model, "stream": True, "stream_options": {"include_usage": True}}
        if sample.max_tokens:
            body["max_tokens"] = sample.max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        if sample.messages:
            return "/v1/chat/completions", {**body, "messages": list(sample.messages)}
        return "/v1/completions", {**body, "prompt": sample.prompt}

    async def send(self, sample: SampleRequest, record: RequestRecord, origin: float, timeout_s: float | None,
                   temperature: float | None, progress: Progress, prompt_tokens: dict[int, int]) -> RequestRecord:
        """Stream one completion, filling `record` (times relative to `origin`, a perf_counter reading). Failures
        become the record's status; the service's prompt token count goes to `prompt_tokens[record.index]`."""
        clock = time.perf_counter
        path, body = self._body(sample, temperature)
        record.send_s = clock() - origin
        progress.on_send()
        usage = None
        try:
            async with self.session.post(self.root_url + path, json=body, headers={"x-request-id": record.request_id},
                                         timeout=aiohttp.ClientTimeout(total=timeout_s),
                                         **self._request_options()) as response:
                if response.status != 200:
                    record.status, record.error = status_of_error(response.status,
                                                                  await response.json(content_type=None))
                    return record
                async for line in response.content:  # server-sent events, one `data: ...` line each
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:  # a failure after the stream began
                        record.status, record.error = status_of_error(response.status, event)
                        return record
                    if chunk_text(event):
                        record.chunk_times_s.append(clock() - origin)
                        record.chunk_tokens.append(1)
                        progress.on_tokens(1)
                    usage = event.get("usage") or usage
            if not record.chunk_times_s:
                record.status, record.error = "UNKNOWN", "the stream ended without any text"
            elif usage:
                prompt_tokens[record.index] = usage["prompt_tokens"]
                uncounted = usage["completion_tokens"] - record.output_tokens
                if uncounted > 0:
                    record.chunk_tokens[-1] += uncounted
                    progress.on_tokens(uncounted)
        except asyncio.TimeoutError:
            record.status, record.error = "DEADLINE_EXCEEDED", f"no complete answer within {timeout_s} s"
        except (aiohttp.ClientError, ValueError) as e:  # ValueError: an event that is not JSON
            record.status, record.error = "UNAVAILABLE", f"{type(e).__name__}: {e}"
        except asyncio.CancelledError:  # the benchmark itself was stopped
            record.status = "CANCELLED"
            raise
        finally:
            if record.status != OK and not record.error:
                record.error = record.status
            progress.on_done(record)
        return record
