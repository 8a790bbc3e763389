"""``fedrisk consortium run``: submit a training run with ``flwr run`` and check how it ended.

``flwr run --stream`` exits 0 even when the run failed, so after streaming the
run's log this asks the SuperLink for the run's final status (``flwr ls --run-id
ID``) and raises :class:`RunFailedError` with the reason unless it completed.
The ServerApp writes ``metrics.json`` to the run config's ``output-dir``, an
absolute path on the coordinator's host (default ``DIR/coordinator/runs/NAME``).
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import re
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pathspec
import tomli_w

import fedrisk
from fedrisk.consortium.commands import Command, flwr_command, write_cli_connection
from fedrisk.consortium.deploy import registered_nodes, run_flwr_json
from fedrisk.consortium.errors import ConsortiumError, RunFailedError
from fedrisk.consortium.layout import Layout, Settings, read_settings
from fedrisk.consortium.processes import accepts_connections

DEFAULT_RUN_TIMEOUT = 3600.0
COMPLETED = "finished:completed"
_RUN_ID = re.compile(r"started run (\d+)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Exceeded|Refused))\b:?\s*(.*)$")


def consortium_run(directory: Path, run_config: dict, name: str | None = None,
                   app_dir: Path | None = None, timeout: float = DEFAULT_RUN_TIMEOUT,
                   echo: Callable[[str], None] = print, resume: str | None = None) -> dict:
    """Run one federated training on the consortium and return its metrics.json.

    Args:
        directory: the consortium directory (its SuperLink must be up).
        run_config: run-config keys (as in pyproject ``[tool.flwr.app.config]``).
            ``min-banks`` is set to the number of registered banks and a relative
            (or missing) ``output-dir`` is placed under ``DIR/coordinator/runs/``.
        name: the run's folder name under ``runs/`` (default: a timestamp).
        app_dir: the Flower app to submit (default: the fedrisk project root).
        timeout: seconds before the run is stopped and reported as failed.
        echo: where each streamed log line goes.
        resume: the name of a run (its folder under ``runs/``) to continue at the round
            after its checkpoint, as the same run in every bank's ledger (its ``run-id``)
            and with the same config; ``run_config`` may only repeat the run's values.

    Raises:
        ConfigError: a bad run-config value (before anything is submitted).
        CheckpointError: ``resume`` names no usable checkpoint, or changes the config.
        ConsortiumError: the SuperLink is not reachable, or a registered bank is offline.
        RunFailedError: the run did not complete; the message has the reason.

    """
    layout = Layout.at(directory)
    settings = read_settings(layout)
    app = _app_dir(app_dir, layout)
    _require_superlink(settings)
    write_cli_connection(layout, settings)
    banks = _online_banks(layout.root)
    if resume is not None:
        config, output, name = _resume_config(layout, run_config, resume)
    else:
        config, output, name = _run_config(layout, run_config, name, banks)
    config_file = _write_run_config(layout, config, name)
    log_path = layout.log(f"run-{name}")
    command = flwr_command(layout, "run", "run", str(app), settings.connection,
                           "--run-config", str(config_file), "--stream")
    lines, run_id = _stream(command, log_path, timeout, echo, layout, settings)
    status, details = run_status(layout.root, run_id)
    if status != COMPLETED:
        raise RunFailedError(f"run {run_id} ended {status}: "
                             f"{failure_reason(lines, details)} (log: {log_path})")
    return _read_metrics(output, run_id)


def run_status(directory: Path, run_id: int) -> tuple[str, str]:
    """``(status, details)`` of a run as the SuperLink reports it (``flwr ls --run-id``)."""
    layout = Layout.at(directory)
    settings = read_settings(layout)
    result = run_flwr_json(flwr_command(layout, "ls", "ls", settings.connection,
                                        "--run-id", str(run_id)), "--format", "json")
    if not result.get("success") or not result.get("runs"):
        raise ConsortiumError(f"cannot read the status of run {run_id}: "
                              f"{result.get('error-message', result)}")
    run = result["runs"][0]
    return str(run.get("status")), str(run.get("status-details") or "")


def failure_reason(lines: list[str], details: str = "") -> str:
    """The most telling line of a failed run: its last exception, else its last error."""
    exceptions = [m for m in (_EXCEPTION.match(line.strip()) for line in lines) if m]
    if exceptions:
        kind, message = exceptions[-1].groups()
        return f"{kind}: {message}".strip().rstrip(":")
    errors = [line.strip() for line in lines if "ERROR" in line]
    if errors:
        return errors[-1]
    return details or "no reason in the run's log"


def _app_dir(app_dir: Path | None, layout: Layout) -> Path:
    """The Flower app to submit; refuse a consortium directory that it would package."""
    app = Path(app_dir) if app_dir else Path(fedrisk.__file__).resolve().parent.parent
    app = app.resolve()
    if not (app / "pyproject.toml").is_file():
        raise ConsortiumError(f"{app} is not a Flower app (no pyproject.toml); pass the "
                              "fedrisk project directory")
    if layout.root.is_relative_to(app) and not _ignored(app, layout.root):
        raise ConsortiumError(f"{layout.root} is inside the app directory {app}: `flwr run` "
                              "would package its .toml/.json files; move it outside (or "
                              "under a .gitignore'd folder)")
    return app


def _ignored(app: Path, path: Path) -> bool:
    gitignore = app / ".gitignore"
    if not gitignore.is_file():
        return False
    spec = pathspec.PathSpec.from_lines("gitwildmatch", gitignore.read_text().splitlines())
    return spec.match_file(str(path.relative_to(app)) + "/")


def _require_superlink(settings: Settings) -> None:
    if not accepts_connections(settings.control_host, settings.control_port):
        raise ConsortiumError(f"no SuperLink answers at {settings.control_address}; "
                              "start it with `fedrisk consortium up DIR`")


def _online_banks(directory: Path) -> int:
    """The number of registered banks; all must be online, or the run would wait for them."""
    nodes = registered_nodes(directory)
    offline = [n["node-id"] for n in nodes if n.get("status") != "online"]
    if offline:
        raise ConsortiumError(f"{len(offline)} of {len(nodes)} registered banks are not "
                              f"connected (node ids {', '.join(map(str, offline))}); start "
                              "them or unregister them")
    if not nodes:
        raise ConsortiumError("no bank is registered and connected")
    return len(nodes)


def _run_config(layout: Layout, run_config: dict, name: str | None,
                banks: int) -> tuple[dict, Path, str]:
    """The submitted config (absolute ``output-dir``, ``min-banks``), output dir and run name."""
    given = run_config.get("output-dir")
    name = name or (Path(str(given)).name if given else
                    dt.datetime.now().strftime("run-%Y%m%d-%H%M%S"))
    output = Path(str(given or name))
    output = output if output.is_absolute() else layout.runs / output
    config = {"ledger-heads-file": str(layout.ledger_heads), **run_config,
              "output-dir": str(output), "min-banks": banks}
    from fedrisk.config import RunConfig  # imports torch: only when a run is submitted

    RunConfig.from_run_config(config)  # a bad value is a one-line ConfigError, here
    return config, output, name


def _resume_config(layout: Layout, run_config: dict, name: str) -> tuple[dict, Path, str]:
    """The config that continues run ``name``: its checkpointed config, its run id, ``resume``."""
    from fedrisk.config import RunConfig  # imports torch: only when a run is submitted
    from fedrisk.server.checkpoint import check_same_run, read_checkpoint

    submitted = layout.runs / name / "run-config.toml"
    if not submitted.is_file():
        raise ConsortiumError(f"no run named {name!r} to resume ({submitted} is missing)")
    output = Path(str(tomllib.loads(submitted.read_text())["output-dir"]))
    checkpoint = read_checkpoint(output)
    if checkpoint.round >= checkpoint.num_rounds and (output / "metrics.json").is_file():
        raise ConsortiumError(f"run {name!r} finished all {checkpoint.num_rounds} rounds; "
                              "there is nothing to resume")
    resumed = {"run-id": checkpoint.run_id, "resume": True}
    given = RunConfig.from_run_config({**checkpoint.config, **run_config, **resumed})
    check_same_run(checkpoint, given, checkpoint.run_id, output)
    return {**checkpoint.config, **resumed}, output, name


def _write_run_config(layout: Layout, config: dict, name: str) -> Path:
    """The submitted run config, kept as ``DIR/coordinator/runs/NAME/run-config.toml``."""
    folder = layout.runs / name
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / "run-config.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def _stream(command: Command, log_path: Path, timeout: float, echo: Callable[[str], None],
            layout: Layout, settings: Settings) -> tuple[list[str], int]:
    """Run ``flwr run --stream``, echo and log its lines; return them and the run id."""
    process = subprocess.Popen(command.argv, env=command.process_env(), cwd=command.cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1)
    lines: list[str] = []
    run_id: int | None = None
    deadline = time.monotonic() + timeout
    with open(log_path, "a") as log:
        for line in _lines_until(process, deadline):
            clean = _ANSI.sub("", line.rstrip("\n"))
            lines.append(clean)
            log.write(f"{dt.datetime.now():%H:%M:%S} {clean}\n")
            echo(clean)
            if run_id is None and (match := _RUN_ID.search(clean)):
                run_id = int(match.group(1))
    if process.poll() is None:
        process.kill()
        process.wait()
        if run_id is not None:
            run_flwr_json(flwr_command(layout, "stop", "stop", str(run_id),
                                       settings.connection), "--format", "json")
        raise RunFailedError(f"run {run_id} did not finish within {timeout:.0f} s and was "
                             f"stopped (log: {log_path})")
    if run_id is None:
        raise RunFailedError(f"`flwr run` did not start a run: {failure_reason(lines)} "
                             f"(log: {log_path})")
    return lines, run_id


def _lines_until(process: subprocess.Popen, deadline: float) -> Iterator[str]:
    """Yield the process's output lines until it ends or the deadline passes."""
    pending: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            pending.put(line)
        pending.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = pending.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        if line is None:
            process.wait()
            return
        yield line


def _read_metrics(output: Path, run_id: int) -> dict:
    path = output / "metrics.json"
    if not path.is_file():
        raise RunFailedError(f"run {run_id} completed but {path} is missing (is output-dir on "
                             "another host?)")
    return json.loads(path.read_text())
