"""PID 1 of an MPIJob worker pod: runs sshd, and hands SIGTERM on to the training ranks.

The MPI Operator's worker container runs an SSH server; the launcher's `horovodrun` starts the ranks
(`medsynth train`) through it, so each rank is a child of one of sshd's sessions, in a session of its
own. The kubelet signals only the container's PID 1. Were that sshd, it would exit on SIGTERM, and
the kernel then SIGKILLs every other process of the container: every rank of the pod dies mid-step
and the run loses the steps since its last checkpoint.

So PID 1 is this: it runs the server as its child and, on SIGTERM, sends SIGTERM to every rank (each
finishes its step, writes a checkpoint and exits 143), waits until they are gone, then stops the
server and exits 143 itself. As PID 1 it also reaps the orphans that ended sessions leave behind.
Usage (the container's command): `python -m medsynth.cluster.worker /usr/sbin/sshd -De -f CONFIG`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("medsynth")

# A rank is a process whose arguments hold `medsynth train` (the console script, or `-m medsynth.cli`).
RANK_PROGRAMS = ("medsynth", "medsynth.cli")
RANK_COMMAND = "train"
TERMINATED_EXIT = 143  # 128 + SIGTERM
SERVER_STOP_S = 10.0  # how long the server gets to exit once the ranks are gone


def is_rank(argv: list[str]) -> bool:
    """Whether a command line is a training rank (`medsynth train …`), not a shell that mentions one."""
    pairs = zip(argv, argv[1:], strict=False)
    return any(os.path.basename(a) in RANK_PROGRAMS and b == RANK_COMMAND for a, b in pairs)


def rank_pids(proc: str | Path = "/proc") -> list[int]:
    """Running training ranks (zombies excluded) among the processes `proc` shows: in a container, its own."""
    found = []
    for entry in Path(proc).iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone meanwhile
            continue
        if state != "Z" and is_rank([a for a in argv if a]):
            found.append(int(entry.name))
    return sorted(found)


class _Signals:
    """SIGTERM/SIGINT as a flag the supervision loop reads (the previous handlers come back on exit)."""

    def __enter__(self) -> _Signals:
        self.received: int | None = None
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)


def _reap(child: subprocess.Popen) -> None:
    """Collect every exited child (the server, and orphans re-parented to PID 1)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == child.pid:
            child.returncode = os.waitstatus_to_exitcode(status)


def supervise(command: list[str], *, proc: str | Path = "/proc", poll_s: float = 0.1) -> int:
    """Run `command` (the SSH server) until it exits, or until SIGTERM: then stop the ranks first.

    Returns the server's exit code when it ended by itself, 143 after a SIGTERM.
    """
    with _Signals() as signals:
        return _supervise(command, signals, Path(proc), poll_s)


def _supervise(command: list[str], signals: _Signals, proc: Path, poll_s: float) -> int:
    server = subprocess.Popen(command)
    while signals.received is None:
        _reap(server)
        if server.returncode is not None:
            log.error("%s exited with %s", command[0], server.returncode)
            return server.returncode
        time.sleep(poll_s)
    ranks = rank_pids(proc)
    log.warning("signal %d: asking %d training rank(s) to checkpoint and exit: %s", signals.received,
                len(ranks), ranks)
    for pid in ranks:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.kill(pid, signal.SIGTERM)
    # No deadline of our own: the kubelet SIGKILLs the pod when its grace period ends.
    while rank_pids(proc):
        _reap(server)
        time.sleep(poll_s)
    if server.returncode is None:
        server.terminate()
        deadline = time.monotonic() + SERVER_STOP_S
        while server.returncode is None and time.monotonic() < deadline:
            _reap(server)
            time.sleep(poll_s)
    return TERMINATED_EXIT


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m medsynth.cluster.worker SERVER [ARGS...]  (/usr/sbin/sshd -De -f CONFIG)",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="medsynth worker: %(message)s")
    try:
        return supervise(args)
    except FileNotFoundError as e:
        print(f"error: cannot start {args[0]}: {e.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
