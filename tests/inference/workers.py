"""Rank functions for the inference tests (module level, so spawned ranks can import them)."""

from __future__ import annotations

from PIL import Image


def make_image(width: int, height: int, seed: int) -> Image.Image:
    import numpy as np

    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, width * height * 3).reshape(height, width, 3)
    return Image.fromarray(((base + rng.integers(0, 64, size=(height, width, 3))) % 256).astype("uint8"))


def mixed_requests():
    """Text-only, one-tile and multi-tile prompts of different lengths (112 px tiles)."""
    from nvlm_train.inference.engine import GenerationRequest

    return [
        GenerationRequest("text-short", [("user", "Hello?")]),
        GenerationRequest("one-tile", [("user", "<image>\nWhat is in this picture?")], [make_image(112, 112, 0)]),
        GenerationRequest("many-tiles", [("user", "<image>\nDescribe the scene in detail.")],
                          [make_image(336, 112, 1)]),
        GenerationRequest("text-long", [("user", "Hello, who are you?"), ("assistant", "I am a helpful assistant."),
                                        ("user", "Please describe a cat sitting on a table.")]),
        GenerationRequest("two-images", [("user", "<image>\n<image>\nHow many objects can you see?")],
                          [make_image(112, 224, 2), make_image(150, 120, 3)], system=None),
    ]


def generate_worker(checkpoint: str, max_new_tokens: int, batch_size: int, use_cache: bool = True,
                    temperature: float = 0.0) -> list[tuple[str, list[int], str]]:
    """Inside a distributed session: (id, tokens, finish_reason) of the mixed requests."""
    from nvlm_train.inference.engine import GenerationEngine, SamplingConfig

    engine = GenerationEngine.from_checkpoint(checkpoint, batch_size=batch_size)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=20, top_p=0.9, seed=7)
    return [(r.id, r.tokens, r.finish_reason) for r in engine.generate(mixed_requests(), sampling, use_cache)]


def layouts_worker(rank: int, world: int, checkpoint: str, layouts: list[tuple[int, int]], max_new_tokens: int):
    """On ``world`` gloo ranks, each (tp, pp) in turn (the rest of the world is data-parallel):
    greedy and seeded-sampled tokens of the mixed requests per layout. One process group for all
    layouts; megatron's groups are rebuilt for each."""
    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.runtime.initialize import initialize_distributed
    from nvlm_train.runtime.session import distributed_session

    out = {}
    with distributed_session(ParallelConfig(tp=layouts[0][0], pp=layouts[0][1]), num_language_layers=4):
        for tp, pp in layouts:
            initialize_distributed(ParallelConfig(tp=tp, pp=pp), num_language_layers=4)
            out[(tp, pp)] = (generate_worker(checkpoint, max_new_tokens, 8),
                             generate_worker(checkpoint, max_new_tokens, 3, temperature=0.9))
    return out
