"""Test-only chaos hooks (tests/faults/): faults that travel with one request, so a fault test breaks exactly the
request it watches and nothing else.

Off by default. Only with `faults.enabled: true` in the service config does the router read a request's plan from
the gRPC metadata key `x-overfill-faults`, e.g. `stall_after_tokens=4,stall_step_s=30`. It hands the plan to the
prefill replica (which arms its KV service) and to each decode replica that serves the request. With faults off no
plan exists and the hot paths only test `plan is None`. Never enable it in production: any client could then stall
its own requests on a shared replica.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from overfill.serving.types import ServiceError
from overfill.status import StatusCode

FAULTS_METADATA_KEY = "x-overfill-faults"


@dataclass(frozen=True)
class FaultPlan:
    delay_pull_s: float = 0.0                 # decode: wait this long after admission before pulling the KV
    drop_pull_after_chunks: int | None = None  # prefill KV service: cut the pull with UNAVAILABLE after N chunks
    delay_send_s: float = 0.0                 # prefill, gloo/nccl: wait this long before sending the KV bytes
    stall_after_tokens: int = 0               # decode: the step after this request's Nth token on a replica stalls
    stall_step_s: float = 0.0                 # ... for this long, holding the model thread (0: no stall)
    stall_replicas: int = 1                   # how many decode replicas in turn stall it (migrations meet it again)
    refuse_admission: int = 0                 # decode, 1: each replica refuses the request once, as if full

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        """`name=value,name=value` -> a plan; errors (INVALID_ARGUMENT) name the fault."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, raw = item.partition("=")
            name = name.strip()
            if not sep or name not in fields:
                raise _invalid(f"unknown fault {name!r}; allowed: {', '.join(fields)}")
            kind = float if name.endswith("_s") else int
            try:
                value = kind(raw)
            except ValueError:
                raise _invalid(f"{name} must be {'a number' if kind is float else 'an integer'}, "
                               f"got {raw.strip()!r}") from None
            if not math.isfinite(value) or value < 0:
                raise _invalid(f"{name} must be a finite number >= 0, got {raw.strip()!r}")
            values[name] = value
        return cls(**values)

    def after_migration(self) -> FaultPlan:
        """The plan for the next decode replica of a migrated request: it stalls only while stall_replicas last."""
        return dataclasses.replace(self, stall_replicas=self.stall_replicas - 1)

    def stall_for(self, num_tokens: int) -> float:
        """Decode: seconds the step after a sequence's `num_tokens`th token (on this replica) must stall."""
        if self.stall_replicas > 0 and self.stall_step_s > 0 and num_tokens == self.stall_after_tokens:
            return self.stall_step_s
        return 0.0


def plan_from_metadata(metadata: list[tuple[str, str]], enabled: bool) -> FaultPlan | None:
    """The router's one look at chaos: a request's plan, or None when faults are off or it asked for none."""
    if not enabled:
        return None
    text = dict(metadata).get(FAULTS_METADATA_KEY)
    return None if text is None else FaultPlan.parse(text)


def _invalid(message: str) -> ServiceError:
    return ServiceError(StatusCode.INVALID_ARGUMENT, f"{FAULTS_METADATA_KEY}: {message}")
