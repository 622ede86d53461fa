"""The one generation engine: a megatron checkpoint at the launched TP/PP, batched, with a KV cache.

Used by evaluation, the demo, ``nvlm-generate`` and ``nvlm-convert verify``. Requests are rendered in
the checkpoint's saved prompt preset (``data.prompt.saved_prompt``, ``hf/conversation.py``), tiled as
in training, batched by prompt length with left padding (``batch``), and decoded by ``decode`` through
megatron-core's ``StaticInferenceContext`` on our layers. A request that cannot run (missing image,
too long for the context, ...) gets ``finish_reason="error:<reason>"`` and never stops the others.

The engine always runs the ``torch`` layer implementation (same parameter names as Transformer
Engine's, so any checkpoint loads): its attention honours the explicit padding mask generation needs.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nvlm_train.config.model import ModelConfig
from nvlm_train.data.encode import encode_prompt
from nvlm_train.data.errors import SampleError
from nvlm_train.data.images import open_image
from nvlm_train.data.prompt import PRESET_SYSTEM
from nvlm_train.data.tokenizer import TextTokenizer
from nvlm_train.inference.decode import DecodeOptions, RowOutput, generate_tokens
from nvlm_train.inference.runner import StageRunner
from nvlm_train.inference.sampling import request_generator


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    stop_strings: tuple[str, ...] = ()
    stop_ids: tuple[int, ...] = ()  # on top of <|im_end|> and <|endoftext|>


@dataclass
class GenerationRequest:
    id: str
    messages: list[tuple[str, str]]  # (role, text), e.g. [("user", "<image>\nWhat colour?")]
    images: list = field(default_factory=list)  # PIL images or paths, in <image> order
    system: str | None = "preset"  # "preset": the checkpoint's; None: no system turn; or the text


@dataclass
class GenerationResult:
    id: str
    text: str
    tokens: list[int]
    latency_s: float
    finish_reason: str  # "stop" | "length" | "error:<reason>"
    error: str = ""  # the message, for "error:*"


class RequestError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


@dataclass
class _Encoded:
    index: int
    request: GenerationRequest
    prompt: list[int]
    pixels: torch.Tensor  # uint8 [tiles, 3, S, S]
    encode_s: float


class GenerationEngine:
    """One rank's share of a model at the launched layout plus what prompts need (tokenizer, preset)."""

    def __init__(self, chunk, model_cfg: ModelConfig, tokenizer: TextTokenizer, prompt: tuple[str, str | None],
                 max_tiles: int, batch_size: int = 8, max_context: int | None = None, saved_run=None):
        self.model_cfg = model_cfg
        self.saved_run = saved_run  # the checkpoint's SavedRun (from_checkpoint), for callers that report it
        self.tokenizer = tokenizer
        self.prompt_format, self.preset_system = prompt
        self.max_tiles = max_tiles
        self.batch_size = batch_size
        self.max_context = max_context or model_cfg.language.max_position_embeddings
        self.runner = StageRunner(chunk.eval(), model_cfg.language.vocab_size)

    # ---- loading -------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path, *, max_tiles: int | None = None, batch_size: int = 8,
                        max_context: int | None = None, tokenizer_dir: str | os.PathLike | None = None,
                        bf16: bool | None = None) -> GenerationEngine:
        """Collective; call inside an initialised distributed session at the launched TP/PP.

        The checkpoint may have been saved at any layout (dist checkpoints reshard on load). ``bf16``:
        default bf16 on CUDA, fp32 on CPU.
        """
        from nvlm_train.checkpoint.dist import load_checkpoint
        from nvlm_train.checkpoint.saved_run import SavedRun
        from nvlm_train.data.tokenizer import build_demo_tokenizer
        from nvlm_train.model.builder import build_model
        from nvlm_train.model.transformer_config import Precision
        from nvlm_train.runtime.initialize import current_parallel

        run = SavedRun.from_folder(path)
        parallel = current_parallel()
        if parallel.vpp:
            raise ValueError("generation runs without virtual pipeline stages; launch without parallel.vpp")
        model_cfg = dataclasses.replace(run.model, impl="torch")
        precision = Precision.of_run("auto" if bf16 is None else "bf16" if bf16 else "fp32")
        built = build_model(model_cfg, parallel, precision, initialize=False, packed=False)
        load_checkpoint(run.folder, built.chunks, weights_only=True)
        tok_dir = tokenizer_dir or run.tokenizer_dir or build_demo_tokenizer()
        return cls(built.chunks[0], model_cfg, TextTokenizer(tok_dir), run.prompt, max_tiles or run.max_tiles,
                   batch_size, max_context, saved_run=run)

    # ---- requests -> prompts --------------------------------------------------------------------
    def system_text(self, system: str | None) -> str | None:
        return self.preset_system if system == PRESET_SYSTEM else system

    def encode(self, request: GenerationRequest) -> tuple[list[int], torch.Tensor]:
        """Prompt ids ending in the assistant header, and the request's tiles; raises RequestError."""
        system = self.system_text(request.system)
        images = [self._open(im) for im in request.images]
        cfg = self.model_cfg
        try:
            ids, pixels = encode_prompt(list(request.messages), images, self.tokenizer, cfg.tokens_per_tile,
                                        cfg.vision.image_size, self.max_tiles, system=system,
                                        prompt_format=self.prompt_format)
        except SampleError as exc:
            raise RequestError(exc.reason, exc.message) from None
        except ValueError as exc:  # placeholder / image count or role problems
            raise RequestError("bad_request", str(exc)) from None
        if len(ids) >= self.max_context:
            raise RequestError("too_long", f"the prompt has {len(ids)} tokens; the context holds "
                                           f"{self.max_context} (no room to generate)")
        return [int(t) for t in ids], pixels

    @staticmethod
    def _open(image):
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            if not path.is_file():
                raise RequestError("missing_image", f"{path} does not exist")
            try:
                return open_image(path.read_bytes())
            except SampleError as exc:
                raise RequestError(exc.reason, f"{path}: {exc.message}") from None
            except OSError as exc:
                raise RequestError("unreadable_image", f"{path}: {exc}") from None
        return image

    # ---- generation -----------------------------------------------------------------------------
    def generate(self, requests: list[GenerationRequest], sampling: SamplingConfig,
                 use_cache: bool = True) -> list[GenerationResult]:
        """Collective: every rank passes the same requests; every rank gets the results (input order)."""
        results: list[GenerationResult | None] = [None] * len(requests)
        ready: list[_Encoded] = []
        for i, req in enumerate(requests):
            t0 = time.perf_counter()
            try:
                prompt, pixels = self.encode(req)
            except RequestError as exc:
                results[i] = GenerationResult(req.id, "", [], time.perf_counter() - t0, f"error:{exc.reason}",
                                              exc.message)
                continue
            ready.append(_Encoded(i, req, prompt, pixels, time.perf_counter() - t0))
        ready.sort(key=lambda e: len(e.prompt))  # similar lengths share a batch: little padding
        for start in range(0, len(ready), self.batch_size):
            batch = ready[start:start + self.batch_size]
            for enc, res in zip(batch, self._run_batch(batch, sampling, use_cache)):
                results[enc.index] = res
        return results

    def _run_batch(self, batch: list[_Encoded], sampling: SamplingConfig, use_cache: bool) -> list[GenerationResult]:
        tok = self.tokenizer
        stop_ids = frozenset({tok.im_end_id, tok.eod_id, *sampling.stop_ids})
        t0 = time.perf_counter()

        def stop_check(row: int, ids: list[int]) -> bool:
            text = tok.decode(ids)
            return any(s in text for s in sampling.stop_strings)

        opts = DecodeOptions(
            max_new_tokens=[min(sampling.max_new_tokens, self.max_context - len(e.prompt)) for e in batch],
            stop_ids=stop_ids, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
            generators=[request_generator(sampling.seed, e.request.id) for e in batch],
            stop_check=stop_check if sampling.stop_strings else None, use_cache=use_cache)
        pixels = torch.cat([e.pixels for e in batch])
        rows = generate_tokens(self.runner, [e.prompt for e in batch], pixels, opts, tok.pad_id,
                               self.model_cfg.language.image_token_id)
        elapsed = time.perf_counter() - t0
        return [self._result(e, row, elapsed, stop_ids, sampling) for e, row in zip(batch, rows)]

    def _result(self, enc: _Encoded, row: RowOutput, elapsed: float, stop_ids, sampling) -> GenerationResult:
        ids = list(row.tokens)
        if ids and ids[-1] in stop_ids and row.finish_reason == "stop":
            ids = ids[:-1]
        text = self.tokenizer.decode(ids)
        cuts = [text.index(s) for s in sampling.stop_strings if s in text]
        if cuts:
            text = text[:min(cuts)]
        return GenerationResult(enc.request.id, text.strip(), ids, enc.encode_s + elapsed, row.finish_reason)

    def generate_ids(self, prompts: list[list[int]], pixel_values: torch.Tensor | None, opts: DecodeOptions
                     ) -> list[RowOutput]:
        """Token-level entry (verify, the bench): prompts already encoded, one batch."""
        return generate_tokens(self.runner, prompts, pixel_values, opts, self.tokenizer.pad_id,
                               self.model_cfg.language.image_token_id)
