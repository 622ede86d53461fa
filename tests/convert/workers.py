"""Multi-rank workers (module level so spawned processes can import them)."""

from __future__ import annotations

from pathlib import Path

from nvlm_train.checkpoint import dist as ckpt
from nvlm_train.checkpoint.saved_run import SavedRun
from nvlm_train.config.choices import to_plain
from nvlm_train.runtime.compat import shutdown_checkpoint_writers


def resave_worker(rank, world, tp, pp, init_from, out_root):
    """What ``nvlm-train checkpoint.init_from=...`` does at TP/PP, then save at that layout."""
    import yaml

    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.config.store import load_model_config
    from nvlm_train.model.builder import build_model
    from nvlm_train.runtime.initialize import initialize_distributed

    model = load_model_config("nvlm_d_tiny")
    parallel = ParallelConfig(tp=tp, pp=pp)
    initialize_distributed(parallel, seed=5)
    built = build_model(model, parallel)
    saved = SavedRun.from_folder(init_from)
    saved.check_architecture(model)  # the trainer's check
    ckpt.load_checkpoint(saved.folder, built.chunks, weights_only=True)
    config_yaml = yaml.safe_dump({"model": to_plain(model), "data": saved.data})
    ckpt.save_checkpoint(Path(out_root), built.chunks, None, None, {}, ckpt.TrainingState(iteration=7),
                         config_yaml, keep_last=1)
    shutdown_checkpoint_writers()
    return True


def synthetic_worker(rank, world, out_root, tokenizer_dir, layers, hidden):
    """A many-layer checkpoint of a few hundred MB (LLM-heavy), weights set to a cheap pattern."""
    import torch
    import yaml

    from nvlm_train.config.parallel import ParallelConfig
    from nvlm_train.config.store import load_model_config
    from nvlm_train.model.builder import build_model
    from nvlm_train.runtime.initialize import initialize_distributed

    model = load_model_config("nvlm_d_tiny", [
        f"model.language.num_layers={layers}", f"model.language.hidden_size={hidden}",
        "model.language.num_attention_heads=8", f"model.language.ffn_hidden_size={3 * hidden}",
        "model.language.vocab_size=4096"])
    initialize_distributed(ParallelConfig(), seed=1)
    built = build_model(model, ParallelConfig(), initialize=False)
    with torch.no_grad():
        for i, p in enumerate(built.chunks[0].parameters()):
            p.fill_(0.001 * (i % 97))
    config_yaml = yaml.safe_dump({"model": to_plain(model), "data": {"tokenizer_dir": str(tokenizer_dir)}})
    ckpt.save_checkpoint(Path(out_root), built.chunks, None, None, {}, ckpt.TrainingState(iteration=1),
                         config_yaml, keep_last=1)
    shutdown_checkpoint_writers()
    return True
