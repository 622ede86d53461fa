"""Typed configuration of a training run (the ``nvlm-train`` Hydra app).

Each knob lives in exactly one place: sequence length and batch sizes in ``train``, tiles and
data sources in ``data``, what is frozen in ``model.freeze``; the loader's own config is derived
from these (``nvlm_train.training.data``), never set separately.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING

from nvlm_train.config.choices import DecayStyle, PrecisionMode, WandbMode, check_choice
from nvlm_train.config.errors import ConfigError
from nvlm_train.config.limits import DEFAULT_MAX_MEMBER_BYTES, DEFAULT_MAX_PIXELS
from nvlm_train.config.model import ModelConfig
from nvlm_train.config.parallel import ParallelConfig
from nvlm_train.hf.conversation import PROMPT_FORMATS
from nvlm_train.vision.route import TileOn
from nvlm_train.vision.tiling import DEFAULT_MAX_TILES


@dataclass
class TrainSection:
    iters: int = 100
    micro_batch_size: int = 1
    global_batch_size: int = 8
    seq_length: int = 1024
    log_interval: int = 1
    save_interval: int = 0  # 0: only at the end and on SIGTERM/SIGUSR1
    eval_interval: int = 0  # 0: never
    eval_iters: int = 4  # micro-batches per DP rank in one validation pass
    # Benchmarks scored at eval_interval (nvlm_train/evaluation/during_training.py checks them when the
    # trainer starts): names, their files as "name=path" (demo needs none), and samples per benchmark.
    eval_benchmarks: list[str] = field(default_factory=list)
    eval_benchmark_data: list[str] = field(default_factory=list)
    eval_benchmark_limit: int = 32
    seed: int = 1234
    max_nonfinite_in_a_row: int = 5  # abort after this many skipped steps in a row
    exit_interval: int = 0  # >0: save and exit 0 when the iteration is a multiple (time-sliced jobs)
    precision: PrecisionMode = PrecisionMode.auto  # auto: bf16 on GPU, fp32 on CPU
    sync_timing: bool = False  # synchronise the device at each step's end for exact step times


@dataclass
class OptimizerSection:
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_iters: int = 0
    decay_style: DecayStyle = DecayStyle.cosine
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 10.0
    use_distributed_optimizer: bool = False


@dataclass
class CheckpointSection:
    keep_last: int = 3  # older iter_* folders are deleted after a successful save
    # Start a stage from these weights (a checkpoints/ folder, an iter_* folder, or a converted HF
    # checkpoint): model weights only, fresh optimizer, schedule and data position.
    init_from: str | None = None
    # Restart the data stream instead of restoring its position (e.g. after changing DP size).
    reset_data: bool = False


@dataclass
class RunSection:
    dir: str = "runs/default"
    name: str | None = None
    wandb_mode: WandbMode = WandbMode.offline  # offline: `wandb sync` later
    wandb_project: str = "nvlm_train"


@dataclass
class DataSection:
    recipe: str = MISSING  # a recipe name in data_recipes/ or a YAML path (data=demo sets "demo")
    eval_recipe: str | None = None  # held-out data for validation loss
    data_root: str | None = None  # fills ${DATA_ROOT} in recipe paths
    tokenizer_dir: str | None = None  # None: the demo tokenizer
    max_tiles: int = DEFAULT_MAX_TILES
    # Prompt preset (``nvlm_d``: the released chat(), ``megatron``: Megatron-LM's SFT turns); recorded
    # in checkpoints and used by export, eval and verify.
    prompt_format: str = "nvlm_d"
    # System text of samples that bring none: "preset" (the format's own), null (none) or the text.
    system_prompt: str | None = "preset"
    packing: bool = True
    # Bad data is skipped and counted; these bound what is read and how much bad data a run accepts.
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # larger images are skipped as decompression_bomb
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES  # larger tar members are skipped unread (oversized_member)
    max_skip_fraction: float = 0.1  # stop when more of the last skip_window samples were skipped; 1.0: never
    skip_window: int = 1000
    num_workers: int = 0
    # One rank per data-parallel replica (first pipeline stage, TP rank 0) reads and decodes the data and
    # sends every other rank of the replica what its stage needs; false: every rank reads (debugging).
    broadcast_batches: bool = True
    # Where tiles are cut: "worker" (PIL in the data workers), "device" (workers only decode; the
    # training GPU resizes with Pillow's exact arithmetic), "auto" (device on CUDA, else worker).
    tile_on: TileOn = TileOn.auto
    cache_dir: str | None = None
    build_demo: bool = False  # build the synthetic demo shards into the cache on first use
    demo_train_samples: int = 2000
    demo_heldout_samples: int = 200


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    train: TrainSection = field(default_factory=TrainSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    stage: str = "custom"

    def validate(self, world_size: int) -> None:
        """Everything that can be checked before the model is built."""
        self.model.validate()
        self.parallel.validate(world_size, self.model.language.num_layers)
        t = self.train
        dp = self.parallel.data_parallel_size(world_size)
        for key in ("iters", "micro_batch_size", "global_batch_size", "seq_length", "log_interval"):
            if getattr(t, key) < 1:
                raise ConfigError(f"train.{key}={getattr(t, key)} must be >= 1")
        if t.global_batch_size % (t.micro_batch_size * dp):
            raise ConfigError(
                f"train.global_batch_size={t.global_batch_size} is not divisible by train.micro_batch_size x "
                f"data-parallel size = {t.micro_batch_size} x {dp}; use a multiple of {t.micro_batch_size * dp}"
            )
        largest_image = self.model.tokens_per_tile * self.data.max_tiles
        if largest_image > t.seq_length:
            raise ConfigError(
                f"train.seq_length={t.seq_length} cannot hold one image at data.max_tiles={self.data.max_tiles} "
                f"({largest_image} image tokens at {self.model.tokens_per_tile} per tile); raise train.seq_length "
                f"or lower data.max_tiles"
            )
        if self.model.language.max_position_embeddings < t.seq_length:
            raise ConfigError(
                f"train.seq_length={t.seq_length} exceeds model.language.max_position_embeddings="
                f"{self.model.language.max_position_embeddings}"
            )
        self.data.tile_on = check_choice(TileOn, self.data.tile_on, "data.tile_on")
        if self.data.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"data.prompt_format={self.data.prompt_format!r}: use one of "
                              f"{', '.join(sorted(PROMPT_FORMATS))}")
        if not 0.0 < self.data.max_skip_fraction <= 1.0:
            raise ConfigError(f"data.max_skip_fraction={self.data.max_skip_fraction} must be in (0, 1] (1: never stop)")
        for key in ("max_image_pixels", "max_member_bytes", "skip_window"):
            if getattr(self.data, key) < 1:
                raise ConfigError(f"data.{key}={getattr(self.data, key)} must be >= 1")
        t.precision = check_choice(PrecisionMode, t.precision, "train.precision")
        self.optimizer.decay_style = check_choice(DecayStyle, self.optimizer.decay_style, "optimizer.decay_style")
        if self.optimizer.warmup_iters >= t.iters and self.optimizer.warmup_iters > 0:
            raise ConfigError(
                f"optimizer.warmup_iters={self.optimizer.warmup_iters} must be < train.iters={t.iters}"
            )
        if self.data.build_demo and self.data.data_root:
            raise ConfigError(
                f"data.data_root={self.data.data_root} is not read with data.build_demo=true (data=demo builds its "
                f"own synthetic shards in data.cache_dir); to train on your shards use data=custom "
                f"data.recipe=<recipe> data.data_root=<folder>, or add data.build_demo=false to read the demo "
                f"recipe's shards from data.data_root")
        self.run.wandb_mode = check_choice(WandbMode, self.run.wandb_mode, "run.wandb_mode")
        if self.checkpoint.keep_last < 1:
            raise ConfigError(f"checkpoint.keep_last={self.checkpoint.keep_last} must be >= 1")
        for key, value in (("checkpoint.init_from", self.checkpoint.init_from),
                           ("data.tokenizer_dir", self.data.tokenizer_dir), ("data.data_root", self.data.data_root)):
            if value and not Path(value).exists():
                raise ConfigError(f"{key}={value} does not exist; fix the path or remove the override")

    def num_microbatches(self, world_size: int) -> int:
        dp = self.parallel.data_parallel_size(world_size)
        return self.train.global_batch_size // (self.train.micro_batch_size * dp)
