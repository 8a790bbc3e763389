"""Checkpoint and resume: a simulation killed with SIGKILL after round 2 of 4 and resumed
finishes with every round once, every bank within its ε target by its own ledger, and every
ledger verifying."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ENV, run_cli, write_embedded
from deployment import processes_left
from flwr.common import ndarrays_to_parameters

from fedrisk.config import RunConfig
from fedrisk.privacy.accounting import compose_epsilon
from fedrisk.server.checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_path,
    checkpointed_config,
    read_checkpoint,
    write_checkpoint,
)
from fedrisk.server.strategy import UpdateAggregation, make_strategy
from fedrisk.simulations import SimulationError, SimulationRequest, simulate

ROUNDS, TARGET = 4, 3.0
KILL_AFTER = 2
RUN_TIMEOUT = 300


def kill_after_checkpoint(command: list[str], run, log) -> tuple[int, int]:
    """Start ``command`` in its own session; SIGKILL it all once round KILL_AFTER is saved.

    Returns the exit code and the killed driver's pid.
    """
    with open(log, "w") as stream:
        process = subprocess.Popen(command, env=ENV, stdout=stream, stderr=stream,
                                   start_new_session=True)
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if checkpoint_path(run).is_file() and read_checkpoint(run).round >= KILL_AFTER:
                os.killpg(process.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return process.returncode, process.pid


def group_alive(group: int, within: float) -> bool:
    """Whether a process of ``group`` is still there after up to ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.2)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Three credit_data banks, DP and SecAgg+ on: killed after round 2, a refused resume with
    another config, then the resume; returns the run folder, the killed checkpoint's round,
    the refused resume and metrics.json."""
    folder = tmp_path_factory.mktemp("resume")
    table, contract, _ = write_embedded("credit_data", folder)
    run = folder / "run"
    command = [sys.executable, "-m", "fedrisk.cli", "simulate", "--data", str(table),
               "--contract", str(contract), "--banks", "3", "--rounds", str(ROUNDS),
               "--target-epsilon", str(TARGET), "--output-dir", str(run)]
    returncode, driver = kill_after_checkpoint(command, run, folder / "first.log")
    assert returncode == -signal.SIGKILL, (folder / "first.log").read_text()[-3000:]
    # nothing of the killed run is left: its session, nor its Ray (session_..._<driver pid>)
    assert processes_left(f"_{driver}\0") == processes_left(f"_{driver}/") == []
    assert not group_alive(driver, within=20.0)
    killed_at = read_checkpoint(run).round
    changed = run_cli("simulate", "--resume", str(run), "--rounds", "6")
    result = run_cli("simulate", "--resume", str(run), timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    return run, killed_at, changed, json.loads((run / "metrics.json").read_text())


def test_every_round_appears_once_and_the_resume_is_recorded(resumed):
    _, killed_at, _, metrics = resumed
    assert killed_at == KILL_AFTER
    assert [r["round"] for r in metrics["rounds"]] == list(range(1, ROUNDS + 1))
    assert metrics["resumed_from_round"] == KILL_AFTER
    assert [r["from_round"] for r in metrics["resumes"]] == [KILL_AFTER]
    assert all(b["rounds_joined"] == ROUNDS for b in metrics["banks"])
    assert metrics["final"]["auc"] is not None


def test_every_bank_is_within_its_target_by_its_own_ledger(resumed):
    run, _, _, metrics = resumed
    for bank in metrics["banks"]:
        (ledger,) = (run / "banks" / bank["id"] / "ledgers").glob("*.jsonl")
        entries = [json.loads(line) for line in ledger.read_text().splitlines()]
        spends = [e["body"] for e in entries if e["kind"] == "privacy_spend"]
        # one run in the ledger, killed and resumed: every round of it charged under one id
        assert {s["run_id"] for s in spends} == {metrics["run_id"]}
        assert {s["round"] for s in spends if s["phase"] == "train"} == set(range(1, 5))
        history = [(s["noise_multiplier"], s["sample_rate"], s["steps"]) for s in spends]
        epsilon = compose_epsilon(history, 1e-5, spends[-1]["accountants"])
        assert epsilon <= TARGET
        assert bank["epsilon"] == pytest.approx(epsilon)  # metrics.json: ε from its ledger


def test_every_ledger_verifies(resumed):
    run, *_ = resumed
    result = run_cli("audit", "verify", str(run))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("OK") == 3


def test_a_resume_keeps_the_config_and_a_finished_run_is_not_resumed(resumed):
    run, _, changed, _ = resumed
    assert changed.returncode == 2 and len(changed.stderr.strip().splitlines()) == 1
    assert "'num-server-rounds' is 6 here and 4 in the checkpoint" in changed.stderr
    with pytest.raises(SimulationError, match=f"^{run}: the run finished all 4 rounds; there "
                                              "is nothing to resume$"):
        simulate(SimulationRequest(resume=run))


def test_a_missing_or_damaged_checkpoint_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        simulate(SimulationRequest(resume=tmp_path))
    checkpoint_path(tmp_path).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="not a usable fedrisk checkpoint") as error:
        read_checkpoint(tmp_path)
    assert "\n" not in str(error.value)


def test_the_server_optimizer_state_survives_a_checkpoint(tmp_path):
    config = RunConfig(strategy="fedadam", output_dir=str(tmp_path))
    weights = [np.ones((3, 2), np.float32), np.zeros(2, np.float32)]
    strategy = UpdateAggregation(make_strategy(config), initial=ndarrays_to_parameters(weights))
    strategy.restore({"m_t": [w + 0.5 for w in weights], "v_t": [w + 2 for w in weights],
                      "current_weights": weights}, ndarrays_to_parameters(weights))
    strategy.configure_fit(3, ndarrays_to_parameters(weights), _NoClients())
    state = strategy.state()
    write_checkpoint(tmp_path, Checkpoint("77", 2, checkpointed_config(config), weights, state))
    restored = read_checkpoint(tmp_path)
    assert (restored.run_id, restored.round) == ("77", 2)
    assert sorted(restored.strategy) == ["current_weights", "m_t", "v_t"]
    for name, arrays in state.items():
        for saved, loaded in zip(arrays, restored.strategy[name], strict=True):
            np.testing.assert_array_equal(saved, loaded)
    # written atomically: nothing but the checkpoint is left beside it
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]


class _NoClients:
    def num_available(self) -> int:
        return 0

    def sample(self, *args, **kwargs) -> list:
        return []
