"""The HumanEval sandbox: correct completions pass; network, writes outside its folder, new
processes and running past the time limit are refused; HumanEval refuses to run without it."""

from __future__ import annotations

import pytest

from nvlm_train.evaluation import sandbox
from nvlm_train.evaluation.benchmark_names import Benchmark
from nvlm_train.evaluation.samples import EvalSample
from nvlm_train.evaluation.sandbox import Outcome, SandboxUnavailable, check_sandbox, run_program
from nvlm_train.evaluation.scoring import humaneval_program, score_sample

ADD = EvalSample("HumanEval/0", 'def add(a, b):\n    """Sum."""\n', [],
                 meta={"entry_point": "add", "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"})


def test_correct_completions_pass_in_both_reply_styles():
    assert score_sample(Benchmark.HUMANEVAL, ADD, "```python\ndef add(a, b):\n    return a + b\n```").score == 1.0
    assert score_sample(Benchmark.HUMANEVAL, ADD, "    return a + b\n").score == 1.0  # a bare body continues
    wrong = score_sample(Benchmark.HUMANEVAL, ADD, "    return a - b\n")
    assert wrong.score == 0.0 and wrong.extra["outcome"] == "failed"


def test_a_network_socket_is_refused(tmp_path):
    result = run_program("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 9))\n")
    assert result.outcome is Outcome.REFUSED and "socket" in result.detail
    # refused even when the program swallows the error
    hidden = run_program("try:\n    import urllib.request\n    urllib.request.urlopen('http://example.com')\n"
                         "except Exception:\n    pass\n")
    assert hidden.outcome is Outcome.REFUSED


def test_writing_outside_its_folder_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_program(f"open({str(target)!r}, 'w').write('x')\n")
    assert result.outcome is Outcome.REFUSED and not target.exists()
    assert run_program(f"import os\nos.remove({str(tmp_path)!r})\n").outcome is Outcome.REFUSED
    assert run_program("import subprocess\nsubprocess.run(['true'])\n").outcome is Outcome.REFUSED
    inside = run_program("open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\n")
    assert inside.passed


def test_running_past_the_time_limit_is_stopped():
    result = run_program("while True:\n    pass\n", timeout_s=1.5)
    assert result.outcome is Outcome.TIMEOUT
    assert run_program("x = bytearray(8 << 30)\n", memory_bytes=1 << 30).outcome is Outcome.FAILED  # memory cap


def test_humaneval_refuses_without_a_working_sandbox(monkeypatch):
    check_sandbox()  # works here
    monkeypatch.setattr(sandbox, "run_program", lambda *a, **k: sandbox.RunResult(Outcome.PASSED))
    sandbox.check_sandbox.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="refusing to execute"):
            check_sandbox()
    finally:
        sandbox.check_sandbox.cache_clear()
    assert "check(add)" in humaneval_program(ADD, "    return a + b\n")
