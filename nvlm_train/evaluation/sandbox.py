"""Run untrusted HumanEval programs: a child Python with time, memory and file-size limits, no
network, no writes outside its own temporary folder and no new processes.

Why an audit hook: it cannot be removed from Python code once installed (PEP 578), so the program
cannot switch it off; ``socket``, ``open``-for-writing outside the folder, ``os.remove``/``rename``/
``mkdir`` outside it, ``subprocess``/``os.system``/``exec``/``fork`` and ``ctypes`` raise
``PermissionError``. Rlimits bound CPU time, address space and file size; a wall-clock timeout kills
the child's whole process group. Where user namespaces exist the child also runs in an empty
network namespace (``unshare -rn``). ``check_sandbox()`` probes that a socket is refused and raises
``SandboxUnavailable`` otherwise: HumanEval is refused rather than run unsandboxed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MEMORY_BYTES = 2 << 30


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be set up here: HumanEval must not run."""


class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    REFUSED = "refused"  # the program tried something the sandbox forbids


@dataclass(frozen=True)
class RunResult:
    outcome: Outcome
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.outcome is Outcome.PASSED


# Runs in the child before the program: installs the guard, then executes the program's file.
_PRELUDE = r'''
import os, sys
_root = os.path.realpath(sys.argv[1])
_prog = sys.argv[2]
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def _inside(path):
    try:
        p = os.path.realpath(os.fsdecode(path) if not isinstance(path, int) else "")
    except Exception:
        return False
    return p == _root or p.startswith(_root + os.sep)

_DENY = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
         "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
         "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.kill", "os.killpg", "signal.pthread_kill"}
_PATHS = {"os.remove", "os.rename", "os.mkdir", "os.rmdir", "os.chmod", "os.chown", "os.symlink", "os.link",
          "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move"}

_log = os.open(sys.argv[3], os.O_WRONLY | os.O_APPEND)  # outside _root: the program cannot touch it

def _deny(message):
    os.write(_log, (message + "\n").encode())  # recorded even if the program catches the error
    raise PermissionError(message)

def _hook(event, args):
    if event in _DENY:
        _deny(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in str(mode) for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & _WRITE)
        if writing and not isinstance(path, int) and not _inside(path):
            _deny(f"sandbox: writing {path!r} outside the sandbox folder is not allowed")
    elif event in _PATHS:
        for p in args[:2]:
            if isinstance(p, (str, bytes, os.PathLike)) and not _inside(p):
                _deny(f"sandbox: {event} on {p!r} outside the sandbox folder is not allowed")

with open(_prog) as _f:
    _code = compile(_f.read(), "program.py", "exec")
sys.addaudithook(_hook)
os.chdir(_root)
exec(_code, {"__name__": "__main__"})
'''


def _limits(memory_bytes: int, cpu_s: int):
    def apply() -> None:
        import resource

        os.setsid()
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 20, 64 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


@cache
def _netns_prefix() -> tuple[str, ...]:
    """``unshare -rn`` when it works here (an empty network namespace), else nothing."""
    exe = shutil.which("unshare")
    if exe is None:
        return ()
    try:
        ok = subprocess.run([exe, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return (exe, "-rn") if ok else ()


def run_program(program: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                memory_bytes: int = DEFAULT_MEMORY_BYTES) -> RunResult:
    """Execute ``program`` (Python source) in the sandbox; passed = exit status 0."""
    if os.name != "posix":
        raise SandboxUnavailable("the HumanEval sandbox needs POSIX rlimits and process groups (Linux/macOS)")
    with tempfile.TemporaryDirectory(prefix="nvlm_eval_sandbox_") as outer:
        root = Path(outer) / "work"
        root.mkdir()
        (root / "program.py").write_text(program)
        (Path(outer) / "prelude.py").write_text(_PRELUDE)
        violations = Path(outer) / "violations.log"
        violations.write_text("")
        cmd = [*_netns_prefix(), sys.executable, "-I", "-S", str(Path(outer) / "prelude.py"), str(root),
               str(root / "program.py"), str(violations)]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(root), "TMPDIR": str(root), "PYTHONHASHSEED": "0"}
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, preexec_fn=_limits(memory_bytes, int(timeout_s) + 1))
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return RunResult(Outcome.TIMEOUT, f"ran past {timeout_s:g} s")
        text = err.decode(errors="replace")
        if violations.read_text().strip():
            return RunResult(Outcome.REFUSED, violations.read_text().strip().splitlines()[0])
        if proc.returncode == 0:
            return RunResult(Outcome.PASSED)
        if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            return RunResult(Outcome.TIMEOUT, f"killed by signal {-proc.returncode}")
        return RunResult(Outcome.FAILED, text[-2000:])


@cache
def check_sandbox() -> None:
    """Refuse (SandboxUnavailable) unless a probe shows sockets are blocked and programs run."""
    try:
        ok = run_program("pass\n", timeout_s=20)
        net = run_program("import socket\nsocket.socket()\n", timeout_s=20)
    except (OSError, ValueError) as exc:
        raise SandboxUnavailable(f"cannot start a sandboxed Python here: {exc}") from exc
    if not ok.passed or net.outcome is not Outcome.REFUSED:
        raise SandboxUnavailable(
            f"the HumanEval sandbox did not hold on this machine (trivial program: {ok.outcome.value}, socket "
            f"probe: {net.outcome.value} {net.detail[:200]}); refusing to execute model completions")
