"""Tokenizers: loading an HF tokenizer directory for the pipeline, and building the small demo tokenizer.

The pipeline tokenises with the ``tokenizers`` library straight from ``tokenizer.json`` (fast, light
to import in worker processes, picklable). The demo tokenizer is a byte-level BPE with Qwen2's
pre-tokenizer, saved so that both ``AutoTokenizer.from_pretrained(dir)`` and ``use_fast=False``
(``Qwen2Tokenizer`` from vocab.json + merges.txt) load it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE

from nvlm_train.data.prompt import END_OF_TEXT, IM_END, IM_START, IMAGE_CONTEXT, SPECIAL_TOKENS

DEMO_VOCAB_SIZE = 1024
DEMO_VERSION = "demo-bpe-v1"
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_GENERAL_TEXT = """\
The quick brown fox jumps over the lazy dog. Hello, who are you? I am a helpful assistant.
Please describe the image shortly. The image shows a small object in the middle of the picture.
There is one shape on the left and another one on the right side of the image.
What is in this picture? Describe the scene in detail. How many objects can you see?
A photo of a cat sitting on a table. A man riding a bicycle down the street.
Question: what is two plus three? Answer: five. Numbers 0 1 2 3 4 5 6 7 8 9 10 100 2024.
Yes. No. Maybe. Thank you! Sure, here is the answer to your question.
"""


class TextTokenizer:
    """What the pipeline needs from a tokenizer: ``encode`` text (specials recognised) and the special ids."""

    def __init__(self, tokenizer_dir: str | Path):
        self.dir = Path(tokenizer_dir)
        path = self.dir / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: the data pipeline needs an HF tokenizer directory with tokenizer.json "
                "(any Qwen2 tokenizer, or the demo one from nvlm_train.data.tokenizer.build_demo_tokenizer)"
            )
        self.tok = Tokenizer.from_file(str(path))
        ids = {}
        for t in SPECIAL_TOKENS:
            enc = self.tok.encode(t, add_special_tokens=False).ids
            if len(enc) != 1:
                raise ValueError(f"tokenizer {self.dir} must encode {t!r} as one token, got {enc}")
            ids[t] = enc[0]
        self.eod_id, self.im_start_id = ids[END_OF_TEXT], ids[IM_START]
        self.im_end_id, self.image_context_id = ids[IM_END], ids[IMAGE_CONTEXT]
        self.pad_id = self.eod_id
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS/EOS; short strings (tags, role headers) are memoised."""
        if len(text) <= 64:
            ids = self._cache.get(text)
            if ids is None:
                ids = self._cache[text] = self.tok.encode(text, add_special_tokens=False).ids
            return ids
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def id_to_token(self, i: int) -> str | None:
        return self.tok.id_to_token(i)

    def __getstate__(self):
        return {"dir": str(self.dir)}

    def __setstate__(self, state):
        self.__init__(state["dir"])


def default_demo_tokenizer_dir() -> Path:
    """Where the demo tokenizer is cached: ``$NVLM_DEMO_TOKENIZER`` or ``~/.cache/nvlm_train/<version>``."""
    env = os.environ.get("NVLM_DEMO_TOKENIZER")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "nvlm_train" / DEMO_VERSION


def _training_corpus() -> list[str]:
    from nvlm_train.data.synth import corpus_lines

    synth = corpus_lines()
    # Repeating the synthetic lines makes their words win the merge counts over the general text.
    chat = ["user\n", "assistant\n", "system\n", "<|im_start|>user\n", "<|im_start|>assistant\n"]
    return synth * 20 + chat * 50 + _GENERAL_TEXT.splitlines() * 5


def _tokenizer_config() -> dict:
    added = {}
    for i, t in enumerate(SPECIAL_TOKENS):
        added[str(i)] = {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": True}
    template = (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
        "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
        "{% endif %}"
    )
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": [IM_START, IM_END, IMAGE_CONTEXT],
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": END_OF_TEXT,
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": 32768,
        "chat_template": template,
        "nvlm_demo_tokenizer": DEMO_VERSION,
    }


def _build(out: Path) -> None:
    tok = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                        fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=DEMO_VOCAB_SIZE, min_frequency=2, show_progress=False,
        special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(t) != i:
            raise RuntimeError(f"demo tokenizer: expected {t} at id {i}, got {tok.token_to_id(t)}")
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json + merges.txt for the Qwen2Tokenizer (use_fast=False) route
    (out / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(), indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": IM_END, "pad_token": END_OF_TEXT,
         "additional_special_tokens": [IM_START, IM_END, IMAGE_CONTEXT]}, indent=2) + "\n")


def build_demo_tokenizer(out_dir: str | Path | None = None) -> Path:
    """Build (once) the demo tokenizer in ``out_dir`` (default: ``default_demo_tokenizer_dir()``).

    Cached: an existing directory of the same version is reused. Written to a temporary directory
    and renamed, so concurrent builders (e.g. several ranks) never see a half-written tokenizer.
    """
    out = Path(out_dir) if out_dir is not None else default_demo_tokenizer_dir()
    if _is_current(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tok-", dir=out.parent))
    try:
        _build(tmp)
        if _is_current(out):  # another process finished first: keep its copy
            return out
        if out.exists():
            shutil.rmtree(out, ignore_errors=True)  # an outdated version
        try:
            tmp.rename(out)
        except OSError:
            if not _is_current(out):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _is_current(out: Path) -> bool:
    cfg = out / "tokenizer_config.json"
    if not (cfg.is_file() and (out / "tokenizer.json").is_file() and (out / "merges.txt").is_file()):
        return False
    try:
        return json.loads(cfg.read_text()).get("nvlm_demo_tokenizer") == DEMO_VERSION
    except ValueError:
        return False
