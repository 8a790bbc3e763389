"""Start, watch and stop the consortium's processes on one machine, by pid.

Every process is started in its own session (its pid is its process group id),
so stopping it also stops the helpers Flower starts under it (SuperExec,
``flwr-serverapp``, ``flwr-clientapp``). ``DIR/pids.json`` records each pid
with the process's start time, so a recycled pid is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fedrisk.consortium.commands import Command
from fedrisk.consortium.errors import ConsortiumError

_CHILDREN: dict[int, subprocess.Popen] = {}  # processes started by this Python process
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class ProcessRecord:
    """A process started by ``consortium up``: name, pid, start time and log file."""

    name: str
    pid: int
    start_time: int
    log: str
    log_offset: int = 0

    def alive(self) -> bool:
        """Whether this very process (same pid and start time) still runs (not a zombie)."""
        _reap(self.pid)
        return _start_time(self.pid) == self.start_time


def start(command: Command, log: Path, niceness: int = 0) -> ProcessRecord:
    """Start ``command`` in a new session, output appended to ``log``, files created 0600."""
    log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    argv = (["nice", "-n", str(niceness)] if niceness else []) + command.argv
    with open(log, "ab", opener=lambda p, f: os.open(p, f, 0o600)) as out:
        offset = out.tell()
        try:
            process = subprocess.Popen(argv, env=command.process_env(), cwd=command.cwd,
                                       stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True,
                                       umask=0o077)
        except OSError as error:
            raise ConsortiumError(f"cannot start {command.name}: {error}") from None
    _CHILDREN[process.pid] = process
    return ProcessRecord(command.name, process.pid, _start_time(process.pid) or 0, str(log),
                         offset)


def stop(record: ProcessRecord, timeout: float) -> None:
    """Stop a process and its group: SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if _start_time(record.pid) != record.start_time and not _group_running(record.pid):
        return  # gone, or the pid now belongs to someone else
    _signal_group(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _group_running(record.pid):
        time.sleep(0.1)
    if _group_running(record.pid):
        _signal_group(record.pid, signal.SIGKILL)
        while _group_running(record.pid) and time.monotonic() < deadline + timeout:
            time.sleep(0.1)
    _reap(record.pid)


def read_records(pids_file: Path) -> list[ProcessRecord]:
    """The processes recorded in ``pids.json`` (empty if there is none)."""
    if not pids_file.exists():
        return []
    try:
        return [ProcessRecord(**entry) for entry in json.loads(pids_file.read_text())]
    except (ValueError, TypeError) as error:
        raise ConsortiumError(f"{pids_file}: unreadable ({error}); stop its processes by "
                              "hand and delete it") from None


def write_records(pids_file: Path, records: list[ProcessRecord]) -> None:
    """Write ``pids.json`` (removed when empty)."""
    if not records:
        pids_file.unlink(missing_ok=True)
        return
    pids_file.write_text(json.dumps([asdict(r) for r in records], indent=2))


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on ``host:port`` (a bind with SO_REUSEADDR fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def accepts_connections(host: str, port: int) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def log_text(record: ProcessRecord) -> str:
    """What the process wrote to its log (since it started), without colour codes."""
    try:
        with open(record.log, "rb") as log:
            log.seek(record.log_offset)
            return _ANSI.sub("", log.read().decode(errors="replace"))
    except FileNotFoundError:
        return ""


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks after boot (``/proc/PID/stat`` field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None  # a zombie has finished
    return int(fields[19])


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Signal the session ``pgid`` started (its leader and every helper under it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_running(pgid: int) -> bool:
    """Whether a live process is left in the group *and* session ``pgid`` (ours)."""
    _reap(pgid)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and int(fields[3]) == pgid and fields[0] != "Z":
            return True
    return False


def _reap(pid: int) -> None:
    process = _CHILDREN.get(pid)
    if process is not None and process.poll() is not None:
        del _CHILDREN[pid]
