"""nvlm_train: train NVLM-D-style vision-language models on megatron-core."""

__version__ = "0.1.0"
