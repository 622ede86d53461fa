"""metrics.jsonl keeps each iteration once across a resume from an earlier checkpoint."""

from __future__ import annotations

import json

from nvlm_train.training.metrics_resume import drop_metrics_after


def test_records_after_the_checkpoint_and_torn_lines_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"iteration": i, "loss": 1.0 / i}) for i in range(1, 6)]
    path.write_text("\n".join(lines) + '\n{"iteration": 6, "lo')  # a line cut short by a kill
    assert drop_metrics_after(tmp_path, 3) == 3
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [1, 2, 3]
    assert drop_metrics_after(tmp_path, 3) == 0
    assert drop_metrics_after(tmp_path / "none", 3) == 0
