"""The step planner: which requests prefill, which decode, which slots are given back. No model, no torch, no asyncio.

In the spirit of vLLM v1's `Scheduler.schedule()` / `update_from_output()`. The in-process engine and both service
workers drive one; its tests drive it with made-up tokens.

    scheduler.add(request)            a request waits for a slot (refused at once past the admission limits)
    plan = scheduler.schedule()       at a step boundary: give back the slots of requests that ended, admit waiting
                                      requests into free slots, list the step's rows
    sampled = <the model runs plan>   one token per row (prefill rows, then decode rows); None: non-finite logits
    events = scheduler.update(plan, sampled, logprobs=...)   tokens (with their log-probabilities, when asked),
                                      finishes (FinishReason), failures (StatusCode)
    scheduler.cancel(request_id)      at any time; a request in the step in flight leaves when that step ends

A request's states:
    WAITING --admitted--> PREFILL (its prompt is a row of the next step) --first token--> RUNNING --token--> ...
    WAITING --admitted--> LOADING (`Request.prefilled`: its KV comes from elsewhere) --loaded()--> RUNNING
    PREFILL --first token--> gone, with Event.handoff (`remote_decode`: another pool decodes it)
    any state --EOS, stop, max tokens, failure or cancel--> gone
A slot is taken when its request is admitted and given back by the next `schedule()` after the request is gone, so
it is never reused while a step that wrote to it may still run. `SlotPool` is the KV cache's own accounting: the
scheduler moves slots, the cache reads and advances lengths.

Not thread-safe: one thread (the engine's, or a worker's event loop) calls every method.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import Enum

from overfill.engine.sampling_params import SamplingParams, TokenLogprobs
from overfill.engine.slots import SlotPool
from overfill.status import FinishReason, StatusCode


class QueueFull(Exception):
    """`add` refused a request because it would pass an admission limit; the message says which. The status a
    caller should see is RESOURCE_EXHAUSTED."""

    code = StatusCode.RESOURCE_EXHAUSTED


@dataclass(frozen=True)
class SchedulerConfig:
    """Admission limits and the step budget; None means unbounded."""

    eos_token_ids: frozenset[int] = frozenset()
    max_prefill_tokens: int | None = None  # prompt tokens per step (a longer prompt still runs, alone)
    max_waiting: int | None = None         # requests left waiting once every free slot is taken; more are refused
    max_waiting_tokens: int | None = None  # prompt tokens of waiting requests; more are refused

    def __post_init__(self):
        for name, least in (("max_prefill_tokens", 1), ("max_waiting", 0), ("max_waiting_tokens", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ValueError(f"{name} must be an integer >= {least} or None, got {value!r}")
        object.__setattr__(self, "eos_token_ids", frozenset(self.eos_token_ids))


@dataclass(frozen=True)
class Request:
    """A request as the scheduler sees it: either a prompt this pool prefills (`to_prefill`), or a prompt prefilled
    elsewhere whose KV and first token arrive here (`prefilled`)."""

    request_id: str
    sampling: SamplingParams
    seed: int                              # resolved: the request's own or a fresh one (sampling_params.py)
    prompt_ids: tuple[int, ...] = ()       # to_prefill: the prompt
    num_prompt_tokens: int = 0
    first_token: int | None = None         # prefilled: the token sampled by the pool that prefilled it
    remote_decode: bool = False            # to_prefill: after its first token, another pool decodes it

    @classmethod
    def to_prefill(cls, request_id: str, prompt_ids: Sequence[int], sampling: SamplingParams, seed: int,
                   remote_decode: bool = False) -> Request:
        if not prompt_ids:
            raise ValueError(f"request {request_id!r}: the prompt is empty")
        return cls(request_id, sampling, seed, tuple(prompt_ids), len(prompt_ids), None, remote_decode)

    @classmethod
    def prefilled(cls, request_id: str, num_prompt_tokens: int, first_token: int, sampling: SamplingParams,
                  seed: int) -> Request:
        if num_prompt_tokens < 1:
            raise ValueError(f"request {request_id!r}: num_prompt_tokens must be >= 1, got {num_prompt_tokens}")
        return cls(request_id, sampling, seed, (), num_prompt_tokens, first_token)

    @property
    def num_kv_positions(self) -> int:
        """KV positions the request writes here at most: its prompt, and every generated token but the last (the
        last one is sampled, never fed back)."""
        if self.remote_decode:
            return self.num_prompt_tokens
        return self.num_prompt_tokens + self.sampling.max_new_tokens - 1


@dataclass(frozen=True)
class Row:
    """One row of a step: the tokens to run in the request's slot, and how to sample the token after them."""

    request_id: str
    slot: int
    token_ids: tuple[int, ...]  # prefill: the prompt; decode: the request's last token
    sampling: SamplingParams
    seed: int
    index: int                  # which token of the request this row samples (0: its first)


@dataclass(frozen=True)
class Load:
    """A `prefilled` request admitted into `slot`: copy its KV in, then call `loaded(request_id)`."""

    request_id: str
    slot: int


@dataclass(frozen=True)
class StepPlan:
    prefill: list[Row]   # run on the prefill model: each row's prompt into its (empty) slot
    decode: list[Row]    # run on the decode model: one token per row
    load: list[Load]     # admitted requests whose KV the caller copies in (no model work in this step)
    freed: list[int]     # slots given back at this boundary (their requests are gone)

    @property
    def rows(self) -> list[Row]:
        """Every row, in the order `update` expects its tokens: prefill rows, then decode rows."""
        return self.prefill + self.decode


@dataclass(frozen=True)
class Event:
    """What a step did to one request: a new token (`token_id`, with its `logprobs` if the request asks for them),
    possibly its last (`finish_reason`), or its hand-off to another pool (`handoff`); or a failure (`status`,
    `message`, and no token)."""

    request_id: str
    token_id: int | None = None
    finish_reason: FinishReason | None = None
    handoff: bool = False
    status: StatusCode | None = None
    message: str = ""
    logprobs: TokenLogprobs | None = None

    @property
    def ends(self) -> bool:
        """Whether the request is gone from the scheduler after this event."""
        return self.finish_reason is not None or self.handoff or self.status is not None


class State(Enum):
    WAITING = "waiting"
    PREFILL = "prefill"
    LOADING = "loading"
    RUNNING = "running"


@dataclass
class _Entry:
    request: Request
    state: State = State.WAITING
    slot: int | None = None
    num_generated: int = 0
    last_token: int | None = None
    cancelled: bool = False  # cancelled while in the step in flight: it leaves when that step ends

    @classmethod
    def of(cls, request: Request) -> _Entry:
        if request.first_token is None:
            return cls(request)
        return cls(request, num_generated=1, last_token=request.first_token)


class Scheduler:
    def __init__(self, config: SchedulerConfig, pool: SlotPool):
        self.config, self.pool = config, pool
        self._entries: dict[str, _Entry] = {}  # every request held, in arrival order (decode rows keep it)
        self._waiting: deque[_Entry] = deque()
        self._to_free: list[int] = []           # slots of requests gone, given back at the next schedule()
        self._in_flight: StepPlan | None = None
        self._in_flight_ids: set[str] = set()

    # ---- requests in ------------------------------------------------------------------------------------------------

    def add(self, request: Request) -> None:
        """Queue a request, or raise `QueueFull` (an admission limit) or ValueError (a duplicate request id, or a
        request no slot can hold)."""
        if request.request_id in self._entries:
            raise ValueError(f"request {request.request_id!r} is already in flight")
        if request.num_kv_positions > self.pool.max_seq_len:
            raise ValueError(f"request {request.request_id!r} needs {request.num_kv_positions} KV positions (prompt "
                             f"{request.num_prompt_tokens}, max_new_tokens {request.sampling.max_new_tokens}); a slot "
                             f"holds {self.pool.max_seq_len}")
        limits = self.config
        if limits.max_waiting is not None and len(self._waiting) + 1 - self.pool.num_free > limits.max_waiting:
            raise QueueFull(f"queue is full ({len(self._waiting)} requests waiting)")
        new_tokens = len(request.prompt_ids)
        if limits.max_waiting_tokens is not None and new_tokens and \
                self.num_waiting_tokens + new_tokens > limits.max_waiting_tokens:
            raise QueueFull(f"queue is full ({self.num_waiting_tokens} prompt tokens waiting, {new_tokens} more "
                            f"exceed {limits.max_waiting_tokens})")
        entry = _Entry.of(request)
        self._entries[request.request_id] = entry
        self._waiting.append(entry)

    def cancel(self, request_id: str) -> bool:
        """The request's caller went away (or it failed outside the step). False if it is not held (already gone)."""
        entry = self._entries.get(request_id)
        if entry is None:
            return False
        if entry.state is State.WAITING:
            self._waiting.remove(entry)
            del self._entries[request_id]
        elif request_id in self._in_flight_ids:
            entry.cancelled = True
        else:
            self._end(entry)
        return True

    def loaded(self, request_id: str) -> None:
        """A `prefilled` request's KV is in its slot: it joins the decode rows from the next step."""
        entry = self._entries[request_id]
        if entry.state is not State.LOADING:
            raise ValueError(f"request {request_id!r} is {entry.state.value}, not loading")
        entry.state = State.RUNNING

    # ---- the step ---------------------------------------------------------------------------------------------------

    def admit(self) -> list[Load]:
        """Admit waiting `prefilled` requests into free slots now, between boundaries (slots given back only at a
        boundary, so none is still in use). Stops at the first request that needs a prefill: only `schedule()`
        admits those, within its token budget."""
        loads = []
        while self._waiting and self.pool.num_free and self._waiting[0].request.first_token is not None:
            entry = self._waiting.popleft()
            entry.slot = self.pool.allocate(1)[0]
            entry.state = State.LOADING
            loads.append(Load(entry.request.request_id, entry.slot))
        return loads

    def schedule(self) -> StepPlan:
        """Plan the next step. Call it again only after `update` or `fail_step` of the plan it returned, if that
        plan has rows (a plan without rows needs neither)."""
        if self._in_flight is not None:
            raise RuntimeError("schedule() while the previous plan is in flight: call update() or fail_step() first")
        # 1) Give back the slots of requests gone since the last boundary: no step uses them any more.
        freed, self._to_free = self._to_free, []
        self.pool.free(freed)
        # 2) Admit waiting requests in arrival order while a slot is free and the prefill budget lasts.
        prefill, load, num_tokens = [], [], 0
        budget = self.config.max_prefill_tokens
        while self._waiting and self.pool.num_free:
            entry = self._waiting[0]
            request = entry.request
            if request.first_token is not None:
                load += self.admit()
                continue
            if prefill and budget is not None and num_tokens + request.num_prompt_tokens > budget:
                break
            self._waiting.popleft()
            entry.slot = self.pool.allocate(1)[0]
            entry.state = State.PREFILL
            num_tokens += request.num_prompt_tokens
            prefill.append(Row(request.request_id, entry.slot, request.prompt_ids, request.sampling, request.seed, 0))
        # 3) Every running request decodes one token.
        decode = [Row(e.request.request_id, e.slot, (e.last_token,), e.request.sampling, e.request.seed,
                      e.num_generated) for e in self._entries.values() if e.state is State.RUNNING]
        plan = StepPlan(prefill, decode, load, freed)
        if plan.rows:
            self._in_flight = plan
            self._in_flight_ids = {row.request_id for row in plan.rows}
        return plan

    def update(self, plan: StepPlan, sampled: Sequence[int | None], stopped: Collection[str] = (),
               logprobs: Sequence[TokenLogprobs | None] = ()) -> list[Event]:
        """The step ran: `sampled` holds one token per row of `plan.rows` (None: its logits were not finite, which
        fails that request alone). `stopped`: requests whose caller says this token ends them (a stop string).
        `logprobs`: empty, or one per row (None for rows that asked for none), passed on in the events."""
        rows = self._end_flight(plan)
        if len(sampled) != len(rows):
            raise ValueError(f"{len(sampled)} tokens for a plan of {len(rows)} rows")
        if logprobs and len(logprobs) != len(rows):
            raise ValueError(f"{len(logprobs)} log-probabilities for a plan of {len(rows)} rows")
        events = []
        for index, (row, token) in enumerate(zip(rows, sampled)):
            entry = self._entries[row.request_id]
            if entry.cancelled:
                self._end(entry)
                continue
            if token is None:
                events.append(Event(row.request_id, status=StatusCode.INTERNAL,
                                    message="the model produced non-finite logits"))
                self._end(entry)
                continue
            entry.num_generated += 1
            entry.last_token = token
            request = entry.request
            if request.sampling.ends(token, self.config.eos_token_ids) or row.request_id in stopped:
                reason = FinishReason.STOP
            elif entry.num_generated >= request.sampling.max_new_tokens:
                reason = FinishReason.LENGTH
            else:
                reason = None
            token_logprobs = logprobs[index] if logprobs else None
            if reason is not None or request.remote_decode:
                events.append(Event(row.request_id, token, reason, handoff=reason is None, logprobs=token_logprobs))
                self._end(entry)
            else:
                entry.state = State.RUNNING
                events.append(Event(row.request_id, token, logprobs=token_logprobs))
        return events

    def fail_step(self, plan: StepPlan, status: StatusCode, message: str) -> list[Event]:
        """The step failed (raised, or ran past its deadline): every request in it fails with `status`. Their slots
        are given back at the next `schedule()`: call it only once the model is done with the step."""
        events = []
        for row in self._end_flight(plan):
            entry = self._entries[row.request_id]
            if not entry.cancelled:
                events.append(Event(row.request_id, status=status, message=message))
            self._end(entry)
        return events

    def clear(self) -> list[str]:
        """Drop every request and give back every slot now (the caller has stopped stepping: nothing runs).
        Returns the ids dropped."""
        dropped = list(self._entries)
        for entry in list(self._entries.values()):
            if entry.state is State.WAITING:
                del self._entries[entry.request.request_id]
            else:
                self._end(entry)
        self._waiting.clear()
        self._in_flight, self._in_flight_ids = None, set()
        self.pool.free(self._to_free)
        self._to_free = []
        return dropped

    # ---- what it holds --------------------------------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_waiting_tokens(self) -> int:
        return sum(len(e.request.prompt_ids) for e in self._waiting)

    @property
    def num_running(self) -> int:
        """Requests holding a slot (prefilling, loading their KV or decoding)."""
        return len(self._entries) - len(self._waiting)

    @property
    def num_slots_held(self) -> int:
        """Slots held by requests, or by requests gone whose slot the next `schedule()` gives back."""
        return self.num_running + len(self._to_free)

    @property
    def has_requests(self) -> bool:
        return bool(self._entries)

    def state_of(self, request_id: str) -> State | None:
        entry = self._entries.get(request_id)
        return None if entry is None else entry.state

    # ---- internals ----------------------------------------------------------------------------------------------

    def _end_flight(self, plan: StepPlan) -> list[Row]:
        if plan is not self._in_flight:
            raise RuntimeError("update() or fail_step() of a plan that is not the one in flight")
        self._in_flight, self._in_flight_ids = None, set()
        return plan.rows

    def _end(self, entry: _Entry) -> None:
        del self._entries[entry.request.request_id]
        if entry.slot is not None:
            self._to_free.append(entry.slot)
