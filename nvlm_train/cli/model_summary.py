"""``nvlm-model-summary model=<name> [hydra overrides]``: parameter counts as one JSON line."""

from __future__ import annotations

import argparse
import json
import sys

from nvlm_train.config.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nvlm-model-summary",
        description="Build an NVLM-D model config on the meta device and print one JSON line with its "
        "parameter counts (vision, projector, language, total; vocabulary and head padding excluded).",
        epilog="example: nvlm-model-summary model=nvlm_d_72b model.language.num_layers=40",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=nvlm_d_tiny")
    args = parser.parse_args(argv)

    from nvlm_train.config.store import compose_config, to_dataclass
    from nvlm_train.model.summary import model_summary
    from nvlm_train.runtime.session import distributed_session

    try:
        cfg = compose_config("summary", args.overrides)
        model = to_dataclass(cfg.model)
        model.validate()
    except (ConfigError, Exception) as exc:  # Hydra raises its own exception types
        print(f"nvlm-model-summary: {exc}", file=sys.stderr)
        return 2
    with distributed_session(seed=model.init_seed, force_cpu=True):
        counts = model_summary(model)
    print(json.dumps({"model": model.name, **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
