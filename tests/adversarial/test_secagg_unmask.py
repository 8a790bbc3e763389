"""A malicious coordinator tries to unmask one bank's update under SecAgg+; every bank refuses.

Each attack is played against the real fedrisk ClientApp (3 or 5 banks, real Flower
messages and ``secaggplus_mod``) and, as a control, against Flower's SecAgg+ client alone
(what fedrisk ran before the bank's checks), where the coordinator does reconstruct the
victim's update from the shares it collected.
"""

import numpy as np
import pytest
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from secagg_coordinator import (
    NODE_IDS,
    Coordinator,
    fit_content,
    initial_weights,
    make_banks,
    refusals,
    true_update,
)

from fedrisk.client.client_app import app, client_fn

VICTIM = NODE_IDS[0]
flower_only = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


def active_and_dead(coordinator: Coordinator, weights) -> None:
    """List the victim both as surviving and as dropped: every holder sends both its shares."""
    coordinator.setup()
    coordinator.share_keys()
    coordinator.collect(weights)
    everyone = coordinator.ids
    coordinator.unmask({nid: (everyone, [VICTIM]) for nid in everyone})


def padded_active_list(coordinator: Coordinator, weights) -> None:
    """Repeat the victim to reach the threshold and declare every other bank dropped."""
    coordinator.setup()
    coordinator.share_keys()
    coordinator.collect(weights)
    others = [nid for nid in coordinator.ids if nid != VICTIM]
    coordinator.unmask({nid: ([VICTIM] * coordinator.threshold, others)
                        for nid in coordinator.ids})


def selective_forwarding(coordinator: Coordinator, weights) -> None:
    """Forward to the victim the key shares of only t-1 banks, then show those banks as dropped.

    Each bank's lists are within the protocol's bounds (enough active banks, few dead, none
    in both lists); they differ between banks, but each is plausible. Only the victim can
    see that it was made to mask with fewer banks than it shared keys with.
    """
    coordinator.setup()
    coordinator.share_keys()
    others = [nid for nid in coordinator.ids if nid != VICTIM]
    partners, rest = others[:coordinator.threshold - 1], others[coordinator.threshold - 1:]
    coordinator.collect(weights, forward={VICTIM: set(partners)})
    lists = {p: ([VICTIM, p, *rest], [q for q in partners if q != p]) for p in partners}
    coordinator.unmask(lists | {r: ([VICTIM, *rest], partners) for r in rest})


ATTACKS = {"active_and_dead": (3, active_and_dead),
           "padded_active_list": (3, padded_active_list),
           "selective_forwarding": (5, selective_forwarding)}


def max_error(recovered, expected) -> float:
    return max(float(np.max(np.abs(r - e))) for r, e in zip(recovered, expected, strict=True))


@pytest.mark.parametrize("attack", ATTACKS)
def test_without_the_banks_checks_the_coordinator_unmasks_one_bank(tmp_path, attack):
    n, play = ATTACKS[attack]
    banks = make_banks(tmp_path, n=n)
    weights = initial_weights(banks[0])
    coordinator = Coordinator(flower_only, banks)
    play(coordinator, weights)
    recovered = coordinator.unmask_one(VICTIM)
    assert recovered is not None
    assert max_error(recovered, true_update(banks[0], weights)) < 1e-3


@pytest.mark.parametrize("attack", ATTACKS)
def test_the_bank_refuses_and_its_update_stays_masked(tmp_path, attack):
    n, play = ATTACKS[attack]
    banks = make_banks(tmp_path, n=n)
    weights = initial_weights(banks[0])
    coordinator = Coordinator(app, banks)
    play(coordinator, weights)
    recovered = coordinator.unmask_one(VICTIM)
    if recovered is not None:
        error = max_error(recovered, true_update(banks[0], weights))
        pytest.fail(f"the coordinator unmasked {banks[0].bank_id}'s update (max error {error:.2e})")
    victim = banks[0]
    assert {r["policy_key"] for r in refusals(victim)} == {"secagg-protocol"}
    refused = [r for r in coordinator.replies if r.has_error()]
    assert f"bank {victim.bank_id}: refused: secagg-protocol" in [r.error.reason for r in refused]
    assert all(r.error.reason.endswith("refused: secagg-protocol") for r in refused)


def test_a_refusal_ends_the_session_so_no_second_list_is_answered(tmp_path):
    banks = make_banks(tmp_path, n=3)
    weights = initial_weights(banks[0])
    coordinator = Coordinator(app, banks)
    active_and_dead(coordinator, weights)
    replies = coordinator.unmask()  # now the honest lists, to the same banks
    assert all(r.has_error() for r in replies.values())
    assert not coordinator.seed_shares and not coordinator.key_shares


def test_an_honest_round_aggregates_and_unmasks_nobody(tmp_path):
    banks = make_banks(tmp_path, n=3)
    weights = initial_weights(banks[0])
    coordinator = Coordinator(app, banks)
    coordinator.setup()
    coordinator.share_keys()
    coordinator.collect(weights)
    coordinator.unmask()
    assert not any(reply.has_error() for reply in coordinator.replies)
    updates = [true_update(node, weights) for node in banks]
    sizes = [coordinator.weights_sent[node.node_id] for node in banks]
    mean = [sum(s * u[i] for s, u in zip(sizes, updates, strict=True)) / sum(sizes)
            for i in range(len(weights))]
    assert max_error(coordinator.aggregate(), mean) < 1e-3
    assert all(coordinator.unmask_one(node.node_id) is None for node in banks)


def refused_with(replies, key: str) -> bool:
    return all(r.has_error() and r.error.reason.endswith(f"refused: {key}") for r in replies)


@pytest.mark.parametrize("stage", ["setup", "share_keys", "unmask"])
def test_a_cohort_below_the_policy_minimum_is_refused(tmp_path, stage):
    banks = make_banks(tmp_path, n=3)
    coordinator = Coordinator(app, banks)
    if stage == "setup":
        replies = coordinator.setup(**{"sample_num": 2, "share_num": 2, "threshold": 2})
    else:
        coordinator.setup()
    if stage == "share_keys":
        ids = coordinator.ids
        replies = coordinator.share_keys({ids[0]: ids[:2], ids[1]: ids[:2], ids[2]: ids[1:]})
    elif stage == "unmask":
        coordinator.share_keys()
        coordinator.collect(initial_weights(banks[0]), skip=(coordinator.ids[2],))
        replies = coordinator.unmask()
    assert refused_with(replies.values(), "min-cohort")
    for node in banks:
        if node.node_id in replies:
            assert [r["policy_key"] for r in refusals(node)] == ["min-cohort"]


def test_a_threshold_below_the_policy_minimum_is_refused(tmp_path):
    banks = make_banks(tmp_path, n=3)
    replies = Coordinator(app, banks).setup(sample_num=4, share_num=4, threshold=2)
    assert refused_with(replies.values(), "min-secagg-threshold")


NONSENSE = {"threshold_one": {"threshold": 1}, "threshold_above_shares": {"threshold": 4},
            "more_shares_than_banks": {"share_num": 4, "threshold": 3},
            "modulus_not_a_power_of_two": {"mod_range": 3 * 2**30},
            "tiny_modulus": {"mod_range": 2, "target_range": 1},
            "non_finite_clipping": {"clipping_range": float("nan")},
            "zero_max_weight": {"max_weight": 0.0}}


@pytest.mark.parametrize("change", NONSENSE)
def test_nonsensical_protocol_parameters_are_refused(tmp_path, change):
    banks = make_banks(tmp_path, n=3)
    replies = Coordinator(app, banks).setup(**NONSENSE[change])
    assert refused_with(replies.values(), "secagg-protocol")


def test_a_plain_train_request_is_refused_when_the_policy_requires_secagg(tmp_path):
    banks = make_banks(tmp_path, n=3)
    coordinator = Coordinator(app, banks)
    reply = coordinator.send(VICTIM, fit_content(initial_weights(banks[0])))
    assert reply.has_error()
    assert reply.error.reason == f"bank {banks[0].bank_id}: refused: secure-aggregation-required"
    kinds = [e.kind for e in banks[0].bank.ledger.entries()]
    assert kinds[-1] == "refusal" and "note" not in kinds  # nothing was trained
