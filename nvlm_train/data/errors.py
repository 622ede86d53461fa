"""Skip reasons and the per-reason counter: bad data is skipped and counted, never trained on."""

from __future__ import annotations

import logging
import time
from collections import Counter

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
# Per-shard reasons (counted once per shard when it is indexed).
UNREADABLE_SHARD = "unreadable_shard"
TRUNCATED_SHARD = "truncated_shard"
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
