"""One bank (lending_club's northeast) on disk, and the messages a coordinator sends it.

For tests that talk to the real ClientApp in-process: its files and policy, its Flower
context for a run, the run's first message (the proposal) and a training message.
"""

from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.common import FitIns, GetParametersIns, ndarrays_to_parameters
from flwr.common.constant import MessageTypeLegacy
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.task_identity import TaskIdentity

from fedrisk.client.bank import bank_for_context
from fedrisk.client.bank_client import BankClient
from fedrisk.config import RunConfig
from fedrisk.data import embedded_banks, load_embedded
from fedrisk.privacy.policy import BankPolicy


def write_bank_files(folder: Path, policy: BankPolicy) -> Path:
    """The bank's table, contract and ``policy`` in ``folder`` (returned)."""
    embedded_banks("lending_club")["northeast"].to_csv(folder / "bank.csv", index=False)
    load_embedded("lending_club")[1].save(folder / "contract.toml")
    policy.save(folder / "bank-policy.toml")
    return folder


def bank_context(folder: Path, config: RunConfig, flower_run_id: int = 1) -> Context:
    """The bank's context in a Flower run of ``config`` (each run, or resume, gets a fresh one).

    The run's test fraction is the bank's own, unless ``config`` proposes another than
    the default (a coordinator trying to move the bank's split).
    """
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = flower_run_id, 1, 0
    node_config = {"bank-id": "northeast", "data-path": str(folder / "bank.csv"),
                   "contract-path": str(folder / "contract.toml"),
                   "state-dir": str(folder / "state"),
                   "policy-path": str(folder / "bank-policy.toml")}
    overrides = {"output_dir": str(folder)}
    if config.test_fraction == RunConfig().test_fraction:
        overrides["test_fraction"] = BankPolicy.load(folder / "bank-policy.toml").test_fraction
    config = RunConfig(**{**config.__dict__, **overrides})
    return Context(run_id=flower_run_id, node_id=1, node_config=node_config,
                   state=RecordDict(), run_config=config.to_run_config())


def proposal_message() -> Message:
    """A run's first message: the coordinator asks for the initial model."""
    content = compat.getparametersins_to_recorddict(GetParametersIns({}))
    return Message(content=content, dst_node_id=1, message_type=MessageTypeLegacy.GET_PARAMETERS,
                   group_id="0")


def train_message(context: Context, server_round: int) -> Message:
    """A fit message of ``server_round`` carrying the bank's seeded initial model."""
    config = RunConfig.from_run_config(dict(context.run_config))
    weights = BankClient(bank_for_context(context), config, "-").get_parameters({})
    content = compat.fitins_to_recorddict(
        FitIns(ndarrays_to_parameters(weights), {"server-round": server_round}), True)
    return Message(content=content, dst_node_id=1, message_type="train",
                   group_id=str(server_round))
