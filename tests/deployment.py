"""Helpers of the tests that run a real consortium on loopback (SuperLink, nginx, SuperNodes)."""

import os
import random
import socket
import time
from pathlib import Path

from fedrisk.consortium import Layout, demo_bank_side
from fedrisk.consortium.layout import read_bank, read_settings

BANKS = ["northeast", "midwest", "south_atlantic"]
START_TIMEOUT = 150.0
RUN_TIMEOUT = 600.0


def free_base_port(count: int) -> int:
    """A base port with `count` consecutive free ports on 127.0.0.1."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        if all(_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free ports")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def processes_mentioning(text: str) -> list[str]:
    """Live processes (pid and command) whose command line mentions `text` (a consortium dir)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes()
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text.encode() in command and state != "Z" and int(cmdline.parent.name) != os.getpid():
            shown = command.replace(bytes(1), b" ").decode(errors="replace")[:200]
            found.append(f"{cmdline.parent.name}: {shown}")
    return found


def processes_left(text: str, within: float = 20.0) -> list[str]:
    """Processes still mentioning `text` after up to `within` seconds (the SuperLink's own
    SuperExec exits by itself once the SuperLink is gone; under load that takes seconds)."""
    deadline = time.monotonic() + within
    while (left := processes_mentioning(text)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def bank_log(root: Path, bank: str) -> str:
    return "".join(p.read_text(errors="replace") for p in (root / "logs").glob(f"{bank}*.log"))


def unregistered_bank(root: Path, name: str, data: Path | None = None) -> Path:
    """A bank that ran its side (`bank-init`, its own keys) but that nobody registered.

    It uses `data` in place (default: a copy of the first bank's table) and the
    consortium's contract, CA and fleet address, in DIR/banks/<name>/.
    """
    layout = Layout.at(root)
    first = read_bank(layout.bank_dir(BANKS[0]))
    index = len(list(layout.banks_dir.iterdir()))
    demo_bank_side(layout, name, index, data or first.data, first.contract)
    assert name not in read_settings(layout).banks
    return layout.bank_dir(name)
