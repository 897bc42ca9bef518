"""The gRPC ingress (Ray Serve deployment behind Ray Serve's gRPC proxy): the `overfill.v1.Generation` service.

Method names are the RPC names. Each request: validate and tokenize once, prefill (a ticket comes back, never KV
bytes), stream the decode pool's tokens back with incremental detokenization and stop strings. Errors are mapped to
gRPC statuses in one place (`_abort`); cancellation by the client (or its deadline) reaches the decode replica's
stream, which frees the sequence, and any lease decode has not pulled yet is released here.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import grpc
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.grpc_util import RayServegRPCContext
from ray.serve.handle import DeploymentHandle

from overfill.decoder_checkpoint import read_manifest
from overfill.default_decoder import resolve_decoder
from overfill.engine.detokenize import IncrementalDetokenizer
from overfill.geometry import KVGeometry
from overfill.model_loading import resolve_model
from overfill.request_parsing import UnparsableRequest
from overfill.serving.auth import AUTH_OFF_WARNING, REFUSALS, ApiKeyChecker, load_api_keys
from overfill.serving.config import ServiceConfig
from overfill.serving.request_log import RequestLog
from overfill.serving.types import PrefillRequest, ServiceError
from overfill.serving.validation import Limits, StopStringMatcher, validate_request
from overfill.v1 import generation_pb2 as pb
from services.metrics import RouterMetrics
from services.router.replica_counts import ReplicaCounts

log = logging.getLogger(__name__)


def service_error_of(error: BaseException) -> ServiceError | None:
    """The ServiceError behind an exception raised in another replica (Ray wraps it as `.cause`), or the status a
    refusal by Ray Serve itself stands for: a pool's handle queue is full (RESOURCE_EXHAUSTED) or the pool failed to
    deploy (UNAVAILABLE)."""
    seen = 0
    while error is not None and seen < 5:
        if isinstance(error, ServiceError):
            return error
        if isinstance(error, BackPressureError):
            return ServiceError("RESOURCE_EXHAUSTED", f"a pool's queue is full: {error.message}")
        if isinstance(error, DeploymentUnavailableError):
            return ServiceError("UNAVAILABLE", error.message)
        error = getattr(error, "cause", None) or error.__cause__
        seen += 1
    return None


class GenerationRouter:
    def __init__(self, config: ServiceConfig, prefill: DeploymentHandle, decode: DeploymentHandle):
        from transformers import AutoConfig, AutoTokenizer

        self.config, self.prefill, self.decode = config, prefill, decode
        self.metrics = RouterMetrics()
        self.replica_counts = ReplicaCounts(config.server.app_name)
        self.num_running = 0
        # API keys are read here, from this replica's own file or environment; none found is a start-up error.
        self.api_keys = ApiKeyChecker(load_api_keys(config.auth)) if config.auth.enabled else None
        if self.api_keys is None:
            log.warning(AUTH_OFF_WARNING)
        self.request_log = RequestLog(logging.getLogger("ray.serve"), config.server.log_prompts)
        model_dir = resolve_model(config.models.full)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.limits = Limits(config.server.max_context_tokens, config.server.max_tokens_limit,
                             config.server.default_max_tokens)
        decoder_dir = resolve_decoder(config.models.decoder, config.models.full)
        self.model_info = self._model_info(AutoConfig.from_pretrained(model_dir), read_manifest(decoder_dir),
                                           str(decoder_dir))

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
        self._authenticate(grpc_context)
        async for response in self._observed(request, grpc_context):
            yield response

    async def GenerateUnary(self, request: pb.GenerateRequest, grpc_context: RayServegRPCContext):
        self._authenticate(grpc_context)
        text, token_ids, last = [], [], None
        async for response in self._observed(request, grpc_context):
            text.append(response.text)
            token_ids.extend(response.token_ids)
            last = response
        return pb.GenerateUnaryResponse(text="".join(text), token_ids=token_ids, finish_reason=last.finish_reason,
                                        usage=last.usage, request_id=last.request_id)

    async def Health(self, request: pb.HealthRequest, grpc_context: RayServegRPCContext) -> pb.HealthResponse:
        """No API key needed: load balancer and Kubernetes probes carry none, and it tells only SERVING or not and
        the replica counts."""
        self._refuse_unparsable(request, grpc_context)
        replicas = await self.replica_counts.get()
        try:
            await asyncio.wait_for(asyncio.gather(self.prefill.stats.remote(), self.decode.stats.remote()), 5.0)
            return pb.HealthResponse(status="SERVING", replicas=replicas)
        except Exception:  # noqa: BLE001  no healthy replica in a pool
            return pb.HealthResponse(status="NOT_SERVING", replicas=replicas)

    async def GetModelInfo(self, request: pb.ModelInfoRequest, grpc_context: RayServegRPCContext):
        self._authenticate(grpc_context)
        self._refuse_unparsable(request, grpc_context)
        return self.model_info

    def _refuse_unparsable(self, request, grpc_context: RayServegRPCContext) -> None:
        """Bytes protobuf refused reach us as UnparsableRequest (grpc_handlers.py): INVALID_ARGUMENT naming the
        field. (GenerateRequests are refused by validate_request.)"""
        if isinstance(request, UnparsableRequest):
            self._abort(ServiceError("INVALID_ARGUMENT", request.message), grpc_context, "")

    async def _observed(self, request: pb.GenerateRequest,
                        grpc_context: RayServegRPCContext) -> AsyncIterator[pb.GenerateResponse]:
        """`_generate` with its metrics (TTFT, ITL, E2E, tokens, outcome) and its errors turned into statuses."""
        self.num_running += 1
        self.metrics.running.set(self.num_running)
        status = "OK"
        arrival = previous = time.perf_counter()
        output = []  # the text sent, kept only for server.log_prompts
        try:
            first = True
            async for response in self._generate(request):
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
                yield response
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except Exception as e:  # noqa: BLE001  every failure leaves as a status
            status = (service_error_of(e) or ServiceError("INTERNAL", "")).code
            self._abort(e, grpc_context, getattr(request, "request_id", ""))  # none if UnparsableRequest
        finally:
            self.num_running -= 1
            self.metrics.running.set(self.num_running)
            if status != "OK":
                self.metrics.requests.inc(1, tags={"status": status})

    def _authenticate(self, grpc_context: RayServegRPCContext) -> None:
        """The ingress check, before anything else of a request runs: `authorization: Bearer <key>` metadata
        against every accepted key in constant time (overfill/serving/auth.py). A refusal is UNAUTHENTICATED, never
        echoes what was sent, and is counted by reason (missing, malformed, invalid)."""
        if self.api_keys is None:  # auth.enabled is false
            return
        reason = self.api_keys.refusal(grpc_context.invocation_metadata())
        if reason is not None:
            self.metrics.auth_rejections.inc(1, tags={"reason": reason})
            self._abort(ServiceError("UNAUTHENTICATED", REFUSALS[reason]), grpc_context, "")

    def _abort(self, error: Exception, grpc_context: RayServegRPCContext, request_id: str) -> None:
        """The one place errors become statuses (DESIGN §6); raises so the proxy sends the status. The status
        leaves without the original exception chained to it: Ray Serve logs what a replica raises, and an
        exception's message may quote the request (server.log_prompts decides what `request_log` writes)."""
        if isinstance(error, asyncio.CancelledError):
            raise error
        service_error = service_error_of(error)
        if service_error is None:
            self.request_log.failed(request_id or "(unnamed)", error)
            service_error = ServiceError("INTERNAL", f"internal error (request_id {request_id or 'unassigned'}): "
                                                     f"{type(error).__name__}")
        grpc_context.set_code(getattr(grpc.StatusCode, service_error.code))
        grpc_context.set_details(service_error.message)
        raise service_error from None

    # ---- the request's path --------------------------------------------------------------------------------------

    async def _generate(self, request: pb.GenerateRequest) -> AsyncIterator[pb.GenerateResponse]:
        arrival = time.perf_counter()
        # 1) Validate and tokenize once.
        valid = validate_request(request, self.tokenizer, self.limits)
        rid = valid.request_id
        self.request_log.received(rid, request, len(valid.prompt_ids))
        detokenizer = IncrementalDetokenizer(self.tokenizer)
        stops = StopStringMatcher(valid.stop)
        completion_tokens, kv_transfer_s = 0, 0.0

        def message(token_ids: list[int], finish: str | None) -> pb.GenerateResponse:
            new_text = "".join(detokenizer.push(t) for t in token_ids)
            if finish is not None:
                new_text += detokenizer.flush()
            text, stopped = stops.push(new_text)
            finish = "stop" if stopped else finish
            response = pb.GenerateResponse(text=text, token_ids=token_ids, request_id=rid)
            if finish is not None:
                if not stopped:
                    response.text += stops.flush()
                response.finish_reason = finish
                response.usage.CopyFrom(pb.Usage(
                    prompt_tokens=len(valid.prompt_ids), completion_tokens=completion_tokens, ttft_s=ttft_s,
                    e2e_s=time.perf_counter() - arrival, kv_transfer_s=kv_transfer_s))
            return response

        # 2) Prefill: the full model samples the first token; the KV waits under a lease.
        # NOTE: KV is leased under a key of this request alone: a caller's request_id only labels logs and replies,
        # two requests may share one, and one's cleanup must never release the other's KV.
        lease_id = f"{rid}/{uuid.uuid4().hex[:12]}"
        result = await self.prefill.prefill.remote(PrefillRequest(lease_id, valid.prompt_ids, valid.sampling))
        ttft_s = time.perf_counter() - arrival
        completion_tokens = 1
        first = message([result.first_token], result.finish_reason)
        if first.finish_reason or result.ticket is None:
            if result.ticket is not None:
                await self.prefill.release.remote(lease_id)
            yield first
            return

        # 3) Decode: the decode pool pulls the KV and streams tokens; leaving early cancels it (frees its slot).
        stream = self.decode.options(stream=True).generate.remote(result, valid.sampling)
        decode_done = False
        try:
            yield first
            async for chunk in stream:
                decode_done = chunk.finish_reason is not None
                completion_tokens += len(chunk.token_ids)
                kv_transfer_s = chunk.kv_transfer_s or kv_transfer_s
                response = message(chunk.token_ids, chunk.finish_reason)
                yield response
                if response.finish_reason:  # EOS, max_tokens or a stop string
                    return
        finally:
            if not decode_done:  # stop string, client gone, deadline, or an error: free decode and prefill KV
                stream.cancel()
                await asyncio.shield(self.prefill.release.remote(lease_id))  # no-op if decode already pulled it
