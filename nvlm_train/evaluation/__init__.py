"""Benchmark evaluation (``nvlm-eval``): the model card's benchmarks read from local files, scored by
their official metrics, through a megatron checkpoint or an HF export."""
