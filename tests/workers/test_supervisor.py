"""`gateway.workers.supervisor`: the supervisor's stop and reloads, with real child processes
(small Python scripts standing in for workers, so a test can make one die or refuse to stop).
The whole of `toolgate serve --workers 2` is in tests/e2e/test_workers.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson

from gateway.workers import Supervisor


def _script(*lines: str) -> list[str]:
    return [sys.executable, "-c", "\n".join(lines)]


def test_a_worker_dying_stops_the_others_and_one_that_will_not_stop_is_killed(
        tmp_path: Path) -> None:
    """Worker 2 ignores SIGTERM; worker 1 dies once worker 2 is ready. The supervisor stops
    everyone, kills worker 2 at the bound, and exits 1."""
    ready = tmp_path / "two-ignores-sigterm"

    def command(index: int, control_fd: int) -> Sequence[str]:
        if index == 1:
            return _script("import os, sys, time",
                           f"while not os.path.exists({str(ready)!r}): time.sleep(0.01)",
                           "sys.exit(3)")
        return _script("import signal, time, pathlib",
                       "signal.signal(signal.SIGTERM, signal.SIG_IGN)",
                       f"pathlib.Path({str(ready)!r}).touch()",
                       "time.sleep(60)")

    supervisor = Supervisor(command, 2, dict(os.environ), stop_timeout_s=0.5)
    assert supervisor.run() == 1
    assert [c.proc.returncode for c in supervisor.children] == [3, -signal.SIGKILL]


def test_sigterm_to_the_supervisor_stops_every_worker_and_exits_0(tmp_path: Path) -> None:
    """Each stand-in says it listens and stops on SIGTERM; the last to start sends the
    supervisor (this process) SIGTERM once every worker is ready. The control pipe, the
    metrics directory of the run and the signal handlers are the supervisor's own."""
    handler = signal.getsignal(signal.SIGTERM)

    def command(index: int, control_fd: int) -> Sequence[str]:
        lines = ["import os, signal, sys, time",
                 "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))",
                 "signal.signal(signal.SIGUSR2, signal.SIG_IGN)",   # worker 1's "open admin"
                 "assert os.path.isdir(os.environ['PROMETHEUS_MULTIPROC_DIR'])",
                 f"open({str(tmp_path)!r} + '/dir', 'w').write("
                 "os.environ['PROMETHEUS_MULTIPROC_DIR'])",
                 f"os.write({control_fd}, b'{index} listening\\n')",
                 f"open({str(tmp_path)!r} + '/ready{index}', 'w').close()"]
        if index == 3:
            lines += [f"while not all(os.path.exists({str(tmp_path)!r} + f'/ready{{i}}') "
                      "for i in (1, 2, 3)): time.sleep(0.01)",
                      "os.kill(os.getppid(), signal.SIGTERM)"]
        return _script(*lines, "time.sleep(60)")

    supervisor = Supervisor(command, 3, dict(os.environ))
    assert supervisor.run() == 0
    assert [c.proc.returncode for c in supervisor.children] == [0, 0, 0]
    assert all(c.listening for c in supervisor.children)
    assert not Path((tmp_path / "dir").read_text()).exists(), "the run's metrics are gone"
    assert signal.getsignal(signal.SIGTERM) is handler


def test_a_reload_reaches_a_worker_still_starting_once_it_listens(tmp_path: Path) -> None:
    """SIGHUP to the supervisor while worker 2 has no handler yet (its default would kill
    it): worker 1 reloads at once, worker 2 as soon as it says it listens."""
    def command(index: int, control_fd: int) -> Sequence[str]:
        mark = f"{str(tmp_path)!r} + '/hup{index}'"
        lines = ["import os, signal, sys, time",
                 "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))",
                 "signal.signal(signal.SIGUSR2, signal.SIG_IGN)"]
        if index == 2:   # starts once worker 1 has reloaded
            lines += [f"while not os.path.exists({str(tmp_path)!r} + '/hup1'): "
                      "time.sleep(0.01)"]
        lines += [f"signal.signal(signal.SIGHUP, lambda *_: open({mark}, 'w').close())",
                  f"os.write({control_fd}, b'{index} listening\\n')"]
        if index == 1:
            lines += ["os.kill(os.getppid(), signal.SIGHUP)"]
        else:
            lines += [f"while not os.path.exists({mark}): time.sleep(0.01)",
                      "os.kill(os.getppid(), signal.SIGTERM)"]
        return _script(*lines, "time.sleep(60)")

    supervisor = Supervisor(command, 2, dict(os.environ))
    assert supervisor.run() == 0
    assert (tmp_path / "hup1").exists() and (tmp_path / "hup2").exists()


def test_every_line_a_worker_wrote_is_relayed_whole_after_it_exits(tmp_path: Path) -> None:
    """With `audit.stdout`, the workers' records reach the supervisor's stdout whole and
    all of them, also those still in the pipes when the workers have exited; a last line
    cut short is ended, so it never runs into another worker's."""
    stand_in = ("import os, signal, sys",
                "signal.signal(signal.SIGUSR2, signal.SIG_IGN)",
                "index, fd = int(sys.argv[1]), int(sys.argv[2])",
                "os.write(fd, b'%d listening\\n' % index)",
                "for i in range(3000):",
                "    sys.stdout.write('{\"w\": %d, \"i\": %d, \"pad\": \"%s\"}\\n'"
                " % (index, i, 'x' * 100))",
                "sys.stdout.write('torn-%d' % index)",   # a last line cut short
                "sys.stdout.flush()")
    supervise = ("import os, sys",
                 "from gateway.workers import Supervisor",
                 f"script = {chr(10).join(stand_in)!r}",
                 "def command(index, fd):",
                 "    return [sys.executable, '-c', script, str(index), str(fd)]",
                 "sys.exit(Supervisor(command, 2, dict(os.environ), relay_stdout=True).run())")
    out = tmp_path / "stdout"
    with out.open("wb") as stdout:
        done = subprocess.run(_script(*supervise), stdout=stdout, stderr=subprocess.PIPE,
                              timeout=60, check=False)
    assert done.returncode == 1, done.stderr   # workers that exit unasked stop the gateway
    lines = out.read_bytes().splitlines()
    assert sorted(line for line in lines if line.startswith(b"torn")) == [b"torn-1",
                                                                          b"torn-2"]
    records = [orjson.loads(line) for line in lines if not line.startswith(b"torn")]
    assert sorted((r["w"], r["i"]) for r in records) == [
        (w, i) for w in (1, 2) for i in range(3000)]


def test_a_start_failure_is_printed_once_however_many_workers_fail(tmp_path: Path) -> None:
    """Workers 1 and 2 cannot start (each says why on the control pipe, as `gateway.serve`
    does); worker 3 starts. stderr holds one `error:` line and nothing else — no log line
    about the exits, no traceback — worker 3 is stopped, and the supervisor exits 1."""
    stand_in = ("import os, signal, sys, time",
                "index, fd = int(sys.argv[1]), int(sys.argv[2])",
                "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))",
                "signal.signal(signal.SIGUSR2, signal.SIG_IGN)",
                "if index < 3:",
                "    os.write(fd, b'%d failed audit: cannot write /x/w%d.jsonl: fix it\\n'"
                " % (index, index))",
                "    sys.exit(1)",
                "os.write(fd, b'3 listening\\n')",
                "time.sleep(60)")
    supervise = ("import os, sys",
                 "from gateway.workers import Supervisor",
                 f"script = {chr(10).join(stand_in)!r}",
                 "def command(index, fd):",
                 "    return [sys.executable, '-c', script, str(index), str(fd)]",
                 "sys.exit(Supervisor(command, 3, dict(os.environ)).run())")
    done = subprocess.run(_script(*supervise), capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert re.fullmatch(r"error: audit: cannot write /x/w[12]\.jsonl: fix it", lines[0])
