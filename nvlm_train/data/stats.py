"""Run the real pipeline over shards and count what it produces (``nvlm-data stats``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nvlm_train.data.loader import DataConfig, MultimodalLoader, Skip
from nvlm_train.data.recipe import recipe_from_paths


@dataclass
class PipelineStats:
    samples: int = 0
    tiles: int = 0
    tokens: int = 0
    target_tokens: int = 0
    counts: Counter = field(default_factory=Counter)  # (dataset, reason) -> skipped samples (or shards)

    @property
    def skipped(self) -> Counter:
        """reason -> count."""
        out: Counter = Counter()
        for (_, reason), n in self.counts.items():
            out[reason] += n
        return out

    @property
    def skipped_by_dataset(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (dataset, reason), n in sorted(self.counts.items()):
            out.setdefault(dataset, {})[reason] = n
        return out

    def as_dict(self) -> dict:
        return {"samples": self.samples, "tiles": self.tiles, "tokens": self.tokens,
                "target_tokens": self.target_tokens, "skipped": dict(sorted(self.skipped.items())),
                "skipped_by_dataset": self.skipped_by_dataset}


def shard_stats(shards: list[str], cfg: DataConfig, progress: Callable[[int], None] | None = None,
                kind: str = "auto") -> PipelineStats:
    """One pass over every sample of ``shards`` with ``cfg``'s tokenizer/sequence/tile settings."""
    recipe = recipe_from_paths(shards, kind=kind)
    # a report, not a run: it counts whatever is bad and never stops on the skip fraction
    cfg = DataConfig(**{**cfg.__dict__, "single_pass": True, "packing": False, "num_workers": 0,
                        "max_skip_fraction": 1.0})
    stats = PipelineStats()
    try:
        loader = MultimodalLoader(cfg, recipe=recipe)
    except ValueError:
        # Nothing readable at all: still report the shard problems instead of failing.
        from nvlm_train.data.loader import index_recipe
        from nvlm_train.data.shards import default_cache_dir

        cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        _, problems = index_recipe(recipe, cache, max_member_bytes=cfg.max_member_bytes)
        stats.counts.update(problems)
        return stats
    stats.counts.update(loader.index_skips)
    proc = loader.processor
    for j in range(proc.length or 0):
        res = proc(j)
        if isinstance(res, Skip):
            stats.counts[res.dataset, res.reason] += 1
            loader.warner.warn(res.reason, res.shard, res.key, res.message)
        else:
            stats.samples += 1
            stats.tiles += res.tiles.num_tiles
            stats.tokens += len(res)
            stats.target_tokens += int(res.targets.sum())
        if progress is not None:
            progress(1)
    return stats
