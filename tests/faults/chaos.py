"""Test-only fault injection: wrappers a fault test installs around the production servers, never a parameter of
production code. This module lives under tests/, which is not installed, so no config or request reaches it.

A test breaks one request: it arms a `FaultPlan` for a request id (`arm`, on a board that is a Ray actor), then sends
the request with that id. The chaos application (`CHAOS_IMPORT_PATH`, which `tiny_service(..., chaos=True)`
deploys) is the production application built with `ChaosPrefillServer` and `ChaosDecodeServer`: the production
servers whose transport and worker are wrapped when the replica starts, each wrapper looking up the plan of the
request it handles:

- prefill: a failing transport, `CuttingKVProxy`, in front of the replica's KV service (its tickets name the proxy),
  which cuts an armed pull after N chunks as a dropped connection would (`drop_pull_after_chunks`); and, with a
  process-group transport (gloo, nccl), a pair that holds an armed request's bytes back while decode already waits
  in its receive (`delay_send_s`).
- decode (`install_decode_faults`): a refusing admission (`refuse_admission`: each replica refuses the request
  once, as if full), a late KV pull (`delay_pull_s`: the pull starts that long after the slot is granted) and a
  stalling step (`stall_after_tokens`, `stall_step_s`, `stall_replicas`: the step after the request's Nth token
  on a replica holds the model thread, on that many replicas in turn).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent import futures
from dataclasses import dataclass

import grpc

from overfill.serving.config import ServiceConfig, config_from_dict
from overfill.serving.decode_worker import DecodeWorker
from overfill.serving.types import AdmissionRefused
from overfill.status import StatusCode
from overfill.transport.grpc_backend import MAX_MESSAGE_BYTES, SERVICE_NAME
from overfill.v1 import kv_transfer_pb2 as pb
from services.decode.server import DecodeServer
from services.prefill.server import PrefillServer

CHAOS_IMPORT_PATH = "tests.faults.chaos:app_builder"
BOARD_NAME, BOARD_NAMESPACE = "overfill-chaos", "overfill-tests"
DROPPED = "KV connection dropped mid-transfer (injected fault)"


@dataclass(frozen=True)
class FaultPlan:
    delay_pull_s: float = 0.0                 # decode: wait this long after admission before pulling the KV
    drop_pull_after_chunks: int | None = None  # prefill KV service: cut the pull with UNAVAILABLE after N chunks
    delay_send_s: float = 0.0                 # prefill, gloo/nccl: wait this long before sending the KV bytes
    stall_after_tokens: int = 0               # decode: the step after this request's Nth token on a replica stalls
    stall_step_s: float = 0.0                 # ... for this long, holding the model thread (0: no stall)
    stall_replicas: int = 1                   # how many decode replicas in turn stall it (migrations meet it again)
    refuse_admission: bool = False            # decode: each replica refuses the request once, as if full

    def stall_for(self, num_tokens: int) -> float:
        """Decode: seconds the step after a sequence's `num_tokens`th token (on this replica) must stall."""
        if self.stall_replicas > 0 and self.stall_step_s > 0 and num_tokens == self.stall_after_tokens:
            return self.stall_step_s
        return 0.0


def request_of(lease_id: str) -> str:
    """The caller's request id of a lease id (`<request_id>/<random>`, see services/router/server.py)."""
    return lease_id.rsplit("/", 1)[0]


# ---- the board: plans by request id, shared by the test and every replica --------------------------------------------


class ChaosBoard:
    """Plans by request id, and how many decode replicas stalled each request so far (its plan's `stall_replicas`
    counts down as replicas stall it)."""

    def __init__(self):
        self.plans: dict[str, FaultPlan] = {}
        self.stalls: dict[str, int] = {}

    def arm(self, request_id: str, plan: FaultPlan) -> None:
        self.plans[request_id] = plan
        self.stalls.pop(request_id, None)

    def plan(self, request_id: str) -> FaultPlan | None:
        plan = self.plans.get(request_id)
        if plan is None:
            return None
        return dataclasses.replace(plan, stall_replicas=max(0, plan.stall_replicas - self.stalls.get(request_id, 0)))

    def stalled(self, request_id: str) -> None:
        self.stalls[request_id] = self.stalls.get(request_id, 0) + 1


def board():
    """The board's actor, created by the first test process that asks; detached, it lives as long as that Ray
    cluster (a named actor whose handles all went away would be gone)."""
    import ray

    return ray.remote(num_cpus=0)(ChaosBoard).options(name=BOARD_NAME, namespace=BOARD_NAMESPACE, lifetime="detached",
                                                      get_if_exists=True).remote()


def arm(request_id: str, plan: FaultPlan) -> None:
    """From a test: the next requests with this id meet `plan`."""
    import ray

    ray.get(board().arm.remote(request_id, plan))


class BoardClient:
    """A replica's view of the board: looked up on first use (no board, no plan)."""

    def __init__(self):
        self._actor = None

    async def plan_of(self, lease_id: str) -> FaultPlan | None:
        import ray

        if self._actor is None:
            try:
                self._actor = await asyncio.to_thread(ray.get_actor, BOARD_NAME, namespace=BOARD_NAMESPACE)
            except ValueError:  # no test armed anything yet
                return None
        return await self._actor.plan.remote(request_of(lease_id))

    def stalled(self, lease_id: str) -> None:
        if self._actor is not None:
            self._actor.stalled.remote(request_of(lease_id))


# ---- decode: a refusing admission, a late pull, a stalling step -----------------------------------------------------


def install_decode_faults(worker: DecodeWorker, plan_of: Callable[[str], Awaitable[FaultPlan | None]],
                          on_stall: Callable[[str], None] = lambda lease_id: None) -> None:
    """Wrap a decode worker's admission, KV pulls and step. Each request's plan is `plan_of(its lease id)`, looked
    up when it arrives; `on_stall(lease id)` is called when a step stalls for it."""
    plans: dict[str, FaultPlan] = {}  # lease id -> plan, while the request is on this worker
    refused: set[str] = set()         # lease ids this worker refused once (refuse_admission)
    generate, step, receiver = worker.generate, worker._step, worker.receiver

    async def refusing_generate(prefill, sampling, *args, **kwargs):
        plan = await plan_of(prefill.request_id)
        if plan is not None and plan.refuse_admission and prefill.request_id not in refused:
            refused.add(prefill.request_id)
            raise AdmissionRefused(StatusCode.RESOURCE_EXHAUSTED, f"decode replica refused request "
                                                                  f"{prefill.request_id!r} (fault refuse_admission)")
        if plan is not None:
            plans[prefill.request_id] = plan
        try:
            async for chunk in generate(prefill, sampling, *args, **kwargs):
                yield chunk
        finally:
            plans.pop(prefill.request_id, None)

    def stalling_step(plan):
        stalls = {row.request_id: p.stall_for(row.index) for row in plan.decode
                  if (p := plans.get(row.request_id)) is not None}
        stall_s = max(stalls.values(), default=0.0)
        if stall_s:
            for lease_id, seconds in stalls.items():
                if seconds:
                    on_stall(lease_id)
            time.sleep(stall_s)  # holding the model thread, as a wedged device would
        return step(plan)

    worker.generate = refusing_generate
    worker._step = stalling_step
    worker.receiver = LatePulls(receiver, plans)


class LatePulls:
    """A receiver whose pulls of armed requests start `delay_pull_s` late (on the pull thread, after the slot was
    granted); everything else is the receiver's own."""

    def __init__(self, receiver, plans: dict[str, FaultPlan]):
        self.receiver, self.plans = receiver, plans

    def pull(self, ticket, expected, timeout_s: float = 30.0):
        plan = self.plans.get(ticket.request_id)
        if plan is not None and plan.delay_pull_s:
            time.sleep(plan.delay_pull_s)
        return self.receiver.pull(ticket, expected, timeout_s)

    def __getattr__(self, name):
        return getattr(self.receiver, name)


class ChaosDecodeServer(DecodeServer):
    def __init__(self, config: ServiceConfig):
        super().__init__(config)
        self.board = BoardClient()
        install_decode_faults(self.worker, self.board.plan_of, self.board.stalled)


# ---- prefill: a KV connection that drops, bytes held back -----------------------------------------------------------


class CuttingKVProxy:
    """A failing transport: a gRPC proxy in front of a KV service that forwards every KVTransfer call byte for byte
    and cuts an armed pull (`cut_after(lease id, N)`) after N chunks with UNAVAILABLE, as a dropped connection
    would."""

    def __init__(self, target: str, bind_host: str = "127.0.0.1"):
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
        self.cuts: dict[str, int] = {}
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers = {name: grpc.unary_unary_rpc_method_handler(self._forward(name))
                    for name in ("Release", "Renew", "OpenGroup", "Send")}
        handlers["Pull"] = grpc.unary_stream_rpc_method_handler(self._pull)
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)])
        self.address = f"{bind_host}:{self.server.add_insecure_port(f'{bind_host}:0')}"
        self.server.start()

    def cut_after(self, lease_id: str, num_chunks: int) -> None:
        self.cuts[lease_id] = num_chunks

    @staticmethod
    def _metadata(context: grpc.ServicerContext) -> tuple:
        return tuple((k, v) for k, v in context.invocation_metadata() if k.startswith("x-overfill"))

    def _forward(self, method: str):
        call = self.channel.unary_unary(f"/{SERVICE_NAME}/{method}")

        def forward(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                return call(request, metadata=self._metadata(context), timeout=context.time_remaining())
            except grpc.RpcError as e:
                context.abort(e.code(), e.details() or "")
        return forward

    def _pull(self, request: bytes, context: grpc.ServicerContext):
        cut = self.cuts.pop(pb.PullRequest.FromString(request).request_id, None)
        stream = self.channel.unary_stream(f"/{SERVICE_NAME}/Pull")(request, metadata=self._metadata(context),
                                                                    timeout=context.time_remaining())
        try:
            for index, message in enumerate(stream):  # the header, then the chunks
                if cut is not None and index == cut + 1:
                    stream.cancel()
                    context.abort(grpc.StatusCode.UNAVAILABLE, DROPPED)
                yield message
        except grpc.RpcError as e:
            context.abort(e.code(), e.details() or "")

    def close(self) -> None:
        self.server.stop(grace=None)
        self.channel.close()


class HeldBackPairs:
    """Wraps a process-group sender's `pair_of_group`: the pair it returns queues an armed request's bytes
    `delay_send_s` late, after the Send call answered (so decode already waits in its receive)."""

    def __init__(self, pair_of_group, delays: dict[str, float]):
        self.pair_of_group, self.delays = pair_of_group, delays

    def __call__(self, group_id: str):
        pair = self.pair_of_group(group_id)
        return None if pair is None else _HeldBackPair(pair, self.delays)


class _HeldBackPair:
    def __init__(self, pair, delays: dict[str, float]):
        self.pair, self.delays = pair, delays

    @property
    def broken(self) -> bool:
        return self.pair.broken

    def submit(self, lease) -> bool:
        delay_s = self.delays.pop(lease.request_id, 0.0)
        if not delay_s:
            return self.pair.submit(lease)
        timer = threading.Timer(delay_s, self.pair.submit, (lease,))
        timer.daemon = True
        timer.start()
        return True


class ChaosPrefillServer(PrefillServer):
    def __init__(self, config: ServiceConfig):
        super().__init__(config)
        self.board = BoardClient()
        self.kv_proxy = CuttingKVProxy(self.sender.address, self.sender.address.rsplit(":", 1)[0])
        self.sender.address = self.kv_proxy.address  # what tickets name: decode and the router go through it
        self.send_delays: dict[str, float] = {}
        if hasattr(self.sender, "pair_of_group"):
            self.sender.pair_of_group = HeldBackPairs(self.sender.pair_of_group, self.send_delays)

    async def prefill(self, request):
        plan = await self.board.plan_of(request.request_id)
        if plan is not None and plan.drop_pull_after_chunks is not None:
            self.kv_proxy.cut_after(request.request_id, plan.drop_pull_after_chunks)
        if plan is not None and plan.delay_send_s:
            self.send_delays[request.request_id] = plan.delay_send_s
        return await super().prefill(request)

    def __del__(self):
        super().__del__()
        self.kv_proxy.close()


def app_builder(args: dict):
    """The production application (services.app.app_builder) with the chaos servers in its pools."""
    from services.app import build_app, prepare_models
    from services.kv_secret import resolve_kv_secret

    config = resolve_kv_secret(config_from_dict(args))
    prepare_models(config)
    return build_app(config, prefill_server=ChaosPrefillServer, decode_server=ChaosDecodeServer)
