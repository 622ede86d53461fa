"""Parallel layout: tensor, pipeline and virtual pipeline sizes (data parallel is what remains)."""

from __future__ import annotations

from dataclasses import dataclass

from nvlm_train.config.errors import ConfigError


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    vpp: int | None = None  # virtual pipeline stages per pipeline rank (interleaved 1F1B)
    sequence_parallel: bool = False

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
        if num_language_layers is not None:
            chunks = self.pp * (self.vpp or 1)
            if num_language_layers % chunks:
                what = "parallel.pp" if not self.vpp else "parallel.pp x parallel.vpp"
                raise ConfigError(
                    f"model.language.num_layers={num_language_layers} is not divisible by {what} = "
                    f"{chunks}; pick a pipeline layout whose stage count divides the layer count"
                )
