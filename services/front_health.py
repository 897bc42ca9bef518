"""Health answered at the TLS front (services/tls_front.py): at most one upstream call per answer per `max_age_s`,
shared by every caller, so a flood of keyless health calls costs the front, not Ray Serve's request path.

Why: `Health` and grpc.health.v1 `Check` need no API key, and each call that reaches Ray Serve's gRPC proxy costs its
request path in the proxy and the router (measured on the 2-core machine: about 2 ms of CPU in the proxy and 1.5 ms
in the router per call, under load), on the cores that decode. 3000 keyless calls, 64 at once, stretched a healthy
stream's longest gap 5.5x. The router's own cache (router/pool_health.py) spares the pools, not that path. The
front is ours and sits before the proxy, so it answers from its own cache instead:

- `/overfill.v1.Generation/Health`: every request that parses as a HealthRequest (it has no fields) is one answer;
- `/grpc.health.v1.Health/Check`: one answer per known service name; an unknown name is NOT_FOUND here, as the
  router would answer, so names a caller makes up never reach the proxy;
- anything that does not parse is forwarded, for the router to refuse as it refuses every unparsable request.

An answer is the upstream call's whole outcome (the response, or its status and details), kept `max_age_s` after it
came; callers that arrive while it is being asked wait for that one call (each within its own deadline). So the
front adds at most `max_age_s` to the router's own staleness (at most 1 s too). Watch streams are forwarded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from overfill.v1 import generation_pb2
from services.router.grpc_handlers import HEALTH_SERVICE_NAMES, unknown_health_service

GENERATION_HEALTH = "/overfill.v1.Generation/Health"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
MAX_AGE_S = 1.0          # an answer is reused this long after it came
UPSTREAM_TIMEOUT_S = 5.0  # the one upstream call's own deadline (NOT_SERVING-like UNAVAILABLE past it)


@dataclass(frozen=True)
class Outcome:
    """What the upstream answered: the response bytes, or a status and its details."""

    response: bytes | None
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""


def answer_key(method: str, request: bytes) -> tuple[str, str] | Outcome | None:
    """The cache key of a health request; an Outcome when the front answers it itself (an unknown service name);
    None when it must be forwarded as it is (a method not cached here, bytes that do not parse)."""
    try:
        if method == GENERATION_HEALTH:
            generation_pb2.HealthRequest.FromString(request)
            return (method, "")
        if method == HEALTH_CHECK:
            service = health_pb2.HealthCheckRequest.FromString(request).service
            if service not in HEALTH_SERVICE_NAMES:
                return Outcome(None, grpc.StatusCode.NOT_FOUND, unknown_health_service(service))
            return (method, service)
    except DecodeError:
        return None
    return None


class HealthCache:
    """The front's health answers. Runs on the front's event loop (not thread-safe)."""

    def __init__(self, max_age_s: float = MAX_AGE_S, clock: Callable[[], float] = time.monotonic):
        self.max_age_s, self.clock = max_age_s, clock
        self._answers: dict[tuple[str, str], tuple[float, Outcome]] = {}  # key -> (when it came, outcome)
        self._asking: dict[tuple[str, str], asyncio.Future] = {}          # key -> the upstream call in flight
        self.num_upstream_calls = 0

    async def answer(self, key: tuple[str, str], ask: Callable[[], Awaitable[Outcome]],
                     timeout_s: float | None) -> Outcome:
        """The answer for `key`: kept if fresh, else the call in flight's, else a new upstream call (`ask`). The
        caller waits at most `timeout_s` (its deadline); the call goes on for the others if it leaves."""
        kept = self._answers.get(key)
        if kept is not None and self.clock() - kept[0] < self.max_age_s:
            return kept[1]
        asking = self._asking.get(key)
        if asking is None:
            asking = self._asking[key] = asyncio.ensure_future(self._ask(key, ask))
        return await asyncio.wait_for(asyncio.shield(asking), timeout_s)

    async def _ask(self, key: tuple[str, str], ask: Callable[[], Awaitable[Outcome]]) -> Outcome:
        self.num_upstream_calls += 1
        try:
            outcome = await ask()
        finally:
            del self._asking[key]
        self._answers[key] = (self.clock(), outcome)
        return outcome
