"""A coordinator that runs Flower's SecAgg+ protocol against real fedrisk banks, and may lie.

It sends exactly what Flower's ``SecAggPlusWorkflow`` sends (the same records and keys,
stage by stage) as real Flower ``Message``s to a real ``ClientApp``, with one ``Context``
per bank, so every bank runs its own mods and Flower's ``secaggplus_mod``. A test turns it
malicious by changing what one stage sends (parameters, lists, forwarded key shares) or by
running a bank whose inner code misbehaves, and then tries to unmask one bank's individual
update from what the banks answered, with Flower's own ``combine_shares`` and
``pseudo_rand_gen``, exactly as the honest server unmasks the sum.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import FitIns, NDArrays, bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    factor_extract,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key
from flwr.supercore.task_identity import TaskIdentity

from fedrisk.client.bank import Bank, bank_for_context
from fedrisk.client.bank_client import BankClient
from fedrisk.config import RunConfig
from fedrisk.data import embedded_banks, load_embedded
from fedrisk.privacy.policy import BankPolicy

BANKS = ("northeast", "midwest", "south_atlantic", "south_central", "west")
# Flower's node ids are random unsigned 64-bit integers: keep some above 2^63, unordered.
NODE_IDS = (18_000_000_000_000_000_001, 3_000_000_000_000_000_003, 12_000_000_000_000_000_007,
            9_300_000_000_000_000_011, 15_500_000_000_000_000_013)
QUANTIZATION = {Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 4194304, Key.MOD_RANGE: 2**32,
                Key.MAX_WEIGHT: 10000.0}


@dataclass
class BankNode:
    """One bank as the coordinator addresses it: a node id and the node's Flower context."""

    node_id: int
    bank_id: str
    context: Context

    @property
    def bank(self) -> Bank:
        return bank_for_context(self.context)


def make_banks(tmp_path: Path, n: int = 3, dp: bool = False, secure_aggregation: bool = True,
               **policy_changes) -> list[BankNode]:
    """``n`` lending_club banks, each with its own table, policy file and state directory.

    The policy is a simulated bank's, made stricter: SecAgg+ required, a cohort of at
    least 3 (``policy_changes`` override any key).
    """
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    tables = embedded_banks("lending_club")
    contract = load_embedded("lending_club")[1]
    contract.save(tmp_path / "contract.toml")
    changes = {"min_cohort": 3, "secure_aggregation_required": True} | policy_changes
    policy = replace(BankPolicy.simulation_default(), **changes)
    run_config = RunConfig(dp=dp, secure_aggregation=secure_aggregation,
                           output_dir=str(tmp_path)).to_run_config()
    nodes = []
    for node_id, bank_id in zip(NODE_IDS[:n], BANKS[:n], strict=True):
        folder = tmp_path / bank_id
        folder.mkdir()
        tables[bank_id].to_csv(folder / "data.csv", index=False)
        policy.save(folder / "bank-policy.toml")
        node_config = {"bank-id": bank_id, "data-path": str(folder / "data.csv"),
                       "contract-path": str(tmp_path / "contract.toml"),
                       "state-dir": str(folder / "state"),
                       "policy-path": str(folder / "bank-policy.toml")}
        context = Context(run_id=1, node_id=node_id, node_config=node_config,
                          state=RecordDict(), run_config=run_config)
        nodes.append(BankNode(node_id, bank_id, context))
    return nodes


def initial_weights(node: BankNode) -> NDArrays:
    """The run's seeded initial model, as the coordinator would send it."""
    config = RunConfig.from_run_config(dict(node.context.run_config))
    return BankClient(node.bank, config, node.context.run_id).get_parameters({})


def true_update(node: BankNode, weights: NDArrays) -> NDArrays:
    """The update the bank computes from ``weights`` (non-private training is deterministic)."""
    config = RunConfig.from_run_config(dict(node.context.run_config))
    return BankClient(node.bank, config, node.context.run_id).fit(weights,
                                                                   {"server-round": 1})[0]


def fit_content(weights: NDArrays) -> RecordDict:
    """The FitIns records of a train message (what the workflow sends at collect)."""
    return compat.fitins_to_recorddict(
        FitIns(ndarrays_to_parameters(weights), {"server-round": 1}), True)


def train_message(node_id: int, content: RecordDict) -> Message:
    """A train message of round 1 from the coordinator to ``node_id``."""
    return Message(content=content, dst_node_id=node_id, message_type="train", group_id="1")


@dataclass
class Coordinator:
    """Drives SecAgg+ stage by stage and keeps everything the banks answered."""

    app: ClientApp
    nodes: list[BankNode]
    apps: dict[int, ClientApp] = field(default_factory=dict)
    replies: list[Message] = field(default_factory=list)
    public_keys: dict[int, list[bytes]] = field(default_factory=dict)
    ciphertexts: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    shared: list[int] = field(default_factory=list)
    forwarded: dict[int, list[int]] = field(default_factory=dict)
    masked: dict[int, NDArrays] = field(default_factory=dict)
    seed_shares: dict[int, list[bytes]] = field(default_factory=dict)
    key_shares: dict[int, list[bytes]] = field(default_factory=dict)
    weights_sent: dict[int, int] = field(default_factory=dict)
    setup_config: dict = field(default_factory=dict)

    def send(self, node_id: int, content: RecordDict) -> Message:
        """Deliver one train message to a bank and keep its reply."""
        node = next(n for n in self.nodes if n.node_id == node_id)
        app = self.apps.get(node_id, self.app)
        reply = app(train_message(node_id, content), node.context)
        self.replies.append(reply)
        return reply

    def stage(self, node_id: int, values: dict, content: RecordDict | None = None) -> Message:
        """Send one SecAgg+ stage record (inside ``content`` when given)."""
        content = content if content is not None else RecordDict()
        content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(values)
        return self.send(node_id, content)

    @property
    def ids(self) -> list[int]:
        return [node.node_id for node in self.nodes]

    @property
    def threshold(self) -> int:
        return self.setup_config[Key.THRESHOLD]

    def setup(self, **changes) -> dict[int, Message]:
        """Stage 0: the protocol parameters (Flower's defaults for this cohort, or ``changes``)."""
        n = len(self.nodes)
        self.setup_config = {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: n, Key.SHARE_NUMBER: n,
                             Key.THRESHOLD: max(2, round(0.6 * n)), **QUANTIZATION, **changes}
        replies = {nid: self.stage(nid, dict(self.setup_config)) for nid in self.ids}
        for nid, reply in replies.items():
            if not reply.has_error():
                record = reply.content.config_records[RECORD_KEY_CONFIGS]
                self.public_keys[nid] = [record[Key.PUBLIC_KEY_1], record[Key.PUBLIC_KEY_2]]
        return replies

    def share_keys(self, neighbours: dict[int, list[int]] | None = None) -> dict[int, Message]:
        """Stage 1: every bank gets its neighbours' public keys (all banks, unless told)."""
        replies = {}
        for nid in list(self.public_keys):
            shown = neighbours[nid] if neighbours else list(self.public_keys)
            values = {str(j): list(self.public_keys[j]) for j in shown}
            replies[nid] = self.stage(nid, {**values, Key.STAGE: Stage.SHARE_KEYS})
            if not replies[nid].has_error():
                self.shared.append(nid)
                record = replies[nid].content.config_records[RECORD_KEY_CONFIGS]
                for dst, ciphertext in zip(record[Key.DESTINATION_LIST],
                                           record[Key.CIPHERTEXT_LIST], strict=True):
                    self.ciphertexts.setdefault(dst, []).append((nid, ciphertext))
        return replies

    def collect(self, weights: NDArrays, forward: dict[int, set[int]] | None = None,
                skip: tuple[int, ...] = ()) -> dict[int, Message]:
        """Stage 2: forward key shares (all, unless ``forward`` picks sources) plus the FitIns.

        Banks in ``skip`` get nothing, as if they had dropped out.
        """
        replies = {}
        for nid in (n for n in self.shared if n not in skip):
            pairs = [(src, c) for src, c in self.ciphertexts.get(nid, [])
                     if forward is None or nid not in forward or src in forward[nid]]
            values = {Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                      Key.CIPHERTEXT_LIST: [c for _, c in pairs],
                      Key.SOURCE_LIST: [src for src, _ in pairs]}
            replies[nid] = self.stage(nid, values, fit_content(weights))
            self.forwarded[nid] = [src for src, _ in pairs]
            if not replies[nid].has_error():
                record = replies[nid].content.config_records[RECORD_KEY_CONFIGS]
                self.masked[nid] = [bytes_to_ndarray(b) for b in record[Key.MASKED_PARAMETERS]]
                fitres = compat.recorddict_to_fitres(replies[nid].content, keep_input=True)
                self.weights_sent[nid] = fitres.num_examples
        return replies

    def honest_lists(self) -> dict[int, tuple[list[int], list[int]]]:
        """What the honest server sends at unmask: who sent a masked vector, who dropped."""
        active = sorted(self.masked)
        dead = sorted(set(self.shared) - set(active))
        return {nid: (active, dead) for nid in active}

    def unmask(self, lists: dict[int, tuple[list[int], list[int]]] | None = None
               ) -> dict[int, Message]:
        """Stage 3: ask each bank for the shares of ``(active, dead)``; keep what comes back."""
        replies = {}
        for nid, (active, dead) in (lists or self.honest_lists()).items():
            values = {Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: list(active),
                      Key.DEAD_NODE_ID_LIST: list(dead)}
            replies[nid] = self.stage(nid, values)
            if replies[nid].has_error():
                continue
            record = replies[nid].content.config_records[RECORD_KEY_CONFIGS]
            pairs = list(zip(record[Key.NODE_ID_LIST], record[Key.SHARE_LIST], strict=True))
            for index, (owner, share) in enumerate(pairs):
                kept = self.seed_shares if index < len(active) else self.key_shares
                if share not in kept.setdefault(owner, []):
                    kept[owner].append(share)
        return replies

    def aggregate(self) -> NDArrays:
        """The honest server's result: the weighted mean update of the banks that stayed."""
        active = sorted(self.masked)
        total = parameters_mod(self._sum(active), QUANTIZATION[Key.MOD_RANGE])
        for nid in active:
            total = parameters_subtraction(total, self._masks(self._secret(self.seed_shares,
                                                                           nid)))
        for nid in set(self.shared) - set(active):
            total = self._remove_pairwise(total, nid, active)
        return _dequantize(parameters_mod(total, QUANTIZATION[Key.MOD_RANGE]), len(active))

    def unmask_one(self, victim: int) -> NDArrays | None:
        """Try to recover ``victim``'s own update from the shares collected; None if impossible.

        Needs the victim's self-mask seed, and either its own pairwise key (sk1) or the
        pairwise key of every bank whose key shares were forwarded to it.
        """
        seed = self._secret(self.seed_shares, victim)
        if seed is None or victim not in self.masked:
            return None
        vector = parameters_subtraction(self.masked[victim], self._masks(seed))
        own_key = self._secret(self.key_shares, victim)
        for partner in self.forwarded[victim]:
            key = own_key if own_key is not None else self._secret(self.key_shares, partner)
            if key is None:
                return None
            pk_other = self.public_keys[partner if own_key is not None else victim][0]
            mask = self._masks(generate_shared_key(bytes_to_private_key(key),
                                                   bytes_to_public_key(pk_other)))
            vector = (parameters_subtraction if victim > partner else parameters_addition)(
                vector, mask)
        return _dequantize(parameters_mod(vector, QUANTIZATION[Key.MOD_RANGE]), 1)

    def _sum(self, nids: list[int]) -> NDArrays:
        total = self.masked[nids[0]]
        for nid in nids[1:]:
            total = parameters_addition(total, self.masked[nid])
        return total

    def _secret(self, shares: dict[int, list[bytes]], nid: int) -> bytes | None:
        collected = shares.get(nid, [])
        return combine_shares(collected) if len(collected) >= self.threshold else None

    def _masks(self, seed: bytes) -> NDArrays:
        shapes = [array.shape for array in next(iter(self.masked.values()))]
        return pseudo_rand_gen(seed, QUANTIZATION[Key.MOD_RANGE], shapes)

    def _remove_pairwise(self, total: NDArrays, dead: int, active: list[int]) -> NDArrays:
        key = bytes_to_private_key(self._secret(self.key_shares, dead))
        for nid in active:
            mask = self._masks(generate_shared_key(key, bytes_to_public_key(
                self.public_keys[nid][0])))
            total = (parameters_addition if dead > nid else parameters_subtraction)(total, mask)
        return total


def _dequantize(vector: NDArrays, n_summed: int) -> NDArrays:
    """Flower's server-side decoding of a (summed) quantized vector into a mean update."""
    clip, target = QUANTIZATION[Key.CLIPPING_RANGE], QUANTIZATION[Key.TARGET_RANGE]
    weight, parameters = factor_extract(vector)
    values = dequantize(parameters, clip, target)
    return [(v - (n_summed - 1) * clip) * (target / weight) for v in values]


def reply_bytes(reply: Message) -> bytes:
    """Every byte a reply carries: error text, metadata strings, record values and arrays."""
    parts = [reply.metadata.group_id.encode(), reply.metadata.message_type.encode()]
    if reply.has_error():
        return b"".join([*parts, reply.error.reason.encode()])
    for record in reply.content.config_records.values():
        for value in record.values():
            for item in value if isinstance(value, list) else [value]:
                parts.append(item if isinstance(item, bytes) else str(item).encode())
    for record in reply.content.array_records.values():
        parts += [array.data for array in record.values()]
    return b"".join(parts)


def leaks(rows: np.ndarray, replies: list[Message]) -> bool:
    """Whether any reply carries the bytes of any of the first rows (or their text)."""
    blob = b"".join(reply_bytes(reply) for reply in replies)
    row_bytes = [rows[i].tobytes() for i in range(min(len(rows), 50))]
    row_text = ",".join(map(str, rows[0])).encode()
    widened = np.frombuffer(rows[0].tobytes(), np.uint32).astype(np.int64).tobytes()
    return any(chunk in blob for chunk in [*row_bytes, row_text, widened])


def ledger_kinds(node: BankNode) -> list[str]:
    """The kinds of the bank's ledger entries, in order."""
    return [entry.kind for entry in node.bank.ledger.entries()]


def refusals(node: BankNode) -> list[dict]:
    """The bodies of the bank's ``refusal`` entries."""
    return [e.body for e in node.bank.ledger.entries() if e.kind == "refusal"]
