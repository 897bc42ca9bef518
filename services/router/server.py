"""The ingress (a Ray Serve deployment behind both of Ray Serve's proxies): the `overfill.v1.Generation` gRPC
service, `grpc.health.v1.Health`, and the OpenAI-compatible HTTP API (services/router/openai_http.py), all through
one request path.

gRPC method names are the RPC names. Each request: validate and tokenize once, prefill (a ticket comes back, never
KV bytes), stream the decode pool's tokens back with incremental detokenization and stop strings. Errors become
statuses in one place (`status_of`); the gRPC methods set them on the call, the HTTP API maps them to HTTP
(overfill/serving/openai_errors.py). Cancellation by the client (a gRPC cancel or deadline, an HTTP client that
disconnects) reaches the decode replica's stream, which frees the sequence, and any lease decode has not pulled yet
is released here. A request whose decode replica dies mid-stream is migrated once (see `_generate`,
docs/architecture.md "Failure handling")."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator

from grpc_health.v1 import health_pb2
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle

from overfill.decoder_checkpoint import read_manifest
from overfill.engine.detokenize import IncrementalDetokenizer
from overfill.engine.sampling_params import TokenLogprobs
from overfill.geometry import KVGeometry
from overfill.model_loading import resolve_model
from overfill.request_parsing import UnparsableRequest
from overfill.serving.auth import AUTH_OFF_WARNING, REFUSALS, ApiKeyChecker, load_api_keys
from overfill.serving.config import ServiceConfig, decoder_dir, kv_tls_of
from overfill.serving.key_limits import KeyConcurrency
from overfill.serving.request_log import RequestLog
from overfill.serving.tokenizer_queue import TokenizerQueue
from overfill.serving.tracing import process_tracing
from overfill.serving.types import PrefillRequest, PrefillResult, ServiceError
from overfill.serving.validation import REQUEST_ID, Limits, StopStringMatcher, max_token_chars, validate_request
from overfill.status import FinishReason, StatusCode
from overfill.transport.base import KVReceiver, KVTicket, KVTransferError, make_receiver
from overfill.transport.grpc_backend import GrpcKVReceiver
from overfill.v1 import generation_pb2 as pb
from services.metrics import RouterMetrics, served_model_name
from services.router.decode_admission import AdmissionRetry, admitted_decode_stream
from services.router.error_chain import error_chain
from services.router.grpc_handlers import HEALTH_SERVICE_NAMES, SERVICE_NAME, StatusAbort, unknown_health_service
from services.router.pool_health import PoolHealth, PoolStatus
from services.router.replica_counts import ReplicaCounts
from services.router.request_trace import RequestTrace, RequestTracer

log = logging.getLogger(__name__)

MAX_MIGRATIONS = 1  # times a request whose decode replica died continues on another one; then UNAVAILABLE
HEALTH_TIMEOUT_S = 5.0  # a pool whose replicas do not answer within this is not serving
HEALTH_MAX_AGE_S = 1.0  # health calls answer from one probe of the pools for this long (pool_health.py)
REPLICA_COUNTS_TIMEOUT_S = 1.0  # Serve's controller answering slower: the last replica counts known stand
REPLICA_COUNTS_MAX_AGE_S = 5.0  # replica counts are asked of Serve's controller at most this often (replica_counts.py)
HEALTH_WATCH_PERIOD_S = 2.0  # how often a grpc.health.v1 Watch looks at the pools again
def health_status(serving: bool) -> int:
    return health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING


async def answered(call):
    """Awaits a handle call (a DeploymentResponse is awaitable, not a coroutine)."""
    return await call


def logprobs_messages(logprobs: list[TokenLogprobs], tokenizer) -> list[pb.TokenLogprob]:
    """Log-probabilities as the public API carries them, each token with its own text (one tokenizer call for the
    whole message's tokens and alternatives)."""
    ids = [id_ for entry in logprobs for id_ in (entry.token_id, *(token_id for token_id, _ in entry.top))]
    texts = iter(tokenizer.batch_decode([[id_] for id_ in ids]) if ids else [])
    return [pb.TokenLogprob(token_id=entry.token_id, token=next(texts), logprob=entry.logprob,
                            top_logprobs=[pb.TopLogprob(token_id=token_id, token=next(texts), logprob=logprob)
                                          for token_id, logprob in entry.top])
            for entry in logprobs]


def lease_releaser(config: ServiceConfig) -> KVReceiver:
    """How the router frees a lease decode never pulled: at the KV service the ticket names. Every backend serves
    Release there over gRPC, except the in-process one of tests."""
    if config.kv.transport == "inprocess":
        return make_receiver("inprocess")
    return GrpcKVReceiver(secret=config.kv.secret, tls=kv_tls_of(config.kv))


def replica_lost(error: BaseException) -> bool:
    """Whether Ray says the replica serving a call died or became unreachable (ActorDiedError,
    ActorUnavailableError: both RayActorError), also when wrapped as another error's `.cause`."""
    return any(isinstance(e, RayActorError) for e in error_chain(error))


def service_error_of(error: BaseException) -> ServiceError | None:
    """The ServiceError behind an exception raised in another replica (Ray wraps it as `.cause`), or the status a
    refusal by Ray Serve itself stands for: a pool's handle queue is full (RESOURCE_EXHAUSTED) or the pool failed to
    deploy (UNAVAILABLE)."""
    for inner in error_chain(error):
        if isinstance(inner, RayTaskError):  # Ray's wrapper passes for its cause's class: the cause is the error
            continue
        if isinstance(inner, ServiceError):
            return inner
        if isinstance(inner, BackPressureError):
            return ServiceError(StatusCode.RESOURCE_EXHAUSTED, f"a pool's queue is full: {inner.message}")
        if isinstance(inner, DeploymentUnavailableError):
            return ServiceError(StatusCode.UNAVAILABLE, inner.message)
        if isinstance(inner, RayActorError):
            return ServiceError(StatusCode.UNAVAILABLE, "a replica serving the request died or became unreachable")
    return None


class GenerationRouter:
    def __init__(self, config: ServiceConfig, prefill: DeploymentHandle, decode: DeploymentHandle):
        from transformers import AutoConfig, AutoTokenizer

        self.config, self.prefill, self.decode = config, prefill, decode
        self.metrics = RouterMetrics(served_model_name(config))
        self.kv_releaser = lease_releaser(config)
        self.replica_counts = ReplicaCounts(REPLICA_COUNTS_TIMEOUT_S, REPLICA_COUNTS_MAX_AGE_S)
        self.pool_health = PoolHealth(self._probe_pools, HEALTH_MAX_AGE_S, HEALTH_TIMEOUT_S)
        self.admission_retry = AdmissionRetry(config.decode.admission_retry_s)
        self._late_releases: set[asyncio.Task] = set()  # leases of prefills that finished as their caller left
        self.num_running = 0
        # API keys are read here, from this replica's own file or environment; none found is a start-up error.
        self.api_keys = ApiKeyChecker(load_api_keys(config.auth)) if config.auth.enabled else None
        if self.api_keys is None:
            log.warning(AUTH_OFF_WARNING)
        self.key_concurrency = KeyConcurrency(config.auth.max_requests_per_key)  # per key, in this replica
        self.request_log = RequestLog(logging.getLogger("ray.serve"), config.server.log_prompts)
        self.request_tracer = RequestTracer(process_tracing(config.tracing, "router"), service_error_of)
        model_dir = resolve_model(config.models.full)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.limits = Limits(config.server.max_context_tokens, config.server.max_tokens_limit,
                             config.server.default_max_tokens, max_token_chars=max_token_chars(self.tokenizer),
                             max_prompt_chars=config.server.max_prompt_chars,
                             max_chat_messages=config.server.max_chat_messages)
        self.tokenizer_queue = TokenizerQueue(config.server.max_tokenizer_queue)
        decoder = decoder_dir(config.models)
        self.model_info = self._model_info(AutoConfig.from_pretrained(model_dir), read_manifest(decoder), str(decoder))

    def _model_info(self, full_config, manifest, decoder_dir: str) -> pb.ModelInfoResponse:
        geometry = KVGeometry.from_config(full_config)
        return pb.ModelInfoResponse(
            full_model=self.config.models.full, decoder=decoder_dir,
            full_parameters=manifest.full_model.num_parameters, decoder_parameters=manifest.num_parameters,
            full_hidden_size=manifest.full_model.hidden_size, decoder_hidden_size=manifest.hidden_size,
            full_intermediate_size=manifest.full_model.intermediate_size,
            decoder_intermediate_size=manifest.intermediate_size,
            geometry=pb.Geometry(num_layers=geometry.num_layers, num_attention_heads=geometry.num_attention_heads,
                                 num_kv_heads=geometry.num_kv_heads, head_dim=geometry.head_dim,
                                 vocab_size=geometry.vocab_size),
            max_context_tokens=self.config.server.max_context_tokens,
            max_tokens_limit=self.config.server.max_tokens_limit, dtype=self.config.models.dtype,
        )

    # ---- RPCs: unpack -> call -> pack ----------------------------------------------------------------------------

    async def Generate(self, request: pb.GenerateRequest, grpc_context: RayServegRPCContext):
        try:
            caller = self.check_api_key(grpc_context.invocation_metadata())
            async for response in self.observed_generate(request, caller):
                yield response
        except ServiceError as e:
            self._abort(e, grpc_context)

    async def GenerateUnary(self, request: pb.GenerateRequest, grpc_context: RayServegRPCContext):
        text, token_ids, logprobs, last = [], [], [], None
        try:
            caller = self.check_api_key(grpc_context.invocation_metadata())
            async for response in self.observed_generate(request, caller):
                text.append(response.text)
                token_ids.extend(response.token_ids)
                logprobs.extend(response.logprobs)
                last = response
        except ServiceError as e:
            self._abort(e, grpc_context)
        return pb.GenerateUnaryResponse(text="".join(text), token_ids=token_ids, finish_reason=last.finish_reason,
                                        usage=last.usage, request_id=last.request_id, logprobs=logprobs)

    async def Health(self, request: pb.HealthRequest, grpc_context: RayServegRPCContext) -> pb.HealthResponse:
        """No API key needed: load balancer and Kubernetes probes carry none, and it tells only SERVING or not and
        the replica counts."""
        self._refuse_unparsable(request, grpc_context)
        serving, replicas = await self.serving()
        return pb.HealthResponse(status="SERVING" if serving else "NOT_SERVING", replicas=replicas)

    async def GetModelInfo(self, request: pb.ModelInfoRequest, grpc_context: RayServegRPCContext):
        try:
            self.check_api_key(grpc_context.invocation_metadata())
        except ServiceError as e:
            self._abort(e, grpc_context)
        self._refuse_unparsable(request, grpc_context)
        return self.model_info

    # grpc.health.v1.Health (registered by grpc_health's own add_HealthServicer_to_server; the proxy calls these by
    # method name). No API key, like Health.

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    grpc_context: RayServegRPCContext) -> health_pb2.HealthCheckResponse:
        if request.service not in HEALTH_SERVICE_NAMES:
            self._abort(ServiceError(StatusCode.NOT_FOUND, unknown_health_service(request.service)), grpc_context)
        serving, _ = await self.serving()
        return health_pb2.HealthCheckResponse(status=health_status(serving))

    async def Watch(self, request: health_pb2.HealthCheckRequest, grpc_context: RayServegRPCContext):
        """The status now, then again each time it changes, until the client goes away (an unknown service:
        SERVICE_UNKNOWN, as the health protocol asks, and the stream stays open)."""
        last = None
        while True:
            if request.service in HEALTH_SERVICE_NAMES:
                status = health_status((await self.serving())[0])
            else:
                status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(HEALTH_WATCH_PERIOD_S)

    def __serve_build_asgi_app__(self):
        """The OpenAI-compatible HTTP API on Ray Serve's HTTP proxy, served by this same replica (build_app wraps
        this class with `serve.ingress()`, which calls this once the replica is constructed)."""
        from services.router.openai_http import build_openai_app

        return build_openai_app(self)

    # ---- shared by both APIs -------------------------------------------------------------------------------------

    async def serving(self) -> tuple[bool, dict[str, int]]:
        """Whether both pools serve, and the running replicas per deployment: the answer of the last probe of the
        pools, at most HEALTH_MAX_AGE_S old (services/router/pool_health.py), so that health calls, which need no
        API key, never reach the pools faster than that whatever their rate."""
        status = await self.pool_health.get()
        return status.serving, dict(status.replicas)

    async def _probe_pools(self) -> PoolStatus:
        """Both pools serve: each has a RUNNING replica (as Serve's controller last said) and answers `stats()`. A
        pool Serve reports empty is not serving at once, rather than after the timeout (a Kubernetes probe waits 1 s
        by default)."""
        replicas = await self.replica_counts.get()
        if replicas and not (replicas.get("prefill") and replicas.get("decode")):
            return PoolStatus(False, replicas)
        async with asyncio.TaskGroup() as probes:  # one pool failing cancels the other's call
            for pool in (self.prefill, self.decode):
                probes.create_task(answered(pool.stats.remote()))
        return PoolStatus(True, replicas)

    def check_api_key(self, metadata) -> bytes | None:
        """The ingress check, before anything else of a request runs: `authorization: Bearer <key>` (gRPC metadata
        or HTTP headers, as (name, value) pairs) against every accepted key in constant time
        (overfill/serving/auth.py). A refusal is UNAUTHENTICATED, never echoes what was sent, and is counted by
        reason (missing, malformed, invalid). Returns who the caller is, for `observed_generate`'s per-key limit:
        the accepted key's digest, or None when API keys are off."""
        if self.api_keys is None:  # auth.enabled is false
            return None
        verdict = self.api_keys.check(metadata)
        if verdict.refusal is not None:
            self.metrics.auth_rejections.inc(1, tags={"reason": verdict.refusal})
            raise ServiceError(StatusCode.UNAUTHENTICATED, REFUSALS[verdict.refusal])
        return verdict.key_id

    def _refuse_unparsable(self, request, grpc_context: RayServegRPCContext) -> None:
        """Bytes protobuf refused reach us as UnparsableRequest (grpc_handlers.py): INVALID_ARGUMENT naming the
        field. (GenerateRequests are refused by validate_request.)"""
        if isinstance(request, UnparsableRequest):
            self._abort(ServiceError(StatusCode.INVALID_ARGUMENT, request.message), grpc_context)

    async def observed_generate(self, request: pb.GenerateRequest,
                                caller: bytes | None) -> AsyncIterator[pb.GenerateResponse]:
        """`_generate` with its metrics (TTFT, ITL, E2E, tokens, outcome); a failure leaves as the ServiceError
        `status_of` makes of it. Both APIs run every request through here. `caller` (what `check_api_key` returned)
        holds one of its key's `auth.max_requests_per_key` places until the request ends, however it ends: the
        generator's `finally` runs on finish, error, cancellation and on close when the client is gone."""
        self.num_running += 1
        self.metrics.running.set(self.num_running)
        status = "OK"
        arrival = previous = time.perf_counter()
        output = []  # the text sent, kept only for server.log_prompts
        trace = self.request_tracer.start(getattr(request, "request_id", ""))  # an UnparsableRequest has none
        try:
            first = True
            with self.key_concurrency.held(caller):
                async for response in self._generate(request, trace):
                    now = time.perf_counter()
                    (self.metrics.ttft if first else self.metrics.itl).observe(now - (arrival if first else previous))
                    first, previous = False, now
                    if self.request_log.log_prompts:
                        output.append(response.text)
                    if response.finish_reason:
                        self.metrics.e2e.observe(response.usage.e2e_s)
                        self.metrics.finished("OK", response.usage.prompt_tokens, response.usage.completion_tokens)
                        self.request_log.finished(response.request_id, response.finish_reason,
                                                  response.usage.completion_tokens, "".join(output))
                        trace.finished(response.usage.completion_tokens, response.finish_reason)
                    yield response
        except asyncio.CancelledError:
            status = StatusCode.CANCELLED.value
            trace.failed(StatusCode.CANCELLED)
            raise
        except Exception as e:  # noqa: BLE001  every failure leaves as a status
            request_id = getattr(request, "request_id", "")  # an UnparsableRequest has none
            # A status names a valid id only: a 20 KB one overflowed the trailers (the client saw RESOURCE_EXHAUSTED).
            error = self.status_of(e, request_id if REQUEST_ID.fullmatch(request_id) else "")
            status = error.code.value
            trace.failed(error.code)
            raise error from None
        finally:
            trace.end()
            self.num_running -= 1
            self.metrics.running.set(self.num_running)
            if status != "OK":
                self.metrics.requests.inc(1, tags={"status": status})

    def status_of(self, error: Exception, request_id: str) -> ServiceError:
        """The one place errors become statuses (docs/architecture.md, "Errors"): the ServiceError the client sees,
        naming its request. The status leaves without the original exception chained to it: Ray Serve logs what a
        replica raises, and an exception's message may quote the request (server.log_prompts decides what
        `request_log` writes)."""
        service_error = service_error_of(error)
        if service_error is None:
            self.request_log.failed(request_id or "(unnamed)", error)
            return ServiceError(StatusCode.INTERNAL, f"internal error (request_id {request_id or 'unassigned'}): "
                                                     f"{type(error).__name__}")
        message = service_error.message
        if request_id and request_id not in message:  # every status names its request
            message = f"{message} (request_id {request_id})"
        # A fresh error, never the one another replica raised: that one carries its traceback and Ray's wrappers of
        # it, which the proxy then fails to deserialize (it answered INTERNAL instead of the status).
        return service_error.with_message(message)

    @staticmethod
    def _abort(error: ServiceError, grpc_context: RayServegRPCContext) -> None:
        """A status to the gRPC client: set on the context, and raised so the proxy sends it, as a StatusAbort (the
        proxy unpickles what is raised: see StatusAbort's note)."""
        grpc_context.set_code(error.code.to_grpc())
        grpc_context.set_details(error.message)
        raise StatusAbort(error.message) from None

    # ---- the request's path --------------------------------------------------------------------------------------

    async def _generate(self, request: pb.GenerateRequest,
                        trace: RequestTrace) -> AsyncIterator[pb.GenerateResponse]:
        """The request's path; `trace` gets its spans (services/router/request_trace.py)."""
        arrival = time.perf_counter()
        # 1) Validate and tokenize once, on a thread of its own behind a bounded queue: a long prompt takes a
        #    quarter of a second (the tokenizer releases the GIL), and meanwhile the event loop streams every other
        #    request's tokens.
        with trace.tokenize():
            valid = await self.tokenizer_queue.run(validate_request, request, self.tokenizer, self.limits)
        rid = valid.request_id
        trace.tokenized(rid, len(valid.prompt_ids))
        self.request_log.received(rid, request, len(valid.prompt_ids))
        detokenizer = IncrementalDetokenizer(self.tokenizer)
        stops = StopStringMatcher(valid.stop)
        sent: list[int] = []  # every token id the client has, in order: what a migration prefills again
        ttft_s, kv_transfer_s = 0.0, 0.0

        def message(token_ids: list[int], finish: FinishReason | None,
                    logprobs: list[TokenLogprobs] | None) -> pb.GenerateResponse:
            first_message = not sent
            sent.extend(token_ids)
            new_text = "".join(detokenizer.push(t) for t in token_ids)
            if finish is not None:
                new_text += detokenizer.flush()
            text, stopped = stops.push(new_text)
            finish = FinishReason.STOP if stopped else finish
            response = pb.GenerateResponse(text=text, token_ids=token_ids, request_id=rid)
            if valid.sampling.logprobs is not None:
                response.logprobs.extend(logprobs_messages(logprobs or [], self.tokenizer))
            if first_message:  # what the prompt came to, for clients that count usage as the stream goes
                response.usage.prompt_tokens = len(valid.prompt_ids)
            if finish is not None:
                if not stopped:
                    response.text += stops.flush()
                response.finish_reason = finish.value
                response.usage.CopyFrom(pb.Usage(
                    prompt_tokens=len(valid.prompt_ids), completion_tokens=len(sent), ttft_s=ttft_s,
                    e2e_s=time.perf_counter() - arrival, kv_transfer_s=kv_transfer_s))
            return response

        for migration in range(MAX_MIGRATIONS + 1):
            # 2) Prefill the prompt and every token already sent: the full model samples the next token (the first
            #    one; after a migration, the one after what the client has). The KV waits under a lease.
            # NOTE: KV is leased under a key of this request alone: a caller's request_id only labels logs and
            # replies, two requests may share one, and one's cleanup must never release the other's KV.
            lease_id = f"{rid}/{uuid.uuid4().hex[:12]}"
            sampling = dataclasses.replace(valid.sampling, max_new_tokens=valid.sampling.max_new_tokens - len(sent))
            with trace.prefill(migration, len(valid.prompt_ids) + len(sent)) as trace_context:
                result = await self._prefilled(PrefillRequest(lease_id, valid.prompt_ids + sent, sampling,
                                                              trace_context))
            ttft_s = ttft_s or time.perf_counter() - arrival
            head = message([result.first_token], result.finish_reason,
                           None if result.first_logprobs is None else [result.first_logprobs])
            if head.finish_reason or result.ticket is None:
                if result.ticket is not None:
                    await self._release(result.ticket)
                yield head
                return

            # 3) Decode: the decode pool pulls the KV and streams tokens; leaving early cancels it (frees its slot).
            #    A replica that refuses at admission leaves the lease intact: the pool is asked again, with the
            #    replicas that refused ranked last (decode_admission.py).
            stream, decode_done = None, False
            try:
                yield head
                stream, chunk = await admitted_decode_stream(
                    lambda avoid: self.decode.options(stream=True).generate.remote(trace.for_decode(result), sampling,
                                                                                   avoid_replicas=avoid),
                    rid, self.admission_retry, on_retry=self.metrics.decode_admission_retries.inc)
                trace.decode_started(migration, len(sent))
                while chunk is not None:
                    decode_done = chunk.finish_reason is not None
                    kv_transfer_s = chunk.kv_transfer_s or kv_transfer_s
                    response = message(chunk.token_ids, chunk.finish_reason, chunk.logprobs)
                    yield response
                    if response.finish_reason:  # EOS, max_tokens or a stop string
                        return
                    chunk = await anext(stream, None)
                raise ServiceError(StatusCode.INTERNAL,
                                   f"the decode stream of request {rid} ended without a finish reason")
            except Exception as e:
                # 4) Migration: the decode replica died (or became unreachable) mid-stream. Its tokens are all here,
                #    so prefill prompt + sent again and continue on another decode replica with the tokens left;
                #    the client never gets a token twice. At most MAX_MIGRATIONS times, then UNAVAILABLE.
                trace.decode_failed(e, len(sent))
                if not replica_lost(e):
                    raise
                if migration == MAX_MIGRATIONS:
                    raise ServiceError(StatusCode.UNAVAILABLE, f"request {rid}: its decode replica died mid-stream "
                                                               f"after {MAX_MIGRATIONS} migration(s) already") from e
                log.warning("request %s: decode replica lost after %d tokens (%s); migrating", rid, len(sent),
                            type(e).__name__)
                self.metrics.migrations.inc()
            finally:
                trace.decode_ended(len(sent))
                if not decode_done:  # stop string, client gone, deadline, or an error: free decode and prefill KV
                    if stream is not None:
                        stream.cancel()
                    await asyncio.shield(self._release(result.ticket))  # no-op if decode already pulled it

    async def _prefilled(self, request: PrefillRequest) -> PrefillResult:
        """The prefill pool's answer, within prefill.max_ticket_wait_s (DEADLINE_EXCEEDED past it). A caller that
        leaves (cancelled, or the wait ran out) cancels the call, and the outcome is still watched: a prefill that
        finished as the caller left has leased KV that nobody else knows of, and its lease is released as soon as
        its ticket arrives rather than held until its TTL."""
        call = self.prefill.prefill.remote(request)
        outcome = asyncio.ensure_future(call)
        try:
            return await asyncio.wait_for(asyncio.shield(outcome), self.config.prefill.max_ticket_wait_s)
        except TimeoutError:
            self._abandon(call, outcome)
            raise ServiceError(StatusCode.DEADLINE_EXCEEDED,
                               f"request {request.request_id.split('/')[0]}: no prefill within "
                               f"prefill.max_ticket_wait_s = {self.config.prefill.max_ticket_wait_s:g} s") from None
        except asyncio.CancelledError:
            self._abandon(call, outcome)
            raise

    def _abandon(self, call, outcome: asyncio.Future) -> None:
        """Cancel a prefill call nobody waits for any more, and release the lease of a ticket it brings anyway."""
        call.cancel()  # a prompt still queued or in its batch is dropped by the replica, which frees its KV

        def release_late_ticket(done: asyncio.Future) -> None:
            if done.cancelled() or done.exception() is not None:
                return
            if done.result().ticket is not None:
                release = asyncio.ensure_future(self._release(done.result().ticket))
                self._late_releases.add(release)  # held until it ends: the loop keeps only weak references
                release.add_done_callback(self._late_releases.discard)

        outcome.add_done_callback(release_late_ticket)

    async def _release(self, ticket: KVTicket) -> None:
        """Free a lease decode has not pulled, at the KV service that holds it (the ticket names it; a no-op once
        pulled). Fails fast when that prefill replica is gone: its KV went with it."""
        try:
            await asyncio.to_thread(self.kv_releaser.release, ticket)
        except KVTransferError as e:
            log.info("KV lease %s not released (%s): its prefill replica is gone", ticket.request_id, e.code)

    def __del__(self):
        """Ray Serve calls this when it stops the replica: spans not exported yet leave first."""
        if hasattr(self, "request_tracer"):  # __init__ may have failed before
            self.request_tracer.flush()
