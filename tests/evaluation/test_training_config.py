"""train.eval_benchmarks is checked when the trainer starts, with messages that say what to write."""

from __future__ import annotations

import pytest

from nvlm_train.config.errors import ConfigError
from nvlm_train.evaluation.during_training import check_eval_benchmarks, data_paths


def test_benchmark_names_paths_and_limit_are_checked(tmp_path):
    tsv = tmp_path / "AI2D_TEST.tsv"
    tsv.write_text("index\n")
    check_eval_benchmarks(["demo", "ai2d"], [f"ai2d={tsv}"], 8, build_demo=True)
    assert data_paths([f"ai2d = {tsv}"]) == {"ai2d": str(tsv)}
    with pytest.raises(ConfigError, match="unknown benchmark 'mmmlu'"):
        check_eval_benchmarks(["mmmlu"], [], 8)
    with pytest.raises(ConfigError, match=r"train.eval_benchmark_data=\['ai2d=/path/to/its/file'\]"):
        check_eval_benchmarks(["ai2d"], [], 8)
    with pytest.raises(ConfigError, match="does not exist"):
        check_eval_benchmarks(["ai2d"], [f"ai2d={tmp_path / 'missing.tsv'}"], 8)
    with pytest.raises(ConfigError, match="builds no demo data"):
        check_eval_benchmarks(["demo"], [], 8, build_demo=False)
    with pytest.raises(ConfigError, match="name=/path/to/file"):
        data_paths(["ai2d"])
    with pytest.raises(ConfigError, match="eval_benchmark_limit=0"):
        check_eval_benchmarks(["demo"], [], 0, build_demo=True)
