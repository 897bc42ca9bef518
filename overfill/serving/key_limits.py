"""Per-API-key concurrency: how many requests one key has in flight in this router replica, and the refusal past
`auth.max_requests_per_key`.

Without it one key can take every decode slot and every waiting place, and every other key's requests are refused
with RESOURCE_EXHAUSTED as if the service were full. The count lives in the router replica that serves the request
(Ray Serve spreads requests over router replicas), so with R router replicas a key can hold up to R times the limit:
the limit is per router replica, which keeps the check a dict lookup on the request's path, with no shared store.

Keys are identified by the SHA-256 digest of the key sent (overfill/serving/auth.py), never by the key itself, so
nothing held here is a secret and no message names a key.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from overfill.serving.types import ServiceError
from overfill.status import StatusCode


class KeyConcurrency:
    """Requests in flight per API key (its digest -> count; a key with none has no entry), at most `max_per_key`
    each (0: no limit). Used from one event loop, so there is no lock."""

    def __init__(self, max_per_key: int):
        if max_per_key < 0:
            raise ValueError(f"max_per_key must be >= 0 (0: no limit), got {max_per_key}")
        self.max_per_key = max_per_key
        self._in_flight: dict[bytes, int] = {}

    def num_in_flight(self, key_id: bytes) -> int:
        return self._in_flight.get(key_id, 0)

    @property
    def num_keys(self) -> int:
        """Keys with at least one request in flight."""
        return len(self._in_flight)

    @contextmanager
    def held(self, key_id: bytes | None) -> Iterator[None]:
        """One of `key_id`'s places for the body of the `with`, given back however the body ends (finish, error,
        cancellation, a generator closed because its client left). RESOURCE_EXHAUSTED, naming the limit, when the
        key has them all. `key_id` None (API keys off) is never counted."""
        if key_id is None or self.max_per_key == 0:
            yield
            return
        num = self._in_flight.get(key_id, 0)
        if num >= self.max_per_key:
            raise ServiceError(StatusCode.RESOURCE_EXHAUSTED,
                               f"this API key has {num} requests in flight, the most auth.max_requests_per_key = "
                               f"{self.max_per_key} allows per router replica; retry when one of them has finished")
        self._in_flight[key_id] = num + 1
        try:
            yield
        finally:
            left = self._in_flight[key_id] - 1
            if left:
                self._in_flight[key_id] = left
            else:
                del self._in_flight[key_id]
