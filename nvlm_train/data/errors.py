"""Skip reasons and the per-reason counter: bad data is skipped and counted, never trained on."""

from __future__ import annotations

import logging
import time
from collections import Counter, deque

log = logging.getLogger("nvlm_train.data")

# Per-sample reasons.
BAD_JSON = "bad_json"
BAD_CONVERSATION = "bad_conversation"
NO_ASSISTANT_REPLY = "no_assistant_reply"
IMAGE_COUNT_MISMATCH = "image_count_mismatch"
CORRUPT_IMAGE = "corrupt_image"
DECOMPRESSION_BOMB = "decompression_bomb"
TOO_LONG = "too_long"
SPECIAL_TOKEN_IN_TEXT = "special_token_in_text"
NO_TEXT = "no_text"
READ_ERROR = "read_error"
INTERNAL_ERROR = "internal_error"
# Per-sample reasons found when a shard is indexed (counted once per sample left out).
UNSAFE_MEMBER = "unsafe_member"  # a link, a special file, or a path that escapes (../, absolute)
DUPLICATE_KEY = "duplicate_key"  # a key that repeats within a shard (the first sample is kept)
OVERSIZED_MEMBER = "oversized_member"  # a member over data.max_member_bytes (not read into memory)
TRUNCATED_SHARD = "truncated_shard"  # the sample a shard's early end cut (or the shard, if none can be named)
# Per-shard reasons (counted once per shard when it is indexed).
UNREADABLE_SHARD = "unreadable_shard"
EMPTY_SHARD = "empty_shard"


class SampleError(Exception):
    """A sample cannot be used; ``reason`` is the counter key."""

    def __init__(self, reason: str, message: str = ""):
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason
        self.message = message


class RateLimitedWarner:
    """Logs at most ``per_reason`` warnings per reason, then one every ``every_s`` seconds per reason."""

    def __init__(self, per_reason: int = 5, every_s: float = 60.0):
        self.per_reason, self.every_s = per_reason, every_s
        self._seen: Counter[str] = Counter()
        self._last: dict[str, float] = {}

    def warn(self, reason: str, shard: str, key: str, message: str = "") -> None:
        self._seen[reason] += 1
        n = self._seen[reason]
        now = time.monotonic()
        if n <= self.per_reason or now - self._last.get(reason, 0.0) >= self.every_s:
            self._last[reason] = now
            log.warning("skipping sample %s in %s: %s%s (%d skipped for this reason so far)",
                        key or "-", shard, reason, f" ({message})" if message else "", n)


class DataQualityError(RuntimeError):
    """Too large a share of the recent samples was skipped: the data, not the run, needs fixing."""


class SkipPolicy:
    """Rolling window over the samples a loader consumed: ``exceeded()`` says why the run should stop
    once more than ``max_fraction`` of the last ``window`` samples were skipped (checked on a full window
    only, so a few bad samples at the start do not stop a run)."""

    def __init__(self, max_fraction: float, window: int):
        self.max_fraction, self.window = max_fraction, window
        self._recent: deque[tuple[str, str] | None] = deque(maxlen=window)
        self._bad: Counter[tuple[str, str]] = Counter()

    def record(self, dataset: str | None, reason: str | None) -> None:
        """One consumed sample: skipped for ``reason`` in ``dataset``, or used (both None)."""
        if len(self._recent) == self.window:
            old = self._recent[0]
            if old is not None:
                self._bad[old] -= 1
        item = (dataset, reason) if reason is not None else None
        self._recent.append(item)
        if item is not None:
            self._bad[item] += 1

    def exceeded(self) -> str | None:
        if len(self._recent) < self.window or self.max_fraction >= 1.0:
            return None
        bad = sum(self._bad.values())
        if bad <= self.max_fraction * self.window:
            return None
        return self._message(f"{bad} of the last {self.window} samples were skipped", bad / self.window, self._bad)

    def check_index(self, left_out: Counter, indexed: int) -> str | None:
        """The same rule for what indexing left out ((dataset, reason) -> samples, unreadable shards
        counted as samples of an average shard) against all ``indexed`` samples; only for at least a
        window's worth of samples, like the rolling check."""
        bad = sum(left_out.values())
        total = indexed + bad
        if self.max_fraction >= 1.0 or total < self.window or bad <= self.max_fraction * total:
            return None
        return self._message(f"indexing left out about {bad} of {total} samples", bad / total, left_out)

    def _message(self, what: str, fraction: float, counts: Counter) -> str:
        worst = ", ".join(f"{d}: {r} x{n}" for (d, r), n in counts.most_common() if n > 0)
        return (f"{what} ({fraction:.0%}, more than data.max_skip_fraction={self.max_fraction:g}): {worst}. "
                f"Fix or remove these datasets, or raise data.max_skip_fraction")

    def state_dict(self) -> list:
        return [list(item) if item else None for item in self._recent]

    def load_state_dict(self, recent: list) -> None:
        self._recent.clear()
        self._bad.clear()
        for item in recent:
            self.record(*(item or (None, None)))
