"""Walking what an error from another replica wraps: Ray hands a replica's exception over as `.cause` of its own
(RayTaskError), and Python chains `raise ... from` as `__cause__`."""

from __future__ import annotations

from collections.abc import Iterator

MAX_DEPTH = 5  # wrappers deeper than this are not ours to look into


def error_chain(error: BaseException | None) -> Iterator[BaseException]:
    """The error, then what it wraps, and so on: at most MAX_DEPTH errors."""
    for _ in range(MAX_DEPTH):
        if error is None:
            return
        yield error
        error = getattr(error, "cause", None) or error.__cause__
