"""The training data loader: recipe -> per-rank, exactly resumable stream of packed micro-batches.

Data flow: ``order`` maps a rank's local sample index to (dataset, sample); ``SampleProcessor``
reads, validates, tokenises and tiles that sample (in worker processes when ``num_workers > 0``,
whole chunks of consecutive indices handed out round-robin, so results come back in order); the
main process packs samples into rows and rows into batches. Packing happens in one place, so the
batches do not depend on the number of workers, and the state is just the index of the first
sample not yet in a yielded batch (plus the skip counters).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from nvlm_train.config.limits import DEFAULT_MAX_MEMBER_BYTES
from nvlm_train.data import errors
from nvlm_train.data.encode import EncodedSample, EncodeOptions, encode_conversation
from nvlm_train.data.errors import DataQualityError, RateLimitedWarner, SampleError, SkipPolicy
from nvlm_train.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTS
from nvlm_train.data.order import BlendOrder, SequentialOrder, rank_position
from nvlm_train.data.packing import collate, row_fits
from nvlm_train.data.path_report import DataPathError, no_data_message
from nvlm_train.data.prompt import DEFAULT_PROMPT_FORMAT, PROMPT_FORMATS, get_prompt_format
from nvlm_train.data.recipe import DatasetSpec, Recipe, load_recipe
from nvlm_train.data.samples import parse_sample
from nvlm_train.data.shards import (
    ShardIndex,
    ShardReader,
    default_cache_dir,
    expand_paths,
    index_shard,
    materialize,
)
from nvlm_train.data.tokenizer import TextTokenizer, build_demo_tokenizer
from nvlm_train.runtime.compat import shutdown_dataloader_workers
from nvlm_train.vision.route import TileRoute

STATE_VERSION = 1


@dataclass(kw_only=True)
class DataConfig:
    """Everything the loader needs. The sizes have no defaults: they derive from the run (``seq_length``,
    ``data.max_tiles``) and the model (``image_size``; ``tokens_per_tile`` = (image_size / patch)^2 *
    downsample_ratio^2), see ``training.data.data_config``."""

    seq_length: int
    max_tiles: int  # per sample; caps the recipe's per-dataset max_tiles (the smaller one wins)
    image_size: int
    tokens_per_tile: int
    recipe: str = "demo"  # a recipe name in data_recipes/ or a YAML path
    data_root: str | None = None  # fills ${DATA_ROOT} in recipe paths
    tokenizer_dir: str | None = None  # None: the demo tokenizer (built and cached on first use)
    micro_batch_size: int = 1
    use_thumbnail: bool = True
    packing: bool = True
    num_workers: int = 0
    seed: int = 0
    single_pass: bool = False  # one ordered pass over every sample, then StopIteration (eval, stats)
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # larger images are skipped as decompression_bomb
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES  # larger tar members are skipped unread
    # Stop (DataQualityError) when more than this fraction of the last ``skip_window`` samples a rank
    # consumed was skipped: training on a trickle of good data is a failure, not a run. 1.0: never.
    max_skip_fraction: float = 0.1
    skip_window: int = 1000
    tile_route: TileRoute = TileRoute.WORKER  # DEVICE: batches carry decoded images; the trainer cuts tiles
    prompt_format: str = DEFAULT_PROMPT_FORMAT  # a preset of ``hf.conversation.PROMPT_FORMATS``
    # System text of samples that bring none (None: no system turn); default: the default preset's.
    system: str | None = PROMPT_FORMATS[DEFAULT_PROMPT_FORMAT].system_message
    cache_dir: str | None = None  # shard indexes and remote shard copies; default ~/.cache/nvlm_train/data
    samples_per_chunk: int = 4  # unit of work handed to a worker
    prefetch_factor: int = 2
    worker_timeout_s: float = 600.0  # a worker silent this long is an error, not a hang
    pin_memory: bool = False  # batches in page-locked memory (CUDA): their host-to-device copies are asynchronous

    def __post_init__(self) -> None:
        for name in ("seq_length", "micro_batch_size", "max_tiles", "image_size", "tokens_per_tile",
                     "samples_per_chunk", "prefetch_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"DataConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError(f"DataConfig.num_workers must be >= 0, got {self.num_workers}")
        get_prompt_format(self.prompt_format)
        if not 0.0 < self.max_skip_fraction <= 1.0 or self.skip_window < 1:
            raise ValueError(f"DataConfig.max_skip_fraction must be in (0, 1] and skip_window >= 1, got "
                             f"{self.max_skip_fraction}, {self.skip_window}")


@dataclass
class Skip:
    reason: str
    shard: str
    key: str
    message: str = ""
    dataset: str = "?"


@dataclass
class DatasetSource:
    """One recipe dataset: its usable shards and a cumulative sample count for random access."""

    spec: DatasetSpec
    shards: list[ShardIndex]
    offsets: np.ndarray

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[ShardIndex, int]:
        s = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.shards[s], i - int(self.offsets[s])


def index_recipe(recipe: Recipe, cache_dir: Path, warner: RateLimitedWarner | None = None,
                 indexes: dict[str, ShardIndex] | None = None,
                 max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> tuple[list[DatasetSource], Counter]:
    """Index every shard of every dataset; shard problems and the samples indexing left out are counted
    by (dataset, reason) (and warned), never fatal here.

    ``indexes``, if given, receives every shard's index by path (for the report when nothing is readable).
    """
    problems: Counter = Counter()
    sources = []
    for spec in recipe.datasets:
        shards = []
        for url in expand_paths(list(spec.paths)):
            try:
                path = materialize(url, cache_dir)
            except Exception as e:  # a remote shard that cannot be fetched is an unreadable shard
                idx = ShardIndex(url, problem=errors.UNREADABLE_SHARD, message=f"{type(e).__name__}: {e}")
            else:
                idx = index_shard(path, cache_dir, max_member_bytes)
            if indexes is not None:
                indexes[url] = idx
            if idx.problem:
                problems[spec.name, idx.problem] += 1
                if warner:
                    warner.warn(idx.problem, url, "", idx.message)
            for reason, n in idx.skips.items():
                problems[spec.name, reason] += n
                if warner:
                    warner.warn(reason, url, "", f"{n} sample(s) left out when indexing; {idx.message}".rstrip("; "))
            if len(idx):
                shards.append(idx)
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in shards])]).astype(np.int64)
        sources.append(DatasetSource(spec, shards, offsets))
    return sources, problems


def by_reason(counts: Counter) -> Counter:
    """(dataset, reason) -> n  to  reason -> n."""
    out: Counter = Counter()
    for (_, reason), n in counts.items():
        out[reason] += n
    return out


def by_dataset(counts: Counter) -> dict[str, dict[str, int]]:
    """(dataset, reason) -> n  to  dataset -> reason -> n."""
    out: dict[str, dict[str, int]] = {}
    for (dataset, reason), n in sorted(counts.items()):
        out.setdefault(dataset, {})[reason] = n
    return out


def _index_losses(index_skips: Counter, sources: list[DatasetSource]) -> Counter:
    """(dataset, reason) -> samples indexing left out; an unreadable or empty shard counts as many
    samples as its dataset's readable shards hold on average (1 when it has none)."""
    out: Counter = Counter()
    per_shard = {s.spec.name: max(1, round(len(s) / len(s.shards))) if s.shards else 1 for s in sources}
    for (dataset, reason), n in index_skips.items():
        shard_level = reason in (errors.UNREADABLE_SHARD, errors.EMPTY_SHARD)
        out[dataset, reason] += n * per_shard.get(dataset, 1) if shard_level else n
    return out


def is_read_member(ext: str) -> bool:
    """Members the pipeline reads; everything else (.pyd, .pickle, ...) is never even loaded."""
    e = ext.lower()
    if e in ("json", "txt") or e in IMAGE_EXTS:
        return True
    head, _, tail = e.partition(".")
    return head.isdigit() and tail in IMAGE_EXTS


class SampleProcessor:
    """Local sample index -> ``EncodedSample`` or ``Skip``. Picklable; the same in every worker."""

    def __init__(self, cfg: DataConfig, sources: list[DatasetSource], tokenizer_dir: str, dp_rank: int,
                 dp_size: int):
        self.cfg, self.sources, self.dp_rank, self.dp_size = cfg, sources, dp_rank, dp_size
        self.tokenizer = TextTokenizer(tokenizer_dir)
        sizes = [len(s) for s in sources]
        if cfg.single_pass:
            self.order = SequentialOrder(sizes)
            total = len(self.order)
            self.length: int | None = max(0, math.ceil((total - dp_rank) / dp_size))
        else:
            self.order = BlendOrder(sizes, [s.spec.weight for s in sources], cfg.seed)
            self.length = None
        self.encode_opts = [
            EncodeOptions(seq_length=cfg.seq_length, tokens_per_tile=cfg.tokens_per_tile, image_size=cfg.image_size,
                          max_tiles=min(s.spec.max_tiles or cfg.max_tiles, cfg.max_tiles),
                          use_thumbnail=cfg.use_thumbnail,
                          max_image_pixels=cfg.max_image_pixels, route=cfg.tile_route,
                          prompt_format=cfg.prompt_format, system=cfg.system)
            for s in sources
        ]
        self.reader = ShardReader()

    def locate(self, j: int) -> tuple[int, ShardIndex, int]:
        d, i = self.order[rank_position(j, self.dp_rank, self.dp_size)]
        shard, k = self.sources[d].locate(i)
        return d, shard, k

    def __call__(self, j: int) -> EncodedSample | Skip:
        shard_path, key = "?", "?"
        try:
            d, shard, k = self.locate(j)
            shard_path, key = shard.path, shard.keys[k]
            members = {e: v for e, v in shard.members[k].items() if is_read_member(e)}
            try:
                raw = self.reader.read(shard.path, members)
            except OSError as e:
                return Skip(errors.READ_ERROR, shard_path, key, str(e), self.sources[d].spec.name)
            try:
                conv = parse_sample(raw, self.sources[d].spec.sample_options)
                return encode_conversation(conv, self.tokenizer, self.encode_opts[d])
            except SampleError as e:
                return Skip(e.reason, shard_path, key, e.message, self.sources[d].spec.name)
            except Exception as e:  # a bug or an unforeseen input: count it, never kill the run
                return Skip(errors.INTERNAL_ERROR, shard_path, key, f"{type(e).__name__}: {e}",
                            self.sources[d].spec.name)
        except Exception as e:
            return Skip(errors.INTERNAL_ERROR, shard_path, key, f"{type(e).__name__}: {e}")


class _ChunkStream(torch.utils.data.IterableDataset):
    """Chunks of consecutive local indices from ``start``; chunk c goes to worker c % num_workers."""

    def __init__(self, processor: SampleProcessor, start: int, chunk: int):
        self.processor, self.start, self.chunk = processor, start, chunk

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        w, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        end = self.processor.length
        for c in itertools.count(w, nw):
            lo = self.start + c * self.chunk
            hi = lo + self.chunk if end is None else min(lo + self.chunk, end)
            if lo >= hi:
                return
            yield [(j, self.processor(j)) for j in range(lo, hi)]


def _identity(x):
    return x


def _worker_init(_):
    torch.set_num_threads(1)


class MultimodalLoader:
    """Iterator of micro-batches for one data-parallel rank (all TP/PP ranks of it pass the same dp_rank).

    ``state_dict()`` after batch k, given to ``load_state_dict`` of a fresh loader with the same config,
    makes its next batch equal batch k+1 of the uninterrupted run (any ``num_workers``).
    """

    def __init__(self, cfg: DataConfig, dp_rank: int = 0, dp_size: int = 1, recipe: Recipe | None = None):
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} must be in [0, {dp_size})")
        self.cfg, self.dp_rank, self.dp_size = cfg, dp_rank, dp_size
        self.recipe = recipe if recipe is not None else load_recipe(cfg.recipe, cfg.data_root)
        self.warner = RateLimitedWarner()
        cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        indexes: dict[str, ShardIndex] = {}
        sources, self.index_skips = index_recipe(self.recipe, cache, self.warner, indexes, cfg.max_member_bytes)
        usable = [s for s in sources if len(s)]
        for s in sources:
            if not len(s):
                self.warner.warn("empty_dataset", ",".join(s.spec.paths)[:200], "",
                                 f"dataset {s.spec.name!r} has no readable samples; left out of the blend")
        if not usable:
            raise DataPathError(no_data_message(self.recipe, cfg.data_root, indexes))
        self.policy = SkipPolicy(cfg.max_skip_fraction, cfg.skip_window)
        problem = self.policy.check_index(_index_losses(self.index_skips, sources), sum(len(s) for s in sources))
        if problem:
            raise DataQualityError(problem)
        tok_dir = cfg.tokenizer_dir or str(build_demo_tokenizer())
        self.processor = SampleProcessor(cfg, usable, tok_dir, dp_rank, dp_size)
        self.tokenizer = self.processor.tokenizer
        self._cursor = 0
        self._sample_skips: Counter = Counter()  # (dataset, reason) -> samples skipped while loading
        self._batches = 0
        self._stream: Iterator | None = None
        self._dl_iter = None
        self._pending: tuple[int, EncodedSample] | None = None
        self._next_j = 0

    # -- state -------------------------------------------------------------------------------------
    @property
    def shard_problems(self) -> Counter:
        """reason -> count of what indexing found (shard problems and samples it left out)."""
        return by_reason(self.index_skips)

    @property
    def sample_skips(self) -> Counter:
        """(dataset, reason) -> samples this rank skipped while loading (its share of the data)."""
        return Counter(self._sample_skips)

    @property
    def skipped(self) -> dict[str, int]:
        """reason -> count: skipped samples in yielded batches so far plus what indexing left out."""
        return dict(by_reason(self._sample_skips + self.index_skips))

    @property
    def skipped_by_dataset(self) -> dict[str, dict[str, int]]:
        """dataset -> reason -> count (the same counts as ``skipped``)."""
        return by_dataset(self._sample_skips + self.index_skips)

    def _fingerprint(self) -> dict:
        c = asdict(self.cfg)
        keep = ("seq_length", "micro_batch_size", "max_tiles", "image_size", "tokens_per_tile", "use_thumbnail",
                "packing", "seed", "single_pass")
        blend = [[s.spec.name, s.spec.weight, len(s)] for s in self.processor.sources]
        return {k: c[k] for k in keep} | {"dp_rank": self.dp_rank, "dp_size": self.dp_size,
                                           "recipe": self.recipe.name, "blend": blend}

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "cursor": self._cursor, "batches": self._batches,
                "skipped": dict(by_reason(self._sample_skips)),
                "skipped_by_dataset": [[d, r, n] for (d, r), n in sorted(self._sample_skips.items())],
                "skip_window": self.policy.state_dict(),
                "config": self._fingerprint()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data loader state version {state.get('version')} != {STATE_VERSION}")
        mine = self._fingerprint()
        diff = {k: (state["config"].get(k), v) for k, v in mine.items() if state["config"].get(k) != v}
        if diff:
            raise ValueError(f"data loader state was saved with a different configuration (saved, now): {diff}")
        self.close()
        self._cursor, self._batches = int(state["cursor"]), int(state["batches"])
        if "skipped_by_dataset" in state:
            self._sample_skips = Counter({(d, r): n for d, r, n in state["skipped_by_dataset"]})
        else:  # saved before per-dataset counts
            self._sample_skips = Counter({("?", r): n for r, n in state["skipped"].items()})
        self.policy.load_state_dict(state.get("skip_window", []))

    # -- iteration ---------------------------------------------------------------------------------
    def _open_stream(self) -> Iterator[tuple[int, EncodedSample | Skip]]:
        ds = _ChunkStream(self.processor, self._cursor, self.cfg.samples_per_chunk)
        if self.cfg.num_workers == 0:
            chunks = iter(ds)
        else:
            dl = torch.utils.data.DataLoader(
                ds, batch_size=None, num_workers=self.cfg.num_workers, collate_fn=_identity,
                prefetch_factor=self.cfg.prefetch_factor, worker_init_fn=_worker_init,
                timeout=self.cfg.worker_timeout_s)  # in-order delivery (the default) keeps chunk order
            chunks = self._dl_iter = iter(dl)
        self._next_j = self._cursor
        return (item for chunk in chunks for item in chunk)

    def _pull(self) -> tuple[int, EncodedSample] | None:
        """Next usable sample (pending first); skips are counted as they are consumed."""
        if self._pending is not None:
            return self._pending
        if self._stream is None:
            self._stream = self._open_stream()
        for j, res in self._stream:
            self._next_j = j + 1
            skip = res if isinstance(res, Skip) else None
            self.policy.record(skip.dataset if skip else None, skip.reason if skip else None)
            if skip is not None:
                self._sample_skips[res.dataset, res.reason] += 1
                self.warner.warn(res.reason, res.shard, res.key, res.message)
                continue
            self._pending = (j, res)
            return self._pending
        return None

    def __iter__(self) -> MultimodalLoader:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        rows: list[list[EncodedSample]] = []
        for _ in range(cfg.micro_batch_size):
            row: list[EncodedSample] = []
            while (item := self._pull()) is not None and row_fits(row, item[1], cfg.seq_length, cfg.packing):
                row.append(item[1])
                self._pending = None
            if not row:
                break
            rows.append(row)
        if not rows:
            raise StopIteration
        rows += [[] for _ in range(cfg.micro_batch_size - len(rows))]  # only at the end of a single pass
        batch = collate(rows, cfg.seq_length, cfg.tokens_per_tile, self.tokenizer.image_context_id,
                        self.tokenizer.pad_id, cfg.image_size, cfg.tile_route)
        self._cursor = self._pending[0] if self._pending is not None else self._next_j
        self._batches += 1
        if cfg.pin_memory:  # collated here in the main process, so pinned here (not by the DataLoader)
            batch = {k: v.pin_memory() for k, v in batch.items()}
        return batch

    def close(self) -> None:
        """Stop workers and forget read-ahead; the next ``next()`` restarts from the saved cursor."""
        self._stream = None
        self._pending = None
        if self._dl_iter is not None:
            shutdown_dataloader_workers(self._dl_iter)
            self._dl_iter = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()


def build_loader(cfg: DataConfig, dp_rank: int = 0, dp_size: int = 1, recipe: Recipe | None = None
                 ) -> MultimodalLoader:
    """The trainer's entry point: one loader per data-parallel rank."""
    return MultimodalLoader(cfg, dp_rank, dp_size, recipe)
