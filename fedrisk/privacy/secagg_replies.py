"""What each SecAgg+ reply of a bank must be, checked against the bank's own protocol state.

Flower's ``secaggplus_mod`` computes every SecAgg+ reply from the request and the bank's
secrets (its ``SecAggPlusState``); nothing in an honest reply is free. The guard checks each
field against that state, so a reply carries the protocol and nothing else:

- setup: the public keys of the bank's own two SECP384R1 key pairs (215 bytes each);
- share_keys: one ciphertext per neighbour, in the order the neighbours were shown, each
  of the exact length Fernet gives Flower's plaintext, decrypting under the pairwise key the
  bank derives (its sk2, the neighbour's pk2) to (this bank, that neighbour, a share of the
  bank's 32-byte mask seed, a share of its secret key), and all shares points of one Shamir
  polynomial per secret, whose value at zero is the bank's own seed or key;
- collect_masked_vectors: int64 arrays of the model's shapes plus the weight factor, below
  the modulus, canonically serialized, that minus the masks the bank derives (its seed, its
  pairwise keys with exactly the forwarded sources) are the quantized update (values in
  [0, quantization range]) and the quantized weight of the example count it reported;
- unmask: the requested node ids in order (active, then dropped) and, for each, the share
  the bank holds for it, byte for byte, of the protocol's length.

What no check on a reply can see: how the secrets were chosen. Code that runs inside the
bank and rewrites its SecAgg+ state can pick a mask seed or key the coordinator knows, or
the random coefficients of the Shamir polynomials (at most t - 1 blocks of 16 bytes per
16-byte block of secret). Only running approved code (``approved-apps``) prevents that, and
the bank's DP is what bounds what its update reveals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from Crypto.Protocol.SecretSharing import _Element
from Crypto.Util.Padding import pad
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.common import bytes_to_ndarray, ndarray_to_bytes
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import (
    pseudo_rand_gen,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

MASK_SEED_BYTES = 32  # Flower draws the self-mask seed as os.urandom(32)
SECRET_KEY_BYTES = len(private_key_to_bytes(generate_key_pairs()[0]))  # PEM, SECP384R1
SEED_SHARE_BYTES = len(create_shares(bytes(MASK_SEED_BYTES), 2, 2)[0])
KEY_SHARE_BYTES = len(create_shares(bytes(SECRET_KEY_BYTES), 2, 2)[0])
PLAINTEXT_BYTES = 8 + 8 + 4 + SEED_SHARE_BYTES + KEY_SHARE_BYTES
CIPHERTEXT_BYTES = len(encrypt(Fernet.generate_key(), bytes(PLAINTEXT_BYTES)))
REPLY_KEYS = {
    Stage.SETUP: {Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2},
    Stage.SHARE_KEYS: {Key.DESTINATION_LIST, Key.CIPHERTEXT_LIST},
    Stage.COLLECT_MASKED_VECTORS: {Key.MASKED_PARAMETERS},
    Stage.UNMASK: {Key.NODE_ID_LIST, Key.SHARE_LIST},
}


@dataclass(frozen=True)
class SecAggExchange:
    """One SecAgg+ request and the bank's protocol state after answering it.

    Attributes:
        stage: the request's stage.
        request: the request's SecAgg+ record as received (copied before Flower's mod
            consumes it): the neighbours' public keys, forwarded sources, node lists.
        state: the bank's ``SecAggPlusState`` after the stage (its secrets and shares).

    """

    stage: str
    request: dict[str, object]
    state: SecAggPlusState


def inspect_secagg_record(record: dict[str, object], exchange: SecAggExchange,
                          parameter_shapes: tuple[tuple[int, ...], ...],
                          num_examples: object = None) -> list[str]:
    """Every way the reply's SecAgg+ record differs from what the protocol produces.

    ``parameter_shapes`` are the agreed model's; ``num_examples`` is the example count
    the collect reply reports in plaintext (the masked weight factor must match it).
    """
    expected = REPLY_KEYS.get(exchange.stage)
    if expected is None:
        return [f"unknown SecAgg+ stage '{exchange.stage[:40]}'"]
    if set(record) != expected:
        return [f"SecAgg+ {exchange.stage} reply carries {sorted(record)[:8]}, "
                f"expected {sorted(expected)}"]
    if exchange.stage == Stage.SETUP:
        return _setup(record, exchange.state)
    if exchange.stage == Stage.SHARE_KEYS:
        return _share_keys(record, exchange)
    if exchange.stage == Stage.COLLECT_MASKED_VECTORS:
        return _masked_vector(record, exchange, parameter_shapes, num_examples)
    return _unmask(record, exchange)


def _setup(record: dict, state: SecAggPlusState) -> list[str]:
    problems = []
    for key, secret in ((Key.PUBLIC_KEY_1, state.sk1), (Key.PUBLIC_KEY_2, state.sk2)):
        public = _public_key_of(secret)
        if public is None or record[key] != public:
            problems.append(f"setup: '{key}' is not the public key of the bank's own key pair")
    return problems


def _share_keys(record: dict, exchange: SecAggExchange) -> list[str]:
    state = exchange.state
    neighbours = [int(key) for key in exchange.request if key != Key.STAGE]
    destinations = [nid for nid in neighbours if nid != state.nid]
    ciphertexts = record[Key.CIPHERTEXT_LIST]
    if record[Key.DESTINATION_LIST] != destinations:
        return ["share_keys: destinations are not exactly this bank's neighbours, in order"]
    if not isinstance(ciphertexts, list) or len(ciphertexts) != len(destinations):
        return ["share_keys: not exactly one ciphertext per neighbour"]
    if _secret_key(state.sk2) is None or not _is_own_secrets(state):
        return ["share_keys: the bank's SecAgg+ secrets are not a seed and SECP384R1 keys"]
    seed_shares = [state.rd_seed_share_dict.get(state.nid)]
    key_shares = [state.sk1_share_dict.get(state.nid)]
    for destination, ciphertext in zip(destinations, ciphertexts, strict=True):
        shares = _open_ciphertext(ciphertext, destination, exchange)
        if shares is None:
            return [f"share_keys: the ciphertext for node {destination} is not this bank's "
                    f"key shares encrypted for it ({CIPHERTEXT_BYTES} bytes)"]
        seed_shares.append(shares[0])
        key_shares.append(shares[1])
    if not (_one_polynomial(seed_shares, state.threshold, state.rd_seed)
            and _one_polynomial(key_shares, state.threshold, state.sk1)):
        return ["share_keys: the shares are not Shamir shares of the bank's own seed and key"]
    return []


def _open_ciphertext(ciphertext: object, destination: int,
                     exchange: SecAggExchange) -> tuple[bytes, bytes] | None:
    """The (seed share, key share) a ciphertext holds, None unless it is exactly Flower's."""
    keys = exchange.request.get(str(destination))
    if not isinstance(ciphertext, bytes) or len(ciphertext) != CIPHERTEXT_BYTES:
        return None
    try:
        pairwise = generate_shared_key(bytes_to_private_key(exchange.state.sk2),
                                       bytes_to_public_key(keys[1]))
        plaintext = decrypt(pairwise, ciphertext)
    except (InvalidToken, ValueError, TypeError, IndexError):
        return None
    source, target, seed_share, key_share = share_keys_plaintext_separate(plaintext)
    exact = (len(plaintext) == PLAINTEXT_BYTES and source == exchange.state.nid
             and target == destination and len(seed_share) == SEED_SHARE_BYTES)
    return (seed_share, key_share) if exact else None


def _masked_vector(record: dict, exchange: SecAggExchange,
                   parameter_shapes: tuple[tuple[int, ...], ...],
                   num_examples: object) -> list[str]:
    state = exchange.state
    blobs, shapes = record[Key.MASKED_PARAMETERS], [(1,), *parameter_shapes]
    if not isinstance(blobs, list) or len(blobs) != len(shapes):
        return [f"masked vector must hold {len(shapes)} arrays (weight factor + model)"]
    vector = []
    for index, (blob, shape) in enumerate(zip(blobs, shapes, strict=True)):
        array = _int64_array(blob, shape, state.mod_range)
        if array is None:
            return [f"masked array {index} is not canonical int64 of shape {shape} "
                    "below the modulus"]
        vector.append(array)
    if type(num_examples) is not int or not _is_own_secrets(state):
        return ["masked vector: no example count or no SecAgg+ secrets to check it against"]
    plain = _remove_masks(vector, state, exchange.request.get(Key.SOURCE_LIST))
    weight = round(num_examples / state.max_weight * state.target_range)
    if plain is None or int(plain[0][0]) != weight:
        return ["masked vector: its weight factor is not the reported example count "
                "under the bank's own masks"]
    if any(int(array.max(initial=0)) > state.target_range for array in plain[1:]):
        return ["masked vector: minus the bank's own masks it is not a quantized update"]
    return []


def _remove_masks(vector: list[np.ndarray], state: SecAggPlusState,
                  sources: object) -> list[np.ndarray] | None:
    """The vector minus the self mask and the pairwise masks with ``sources``, mod the modulus."""
    if not isinstance(sources, list) or not set(sources) <= set(state.public_keys_dict):
        return None
    shapes = [array.shape for array in vector]
    vector = parameters_subtraction(vector, pseudo_rand_gen(state.rd_seed, state.mod_range,
                                                            shapes))
    own_key = bytes_to_private_key(state.sk1)
    for source in sources:
        shared = generate_shared_key(own_key, bytes_to_public_key(
            state.public_keys_dict[source][0]))
        mask = pseudo_rand_gen(shared, state.mod_range, shapes)
        vector = (parameters_subtraction if state.nid > source else parameters_addition)(
            vector, mask)
    return parameters_mod(vector, state.mod_range)


def _unmask(record: dict, exchange: SecAggExchange) -> list[str]:
    state, request = exchange.state, exchange.request
    active = request.get(Key.ACTIVE_NODE_ID_LIST)
    dead = request.get(Key.DEAD_NODE_ID_LIST)
    if not isinstance(active, list) or not isinstance(dead, list):
        return ["unmask: the request lists no nodes"]
    if record[Key.NODE_ID_LIST] != [*active, *dead]:
        return ["unmask: node ids are not exactly the requested lists"]
    held = ([(state.rd_seed_share_dict.get(nid), SEED_SHARE_BYTES) for nid in active]
            + [(state.sk1_share_dict.get(nid), KEY_SHARE_BYTES) for nid in dead])
    shares = record[Key.SHARE_LIST]
    if not isinstance(shares, list) or shares != [share for share, _ in held]:
        return ["unmask: shares are not the ones the bank holds for these nodes"]
    if any(len(share) != length for share, length in held):
        return ["unmask: a share is not of the protocol's length"]
    return []


def _is_own_secrets(state: SecAggPlusState) -> bool:
    """The state holds a 32-byte mask seed and a SECP384R1 secret key of the protocol's size."""
    return len(state.rd_seed) == MASK_SEED_BYTES and _secret_key(state.sk1) is not None


def _secret_key(pem: bytes) -> ec.EllipticCurvePrivateKey | None:
    if not isinstance(pem, bytes) or len(pem) != SECRET_KEY_BYTES:
        return None
    try:
        key = bytes_to_private_key(pem)
    except (ValueError, TypeError):
        return None
    secp384 = isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    return key if secp384 else None


def _public_key_of(pem: bytes) -> bytes | None:
    key = _secret_key(pem)
    return None if key is None else public_key_to_bytes(key.public_key())


def _one_polynomial(shares: list, threshold: int, secret: bytes) -> bool:
    """All ``shares`` are points of one polynomial of degree ``threshold - 1`` through ``secret``.

    Flower's shares (``create_shares``) are a 4-byte index and one 16-byte point per block
    of the padded secret, each block shared with pycryptodome's Shamir over GF(2^128).
    The point ``(0, secret)`` and the first ``threshold - 1`` shares fix the polynomial of
    every block; each further share must be its value at the share's index. That is what
    reconstructing the secret from the first ``threshold - 1`` shares plus each further one
    checks, but Lagrange weights depend only on the indices, so they are computed once for
    all blocks (Flower's ``combine_shares`` per share costs ``threshold`` inversions and
    ``threshold²`` products per block: about 8x more, and most of a 100-bank round).
    """
    points = _share_points(shares, len(pad(secret, 16)) // 16) if threshold >= 2 else None
    if points is None or len(points) < threshold:
        return False
    known, checked = [(_Element(0), _blocks(pad(secret, 16))), *points[:threshold - 1]], \
        points[threshold - 1:]
    all_weights = _lagrange_weights([x for x, _ in known], [x for x, _ in checked])
    for (_, blocks), weights in zip(checked, all_weights, strict=True):
        for block, value in enumerate(blocks):
            expected = _Element(0)
            for weight, (_, known_blocks) in zip(weights, known, strict=True):
                expected += weight * known_blocks[block]
            if expected != value:
                return False
    return True


def _blocks(data: bytes) -> list[_Element]:
    return [_Element(data[i:i + 16]) for i in range(0, len(data), 16)]


def _share_points(shares: list, n_blocks: int) -> list[tuple[_Element, list[_Element]]] | None:
    """(index, blocks) of each share; None unless all are Flower's format with distinct indices."""
    size = 4 + 16 * n_blocks
    if not all(isinstance(share, bytes) and len(share) == size for share in shares):
        return None
    indices = [int.from_bytes(share[:4], "little") for share in shares]
    if 0 in indices or len(set(indices)) != len(indices):
        return None
    return [(_Element(index), _blocks(share[4:])) for index, share in zip(indices, shares,
                                                                         strict=True)]


def _lagrange_weights(xs: list[_Element], at: list[_Element]) -> list[list[_Element]]:
    """``ℓᵢ(a)`` of the Lagrange basis on ``xs`` for each ``a`` of ``at`` (minus is plus here)."""
    scales = []
    for i, x_i in enumerate(xs):
        denominator = _Element(1)
        for m, x_m in enumerate(xs):
            if m != i:
                denominator *= x_i + x_m
        scales.append(denominator.inverse())
    weights = []
    for a in at:
        row = []
        for i, scale in enumerate(scales):
            for m, x_m in enumerate(xs):
                if m != i:
                    scale = scale * (a + x_m)
            row.append(scale)
        weights.append(row)
    return weights


def _int64_array(blob: object, shape: tuple[int, ...], modulus: int) -> np.ndarray | None:
    """The array a masked blob holds, None unless canonical int64 of ``shape`` in [0, modulus)."""
    if not isinstance(blob, bytes):
        return None
    try:
        array = bytes_to_ndarray(blob)
    except Exception:  # noqa: BLE001 - any undecodable blob is a violation
        return None
    if array.dtype != np.dtype("<i8") or array.shape != shape or ndarray_to_bytes(array) != blob:
        return None
    if array.size and (int(array.min()) < 0 or int(array.max()) >= modulus):
        return None
    return array
