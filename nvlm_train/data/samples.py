"""Turning a raw webdataset sample (key -> member bytes) into a validated conversation.

Three layouts: LLaVA-style conversations (``.json`` with ``conversations``, images ``key.jpg`` or
``key.0.jpg``, ``key.1.png``... in placeholder order), img2dataset captions (image + ``.txt``, the
``.json`` is metadata) and text-only conversations (``.json`` only). Only the members named here are
ever read; nothing is unpickled.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from nvlm_train.data.errors import (
    BAD_CONVERSATION,
    BAD_JSON,
    IMAGE_COUNT_MISMATCH,
    NO_ASSISTANT_REPLY,
    NO_TEXT,
    SampleError,
)
from nvlm_train.data.images import IMAGE_EXTS
from nvlm_train.data.prompt import IMAGE_PLACEHOLDER

KINDS = ("auto", "conversation", "caption", "text")
DEFAULT_CAPTION_PROMPT = "<image>\nBriefly describe this image."
_ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_MULTI_RE = re.compile(r"^(\d+)\.(" + "|".join(IMAGE_EXTS) + r")$")


@dataclass
class Conversation:
    messages: list[tuple[str, str]]
    images: list[bytes] = field(default_factory=list)
    system: str | None = None


@dataclass(frozen=True)
class SampleOptions:
    kind: str = "auto"
    caption_prompt: str = DEFAULT_CAPTION_PROMPT
    system_prompt: str | None = None


def image_members(members: dict[str, bytes]) -> list[bytes]:
    """Images in placeholder order: ``jpg`` alone, or ``0.jpg``, ``1.png``, ... (indices must be 0..n-1)."""
    single = [ext for ext in members if ext.lower() in IMAGE_EXTS]
    multi = {}
    for ext in members:
        m = _MULTI_RE.match(ext.lower())
        if m:
            multi[int(m.group(1))] = ext
    if single and multi:
        raise SampleError(IMAGE_COUNT_MISMATCH, f"both single ({single}) and numbered images ({sorted(multi)})")
    if len(single) > 1:
        raise SampleError(IMAGE_COUNT_MISMATCH, f"several unnumbered images: {sorted(single)}")
    if single:
        return [members[single[0]]]
    if sorted(multi) != list(range(len(multi))):
        raise SampleError(IMAGE_COUNT_MISMATCH, f"numbered images must be 0..n-1, got {sorted(multi)}")
    return [members[multi[i]] for i in range(len(multi))]


def _load_json(data: bytes) -> object:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise SampleError(BAD_JSON, str(e)[:200]) from None


def _messages(conv: object) -> list[tuple[str, str]]:
    if not isinstance(conv, list) or not conv:
        raise SampleError(BAD_CONVERSATION, "'conversations' must be a non-empty list")
    out = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or turn.get("from") not in _ROLE_MAP:
            raise SampleError(BAD_CONVERSATION, f"turn {i} must be {{'from': human|gpt|system, 'value': str}}")
        out.append((_ROLE_MAP[turn["from"]], turn["value"]))
    return out


def parse_sample(members: dict[str, bytes], opts: SampleOptions = SampleOptions()) -> Conversation:
    """Validate a raw sample; raises ``SampleError`` with a counter reason for anything unusable."""
    meta = _load_json(members["json"]) if "json" in members else None
    if meta is not None and not isinstance(meta, dict):
        raise SampleError(BAD_JSON, f"top-level JSON must be an object, got {type(meta).__name__}")
    kind = opts.kind
    if kind == "auto":
        if meta is not None and "conversations" in meta:
            kind = "conversation"
        elif "txt" in members:
            kind = "caption"
        elif meta is not None:
            raise SampleError(BAD_CONVERSATION, "JSON has no 'conversations' and there is no .txt caption")
        else:
            raise SampleError(NO_TEXT, f"no .json or .txt member (members: {sorted(members)})")
    images = image_members(members)
    system = opts.system_prompt
    if kind == "caption":
        if "txt" not in members:
            raise SampleError(NO_TEXT, "caption sample without .txt")
        try:
            caption = members["txt"].decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise SampleError(BAD_JSON, f"caption is not UTF-8: {e}") from None
        if not caption:
            raise SampleError(NO_ASSISTANT_REPLY, "empty caption")
        if len(images) != 1:
            raise SampleError(IMAGE_COUNT_MISMATCH, f"caption sample needs one image, has {len(images)}")
        messages = [("user", opts.caption_prompt), ("assistant", caption)]
    else:
        if meta is None:
            raise SampleError(NO_TEXT, "conversation sample without .json")
        messages = _messages(meta.get("conversations"))
        if isinstance(meta.get("system"), str):
            system = meta["system"]
        sys_turns = [t for r, t in messages if r == "system"]
        if sys_turns:
            system = sys_turns[0]
            messages = [(r, t) for r, t in messages if r != "system"]
        if kind == "text" and images:
            raise SampleError(IMAGE_COUNT_MISMATCH, "text-only dataset sample has images")
    if not any(r == "assistant" and t.strip() for r, t in messages):
        raise SampleError(NO_ASSISTANT_REPLY)
    n_placeholders = sum(t.count(IMAGE_PLACEHOLDER) for _, t in messages)
    if n_placeholders and n_placeholders != len(images):
        raise SampleError(IMAGE_COUNT_MISMATCH, f"{n_placeholders} placeholders, {len(images)} images")
    if not images and n_placeholders:
        raise SampleError(IMAGE_COUNT_MISMATCH, f"{n_placeholders} placeholders, no images")
    if any(r == "assistant" and IMAGE_PLACEHOLDER in t for r, t in messages):
        raise SampleError(BAD_CONVERSATION, "<image> placeholder in an assistant reply")
    if images and not any(r == "user" for r, _ in messages):
        raise SampleError(BAD_CONVERSATION, "images but no user message")
    return Conversation(messages=messages, images=images, system=system)
