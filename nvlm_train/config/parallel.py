"""Parallel layout: tensor, pipeline and virtual pipeline sizes (data parallel is what remains),
how the LLM layers are split over the pipeline, and the data-parallel communication overlap."""

from __future__ import annotations

from dataclasses import dataclass

from nvlm_train.config.errors import ConfigError


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    vpp: int | None = None  # virtual pipeline stages per pipeline rank (interleaved 1F1B)
    sequence_parallel: bool = False
    # The first pipeline stage also runs the ViT and the projector, so it may hold fewer LLM layers
    # (megatron-core's num_layers_in_first_pipeline_stage); the rest split evenly over the others.
    # null: derived from vision_cost_layers when set, else an even split.
    first_stage_layers: int | None = None
    # What the ViT + projector cost per step, in LLM layers (bench/model_step.py reports it as
    # vision_cost_layers for a model, tiles and sequence length): the first stage then gets
    # the split whose slowest stage is fastest.
    vision_cost_layers: float | None = None
    # Overlap the data-parallel gradient reduce-scatter/all-reduce with the backward (null: on GPUs).
    overlap_grad_reduce: bool | None = None
    # Overlap the distributed optimizer's parameter all-gather with the next forward.
    overlap_param_gather: bool = False

    def data_parallel_size(self, world_size: int) -> int:
        return world_size // (self.tp * self.pp)

    def validate(self, world_size: int, num_language_layers: int | None = None) -> None:
        """Check the layout against the world size and the LLM depth."""
        for key in ("tp", "pp"):
            if getattr(self, key) < 1:
                raise ConfigError(f"parallel.{key}={getattr(self, key)} must be >= 1")
        if self.vpp is not None and self.vpp < 1:
            raise ConfigError(f"parallel.vpp={self.vpp} must be null or >= 1")
        if self.vpp is not None and self.vpp > 1 and self.pp < 2:
            raise ConfigError("parallel.vpp > 1 needs parallel.pp >= 2 (interleaving splits stages)")
        if world_size % (self.tp * self.pp):
            raise ConfigError(
                f"world size {world_size} is not divisible by parallel.tp x parallel.pp = "
                f"{self.tp} x {self.pp} = {self.tp * self.pp}; launch a multiple of "
                f"{self.tp * self.pp} processes or change parallel.tp/parallel.pp"
            )
        if self.first_stage_layers is not None and self.vision_cost_layers is not None:
            raise ConfigError("set parallel.first_stage_layers or parallel.vision_cost_layers, not both")
        if self.vision_cost_layers is not None and self.vision_cost_layers < 0:
            raise ConfigError(f"parallel.vision_cost_layers={self.vision_cost_layers} must be >= 0")
        if num_language_layers is not None:
            self.first_stage_split(num_language_layers)  # raises on a split megatron cannot build

    def first_stage_split(self, num_layers: int) -> int | None:
        """LLM layers on the first pipeline stage, or None for megatron's even split (validated)."""
        chunks = self.vpp or 1
        if self.first_stage_layers is None and (self.vision_cost_layers is None or self.pp < 2):
            if num_layers % (self.pp * chunks):
                what = "parallel.pp" if not self.vpp else "parallel.pp x parallel.vpp"
                raise ConfigError(
                    f"model.language.num_layers={num_layers} is not divisible by {what} = "
                    f"{self.pp * chunks}; pick a pipeline layout whose stage count divides the layer count, "
                    f"or give the first stage its own count (parallel.first_stage_layers)"
                )
            return None
        if self.pp < 2:
            raise ConfigError("parallel.first_stage_layers needs parallel.pp >= 2 (it sizes the first of several "
                              "stages)")
        valid = [f for f in range(chunks, num_layers, chunks)
                 if (num_layers - f) % ((self.pp - 1) * chunks) == 0]
        if self.first_stage_layers is None:
            if not valid:
                raise ConfigError(f"no uneven split of {num_layers} layers over {self.pp} stages fits parallel.vpp="
                                  f"{self.vpp}; set parallel.vision_cost_layers=null")
            cost = self.vision_cost_layers

            def slowest(f: int) -> float:
                return max(f + cost, (num_layers - f) / (self.pp - 1))

            return min(valid, key=lambda f: (slowest(f), -f))
        if self.first_stage_layers not in valid:
            hint = ", ".join(map(str, valid[:12])) or "none"
            raise ConfigError(
                f"parallel.first_stage_layers={self.first_stage_layers} cannot split model.language.num_layers="
                f"{num_layers} over {self.pp} stages (vpp {chunks}): the other stages must share the rest evenly "
                f"(in multiples of the vpp); valid values: {hint}"
            )
        return self.first_stage_layers
