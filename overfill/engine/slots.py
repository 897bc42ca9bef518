"""The KV cache's accounting, apart from its tensors: which slots are free and how many positions each one holds.

Pure Python, so that the scheduler (which decides when a slot is taken and when it is given back) and the KV cache
(which reads and advances lengths in every forward) share one record without the scheduler importing torch.
"""

from __future__ import annotations


class CacheFullError(RuntimeError):
    """No free slot, or a sequence would grow past `max_seq_len`."""


class SlotPool:
    """`num_slots` slots of `max_seq_len` positions. `lengths[slot]` is how many positions of the slot hold valid KV
    (0 when free). Free slots are handed out lowest first, so a batch admitted together gets consecutive slots."""

    def __init__(self, num_slots: int, max_seq_len: int):
        if num_slots < 1 or max_seq_len < 1:
            raise ValueError(f"a slot pool needs num_slots >= 1 and max_seq_len >= 1, got {num_slots}, {max_seq_len}")
        self.num_slots, self.max_seq_len = num_slots, max_seq_len
        self.lengths = [0] * num_slots
        self._free = list(range(num_slots))  # sorted ascending

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_slots - len(self._free)

    def allocate(self, num: int) -> list[int]:
        if num > len(self._free):
            raise CacheFullError(f"asked for {num} KV slots, {len(self._free)} free of {self.num_slots}")
        slots, self._free = self._free[:num], self._free[num:]
        for slot in slots:
            self.lengths[slot] = 0
        return slots

    def free(self, slots: list[int]) -> None:
        for slot in slots:
            if slot in self._free:
                raise ValueError(f"KV slot {slot} freed twice")
            self.lengths[slot] = 0
        self._free = sorted(self._free + list(slots))

    def reserve(self, slot: int, num_new: int) -> int:
        """Check that `num_new` more tokens fit in `slot`; returns the position the first of them gets."""
        start = self.lengths[slot]
        if start + num_new > self.max_seq_len:
            raise CacheFullError(f"sequence in slot {slot} would reach {start + num_new} tokens; max_seq_len is "
                                 f"{self.max_seq_len}")
        return start

    def advance(self, slots: list[int], num_new: list[int]) -> None:
        for slot, n in zip(slots, num_new):
            self.lengths[slot] += n
