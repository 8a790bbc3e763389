"""A warm ClientApp executor for a SuperNode started with ``--isolation process``.

With the default ``--isolation subprocess`` a SuperNode's SuperExec starts a fresh
``flwr-clientapp`` process for every message, and each one imports torch, Opacus,
pandas and fedrisk again (4-8 s on 2 cores, for each of the five messages a bank
handles per SecAgg+ round). ``--isolation process`` is Flower's supported way to
run the SuperExec as a separate process; this module is that process. It is
Flower's own SuperExec loop (``run_superexec``) and Flower's own ClientApp task
(``run_clientapp``, the body of ``flwr-clientapp``), with one difference: the
task process is ``fork()``-ed from this already-warm process instead of exec-ing
a cold interpreter. Each message still runs in its own short-lived process, so
state is isolated exactly as with ``flwr-clientapp``.

What stays warm is the third-party stack (torch, Opacus, pandas, pandera, flwr).
The app's own package (``fedrisk``) is dropped from ``sys.modules`` in each child
before the task runs, so the ClientApp code is the one in the run's FAB, exactly
as with ``flwr-clientapp`` (re-importing fedrisk on a warm stack takes ~0.05 s).

    python -m fedrisk.consortium.warm --runtime-api-address 127.0.0.1:9301 \
        --parent-pid SUPERNODE_PID [--superexec-auth-secret-file FILE]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

DEFAULT_APP_PACKAGES = ("fedrisk",)
READY_LINE = "fedrisk warm ClientApp executor ready"
DEFAULT_PRELOAD = ("fedrisk.client.client_app", "fedrisk.data.embedded",
                   "fedrisk.privacy.egress", "flwr.supernode.runtime.run_clientapp")


class ForkExecutor:
    """A SuperExec executor that forks each ClientApp task from this warm process."""

    def __init__(self, app_packages: tuple[str, ...]) -> None:
        """``app_packages``: the app's own top-level packages, re-imported by every task."""
        self.app_packages = app_packages
        self.children: set[int] = set()

    def get_eligible_capacity(self, supported_task_types: set, *, insecure: bool = False,
                              root_certificates_path: str | None = None) -> tuple[set, set]:
        """Every supported task type can start at once (as with the subprocess executor)."""
        return supported_task_types, set()

    def wait_for_capacity(self, task_type: object = None, *, fab_hash: str | None = None,
                          insecure: bool = False,
                          root_certificates_path: str | None = None) -> None:
        """No capacity gate."""

    def launch(self, spec: object) -> object:
        """Fork a child that runs Flower's ClientApp task with the spec's token."""
        from flwr.supercore.superexec.executor import LaunchResult

        pid = os.fork()
        if pid == 0:
            _run_task_and_exit(spec, self.app_packages)
        self.children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap finished children (no zombies)."""
        for pid in list(self.children):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                self.children.discard(pid)

    def close(self) -> None:
        """Nothing to release: running tasks end on their own."""


def _run_task_and_exit(spec: object, app_packages: tuple[str, ...]) -> None:
    """In the child: run one ClientApp task exactly as ``flwr-clientapp`` does, then exit."""
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    for name in [m for m in sys.modules if m.split(".")[0] in app_packages]:
        del sys.modules[name]  # the app's code comes from the run's FAB, not from this process
    code = 1
    try:
        run_clientapp(
            runtime_api_address=spec.runtime_api_address, token=spec.token,
            insecure=spec.insecure,
            certificates=validate_and_resolve_root_certificates(spec.root_certificates_path,
                                                                spec.insecure),
            parent_pid=spec.parent_pid, runtime_dependency_install=False)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> None:
    """Preload the ClientApp's imports, then run Flower's SuperExec loop with forking tasks."""
    args = _parser().parse_args(argv)
    for module in args.preload:
        importlib.import_module(module)
    print(READY_LINE, flush=True)
    from flwr.supercore.superexec import run_superexec as superexec_module

    executor = ForkExecutor(tuple(args.app_packages))
    superexec_module.get_executor = lambda *_, **__: executor
    secret = Path(args.superexec_auth_secret_file).read_bytes() \
        if args.superexec_auth_secret_file else None
    superexec_module.run_superexec(runtime_api_address=args.runtime_api_address, insecure=True,
                                   superexec_auth_secret=secret, parent_pid=args.parent_pid,
                                   runtime_dependency_install=False)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True,
                        help="the SuperNode's Runtime API (host:port, on loopback)")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit when this process (the SuperNode) exits")
    parser.add_argument("--superexec-auth-secret-file", default=None,
                        help="the secret shared with the SuperNode (same flag there)")
    parser.add_argument("--preload", nargs="*", default=list(DEFAULT_PRELOAD),
                        help="modules imported once before the first task")
    parser.add_argument("--app-packages", nargs="*", default=list(DEFAULT_APP_PACKAGES),
                        help="the app's own packages, re-imported from the FAB by each task")
    return parser


if __name__ == "__main__":
    main()
