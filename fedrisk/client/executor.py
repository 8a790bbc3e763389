"""The bank's own ClientApp executor: Flower's SuperExec loop, with the bank's app gate.

A bank's SuperNode runs with ``--isolation process``, so it executes nothing itself:
this process, the bank's installed fedrisk (never code from a run's bundle), acquires
each ClientApp task from the SuperNode's local Runtime API with Flower's own SuperExec
loop (``run_superexec``) and runs it in a short-lived process of its own, in one of two
modes:

- ``fork``: the task process is forked from this process, which has already imported
  torch, Opacus and pandas (a task starts in ~0.05 s instead of 4-8 s);
- ``spawn``: the task process is a fresh interpreter (``python -m
  fedrisk.client.executor task``, its token on standard input, never in ``ps``), as
  with Flower's own ``flwr-clientapp``.

Either way the task runs Flower's ``run_clientapp`` (the body of ``flwr-clientapp``) with
one step added between pulling the task and installing its app bundle (FAB): the bank's
app gate (:mod:`fedrisk.client.app_gate`). An unapproved bundle is refused there, and
nothing from it is installed or imported. An approved bundle is installed from the very
bytes that were hashed into a fresh Flower home private to the task (Flower would reuse
any existing install directory named by 8 hex digits of the hash), and the app's own
packages (``fedrisk``) are dropped from ``sys.modules`` first, so the ClientApp's code is
the bundle's, exactly as with ``flwr-clientapp``. Runtime dependency installation is
always off, and only ClientApp tasks are acquired.

    python -m fedrisk.client.executor serve --mode fork \
        --runtime-api-address 127.0.0.1:9301 --superexec-auth-secret-file FILE \
        [--parent-pid SUPERNODE_PID]
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import NoReturn

import flwr.supernode.runtime.run_clientapp as flower_task
from flwr.app import Context, Message
from flwr.common.args import add_args_flwr_app_common, try_obtain_flwr_app_token
from flwr.common.constant import FLWR_HOME, SubStatus
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.superexec import run_superexec as flower_superexec
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult
from flwr.supercore.tls import validate_and_resolve_root_certificates
from flwr.supercore.utils import get_flwr_home

from fedrisk.client.app_gate import approval_refusal, bundle_digest, refuse_task
from fedrisk.privacy.keys import ensure_private_dir

MODES = ("fork", "spawn")
EXECUTOR_MODULE = "fedrisk.client.executor"
READY_LINE = "fedrisk bank executor ready"
APP_PACKAGES = ("fedrisk",)
FORK_PRELOAD = ("fedrisk.client.client_app", "fedrisk.data.embedded", "fedrisk.privacy.egress")
TASK_HOMES = "tasks"
_flower_pull_task_input = flower_task.pull_task_input
log = logging.getLogger("fedrisk.bank")


class TaskRefused(BaseException):  # noqa: N818 - a control-flow signal, not an error
    """The gate refused the task and already replied.

    A ``BaseException`` so that ``run_clientapp``'s ``except Exception`` does not turn it
    into a second reply carrying the exception's text.
    """


class BankExecutor:
    """A SuperExec executor that runs each ClientApp task behind the bank's app gate."""

    def __init__(self, mode: str, app_packages: Iterable[str] = APP_PACKAGES) -> None:
        """``mode``: ``fork`` or ``spawn``; ``app_packages``: the bundle's own packages."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self.app_packages = tuple(app_packages)
        self.forked: set[int] = set()
        self.spawned: list[subprocess.Popen] = []

    def get_eligible_capacity(self, supported_task_types: set[TaskType], *,
                              insecure: bool = False,
                              root_certificates_path: str | None = None,
                              ) -> tuple[set[TaskType], set[str]]:
        """Only ClientApp tasks, any number at once (as with Flower's subprocess executor)."""
        return {t for t in supported_task_types if t == TaskType.CLIENT_APP}, set()

    def wait_for_capacity(self, task_type: TaskType | None = None, *,
                          fab_hash: str | None = None, insecure: bool = False,
                          root_certificates_path: str | None = None) -> None:
        """No capacity gate."""

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Start the task's process: forked from this one, or a fresh interpreter."""
        if spec.task_type != TaskType.CLIENT_APP:
            return LaunchResult.failed(f"a bank runs ClientApp tasks only, not {spec.task_type}")
        if self.mode == "spawn":
            self.spawned.append(_spawn(spec, self.app_packages))
            return LaunchResult.accepted()
        pid = os.fork()
        if pid == 0:
            _exit_with(lambda: run_task(
                spec.runtime_api_address, spec.token, insecure=spec.insecure,
                certificates=validate_and_resolve_root_certificates(
                    spec.root_certificates_path, spec.insecure),
                parent_pid=spec.parent_pid, app_packages=self.app_packages))
        self.forked.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap finished task processes (no zombies)."""
        for pid in list(self.forked):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.forked.discard(pid)
        self.spawned = [process for process in self.spawned if process.poll() is None]

    def close(self) -> None:
        """Nothing to release: running tasks end on their own (they watch this process)."""


def run_task(runtime_api_address: str, token: str, *, insecure: bool,
             certificates: bytes | None, parent_pid: int | None,
             app_packages: tuple[str, ...] = APP_PACKAGES) -> int:
    """Run one ClientApp task as ``flwr-clientapp`` does, behind the app gate; return its exit code.

    Flower's ``run_clientapp`` pulls the task with :func:`gated_pull_task_input` (the
    one step added), in a Flower home of the task's own.
    """
    flower_task.pull_task_input = partial(gated_pull_task_input, app_packages=app_packages)
    with task_flwr_home():
        try:
            flower_task.run_clientapp(runtime_api_address=runtime_api_address, token=token,
                                      insecure=insecure, certificates=certificates,
                                      parent_pid=parent_pid, runtime_dependency_install=False)
        except TaskRefused:
            return 0
        except SystemExit as exit_:
            return exit_.code if isinstance(exit_.code, int) else 1
    return 0


def gated_pull_task_input(client: RuntimeHttpClient,
                          app_packages: tuple[str, ...] = APP_PACKAGES,
                          ) -> tuple[Message, Context, Run, Fab]:
    """Flower's ``pull_task_input``, then the bank's app gate, before anything is installed.

    Refused: the fixed-text refusal is pushed as the task's reply, the task is finished,
    and :class:`TaskRefused` ends it. Approved: the task goes on with its bundle's
    ``hash_str`` set to the hash computed here from the bytes Flower will install, and the
    app's own packages dropped from ``sys.modules`` so they load from the bundle.
    """
    message, context, run, fab = _flower_pull_task_input(client)
    digest = bundle_digest(fab.content)
    refusal = approval_refusal(digest, context.node_config)
    if refusal is not None:
        flower_task.push_message(client, refuse_task(message, context, refusal), context)
        flower_task.push_task_output(client, None, SubStatus.COMPLETED, str(refusal))
        raise TaskRefused(str(refusal))
    log.info("bank %s runs approved app bundle %s (run %s)",
             context.node_config.get("bank-id", "unknown"), digest, context.run_id)
    for name in [m for m in sys.modules if m.split(".")[0] in app_packages]:
        del sys.modules[name]
    return message, context, run, Fab(digest, fab.content, fab.verifications)


@contextmanager
def task_flwr_home() -> Iterator[Path]:
    """A fresh Flower home (0700) for one task, removed afterwards; bundles install there."""
    homes = get_flwr_home() / TASK_HOMES
    ensure_private_dir(homes)
    home = Path(tempfile.mkdtemp(prefix="task-", dir=homes))
    bank_home = os.environ.get(FLWR_HOME)
    os.environ[FLWR_HOME] = str(home)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)
        if bank_home is None:
            del os.environ[FLWR_HOME]
        else:
            os.environ[FLWR_HOME] = bank_home


def serve(runtime_api_address: str, mode: str, superexec_auth_secret: bytes | None = None,
          parent_pid: int | None = None, preload: Iterable[str] = ()) -> None:
    """Import ``preload``, then run Flower's SuperExec loop with a :class:`BankExecutor`."""
    executor = BankExecutor(mode)
    for module in preload:
        importlib.import_module(module)
    flower_superexec.get_executor = lambda *_, **__: executor
    print(READY_LINE, flush=True)
    flower_superexec.run_superexec(runtime_api_address=runtime_api_address, insecure=True,
                                   superexec_auth_secret=superexec_auth_secret,
                                   parent_pid=parent_pid, runtime_dependency_install=False)


def _spawn(spec: ExecutionSpec, app_packages: tuple[str, ...]) -> subprocess.Popen:
    """Start ``python -m fedrisk.client.executor task`` and hand it the token on stdin."""
    argv = [sys.executable, "-m", EXECUTOR_MODULE, "task", "--runtime-api-address",
            spec.runtime_api_address, "--token-stdin", "--app-packages", *app_packages]
    if spec.insecure:
        argv.append("--insecure")
    elif spec.root_certificates_path is not None:
        argv += ["--root-certificates", spec.root_certificates_path]
    if spec.parent_pid is not None:
        argv += ["--parent-pid", str(spec.parent_pid)]
    output = subprocess.DEVNULL if spec.suppress_output else None
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=output, stderr=output)
    process.stdin.write(f"{spec.token}\n".encode())
    process.stdin.close()
    return process


def _exit_with(task: Callable[[], int]) -> NoReturn:
    """Run ``task()`` and leave the process with its exit code, whatever happens."""
    code = 1
    try:
        code = task()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> None:
    """``serve`` (the bank's executor) or ``task`` (one task in a fresh interpreter)."""
    args = _parser().parse_args(argv)
    _log_bank_decisions()
    if args.command == "task":
        token = try_obtain_flwr_app_token(args)
        certificates = validate_and_resolve_root_certificates(args.root_certificates,
                                                              args.insecure)
        _exit_with(lambda: run_task(args.runtime_api_address, token, insecure=args.insecure,
                                    certificates=certificates, parent_pid=args.parent_pid,
                                    app_packages=tuple(args.app_packages)))
    secret = (Path(args.superexec_auth_secret_file).read_bytes()
              if args.superexec_auth_secret_file else None)
    preload = args.preload if args.preload is not None else (
        FORK_PRELOAD if args.mode == "fork" else ())
    serve(args.runtime_api_address, args.mode, secret, args.parent_pid, preload)


def _log_bank_decisions() -> None:
    """Send the bank's own log lines (gate decisions, refusals) to this process's stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    bank_log = logging.getLogger("fedrisk")
    bank_log.addHandler(handler)
    bank_log.setLevel(logging.INFO)
    bank_log.propagate = False  # Flower's root handler would print each line again


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run the bank's executor")
    serve_parser.add_argument("--mode", choices=MODES, default="fork",
                              help="fork each task from this warm process, or spawn a fresh "
                                   "interpreter per task")
    serve_parser.add_argument("--runtime-api-address", required=True,
                              help="the SuperNode's Runtime API (host:port, on loopback)")
    serve_parser.add_argument("--parent-pid", type=int, default=None,
                              help="exit when this process (the SuperNode) exits")
    serve_parser.add_argument("--superexec-auth-secret-file", default=None,
                              help="the secret shared with the SuperNode (same flag there)")
    serve_parser.add_argument("--preload", nargs="*", default=None,
                              help="modules imported once before the first task (default: "
                                   "the ClientApp's imports in fork mode, none in spawn mode)")
    task_parser = commands.add_parser("task", help="run one task (started by `serve`)")
    task_parser.add_argument("--runtime-api-address", required=True,
                             help="the SuperNode's Runtime API (host:port)")
    task_parser.add_argument("--app-packages", nargs="*", default=list(APP_PACKAGES),
                             help="the bundle's own packages, loaded from the bundle")
    add_args_flwr_app_common(task_parser, include_token_stdin=True,
                             include_runtime_dependency_install=False)
    return parser


if __name__ == "__main__":
    main()
