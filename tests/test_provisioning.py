"""Two-sided provisioning without running anything: the coordinator's side (CA, TLS, proxy
configuration), a bank's side on its own "host" (its keys, its table in place, its policy)
and the registration of its public bundle. The live deployment is in test_consortium.py."""

import json
import re
import stat
import tomllib
from pathlib import Path

import pytest
from conftest import run_cli
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from fedrisk.consortium import (
    ConsortiumError,
    Layout,
    bank_init,
    init_coordinator,
    register_bundle,
)
from fedrisk.consortium.bundle import app_bundle_hash
from fedrisk.consortium.commands import node_config_text
from fedrisk.consortium.layout import read_bank, read_settings
from fedrisk.consortium.proxy import FLEET_CALLS, find_nginx, validate_proxy_config
from fedrisk.data import embedded_banks, load_embedded
from fedrisk.privacy.keys import load_or_create_signing_key, public_key_pem
from fedrisk.privacy.policy import BankPolicy


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> dict[str, Path]:
    """Two banks' own tables and the agreed contract, as files on the banks' hosts."""
    folder = tmp_path_factory.mktemp("bank-hosts")
    partitions = embedded_banks("lending_club")
    paths = {}
    for bank in ("northeast", "west"):
        paths[bank] = folder / f"{bank}.csv"
        partitions[bank].to_csv(paths[bank], index=False)
    paths["contract"] = folder / "contract.toml"
    load_embedded("lending_club")[1].save(paths["contract"])
    return paths


@pytest.fixture
def coordinator(tmp_path) -> Layout:
    return init_coordinator(tmp_path / "coordinator-host" / "consortium", base_port=9400)


def join(tmp_path: Path, coordinator: Layout, tables: dict[str, Path], bank: str,
         **options) -> Path:
    """The bank's side on its own host, with what the coordinator gave it; the bundle path."""
    paths = bank_init(tmp_path / f"{bank}-host" / bank, bank, tables[bank], tables["contract"],
                      read_settings(coordinator).fleet_address, coordinator.ca_cert, **options)
    return paths.public_bundle


def test_a_bank_makes_its_own_keys_and_the_coordinator_pins_only_their_public_halves(
        tmp_path, coordinator, tables):
    bundle = join(tmp_path, coordinator, tables, "northeast")
    registration = register_bundle(coordinator.root, bundle)
    assert registration.bank == "northeast" and registration.node_id is None  # SuperLink down
    bank = read_bank(bundle.parent)
    # the table stays where the bank keeps it: referenced, not copied
    assert bank.node.data_path == str(tables["northeast"]) and bank.data == tables["northeast"]
    assert not list(bank.root.rglob("*.csv"))
    # keys: made by the bank, 0600 in 0700 folders
    for folder in (bank.root, bank.root / "keys", bank.root / "state"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("node.key", "signing_key.pem", "superexec.secret"):
        assert stat.S_IMODE((bank.root / "keys" / name).stat().st_mode) == 0o600
    # the bundle is public material only
    document = json.loads(bundle.read_text())
    assert set(document) == {"format", "bank_id", "node_public_key", "ledger_public_key"}
    assert "PRIVATE" not in bundle.read_text()
    # the coordinator holds exactly the public halves, and nothing private of the bank
    assert coordinator.node_public_key("northeast").read_text() == \
        (bank.root / "keys" / "node.pub").read_text()
    own = load_or_create_signing_key(bank.signing_key)
    assert coordinator.ledger_public_key("northeast").read_text() == public_key_pem(own)
    assert read_settings(coordinator).banks == ("northeast",)
    private = [(bank.root / "keys" / n).read_bytes() for n in ("node.key", "signing_key.pem",
                                                              "superexec.secret")]
    raw = own.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    for path in coordinator.root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(secret in data for secret in [*private, raw]), path
            assert tables["northeast"].read_bytes()[:2000] not in data, path


def test_a_banks_policy_is_its_own_deployment_default_approving_this_app(tmp_path, coordinator,
                                                                          tables):
    bank = read_bank(join(tmp_path, coordinator, tables, "northeast").parent)
    policy = BankPolicy.load(bank.policy)
    assert policy.approved_apps == (app_bundle_hash(),)
    assert policy.dp_required and policy.secure_aggregation_required
    assert f"policy-path='{bank.policy}'" in node_config_text(bank.node, str(bank.root))
    assert stat.S_IMODE(bank.policy.stat().st_mode) == 0o600


def test_bank_init_refuses_a_table_that_fails_the_contract_and_makes_no_key(
        tmp_path, coordinator, tables):
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(tables["west"].read_text().splitlines()[:50]).replace(
        "annual_inc", "income", 1))
    with pytest.raises(ConsortiumError, match="bank 'west' refuses to join: .*annual_inc") as e:
        bank_init(tmp_path / "west", "west", bad, tables["contract"], "127.0.0.1:9400",
                  coordinator.ca_cert)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "west").exists()


def test_bank_init_never_overwrites_keys_and_force_keeps_a_signing_key_with_a_ledger(
        tmp_path, coordinator, tables):
    bank = read_bank(join(tmp_path, coordinator, tables, "west").parent)
    node_key, signing_key = bank.auth_key.read_bytes(), bank.signing_key.read_bytes()
    with pytest.raises(ConsortiumError, match="node.key exists; keys are never overwritten"):
        join(tmp_path, coordinator, tables, "west")
    (bank.state_dir / "ledgers").mkdir()
    (bank.state_dir / "ledgers" / "abc.jsonl").write_text("{}\n")
    join(tmp_path, coordinator, tables, "west", force=True)
    assert bank.auth_key.read_bytes() != node_key
    assert bank.signing_key.read_bytes() == signing_key


def test_registering_again_is_a_no_op_and_other_keys_need_replace(tmp_path, coordinator,
                                                                   tables):
    bundle = join(tmp_path, coordinator, tables, "west")
    register_bundle(coordinator.root, bundle)
    register_bundle(coordinator.root, bundle)
    assert read_settings(coordinator).banks == ("west",)
    join(tmp_path, coordinator, tables, "west", force=True)  # the bank made new keys
    with pytest.raises(ConsortiumError, match="bank 'west' is already registered with a "
                                              "different node and ledger key; .*--replace"):
        register_bundle(coordinator.root, bundle)
    register_bundle(coordinator.root, bundle, replace=True)
    assert coordinator.node_public_key("west").read_text().strip() == \
        json.loads(bundle.read_text())["node_public_key"]


def test_a_bundle_reusing_another_banks_key_is_refused(tmp_path, coordinator, tables):
    west = join(tmp_path, coordinator, tables, "west")
    register_bundle(coordinator.root, west)
    copycat = json.loads(west.read_text()) | {"bank_id": "northeast"}
    path = tmp_path / "copycat.json"
    path.write_text(json.dumps(copycat))
    with pytest.raises(ConsortiumError, match="its node key is already registered for bank "
                                              "'west'"):
        register_bundle(coordinator.root, path)


def _ssh_public(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


def _pem_public(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


BAD_BUNDLES = {
    "extra field": ({"signing_key": "x"}, "exactly the fields"),
    "other format": ({"format": "fedrisk-bank-bundle/2"}, "is not 'fedrisk-bank-bundle/1'"),
    "bad bank id": ({"bank_id": "../coordinator"}, "bank id '../coordinator' must be"),
    "RSA node key": ({"node_public_key": _ssh_public(rsa.generate_private_key(65537, 2048))},
                     "must be one 'ecdsa-sha2-nistp384"),
    "P-256 node key": ({"node_public_key": _ssh_public(ec.generate_private_key(ec.SECP256R1()))
                        .replace("nistp256", "nistp384")},
                       "node_public_key does not parse"),
    "private ledger key": ({"ledger_public_key": ed25519.Ed25519PrivateKey.generate()
                            .private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()).decode()},
                           "holds a private key"),
    "EC ledger key": ({"ledger_public_key": _pem_public(ec.generate_private_key(ec.SECP384R1()))},
                      "must be an Ed25519 key"),
}


@pytest.mark.parametrize("case", list(BAD_BUNDLES))
def test_register_refuses_a_bad_bundle_with_one_line_naming_the_file(tmp_path, coordinator,
                                                                     tables, case):
    good = json.loads(join(tmp_path, coordinator, tables, "west").read_text())
    change, message = BAD_BUNDLES[case]
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(good | change))
    with pytest.raises(ConsortiumError, match=re.escape(message)) as refused:
        register_bundle(coordinator.root, path)
    assert str(refused.value).startswith(f"{path}: ") and "\n" not in str(refused.value)
    assert read_settings(coordinator).banks == ()
    assert not coordinator.node_public_key("west").exists()


def test_the_proxy_forwards_exactly_the_fleet_calls_and_nginx_accepts_its_config(coordinator):
    config = coordinator.proxy_config.read_text()
    forwarded = re.findall(r"location = (/\S+) \{\s+limit_except POST \{ deny all; \}\s+"
                           r"proxy_pass https://superlink(/\S+);", config)
    assert forwarded == [(f"/v1/fleet/{c}", f"/v1/fleet/{c}") for c in FLEET_CALLS]
    assert "register-node" not in config and "/v1/control" not in config.split("http {")[1]
    assert re.search(r"location / \{\s+return 403;", config)
    assert "listen 127.0.0.1:9400 ssl;" in config and "server 127.0.0.1:9401;" in config
    assert "proxy_ssl_verify on;" in config
    assert f"proxy_ssl_trusted_certificate {coordinator.ca_cert};" in config
    validate_proxy_config(coordinator, find_nginx())


def test_the_coordinators_flwr_uses_the_control_address(coordinator):
    config = tomllib.loads((coordinator.flwr_home / "config.toml").read_text())
    assert config["superlink"]["fedrisk"]["address"] == "127.0.0.1:9401"
    settings = read_settings(coordinator)
    assert (settings.fleet_address, settings.control_address) == ("127.0.0.1:9400",
                                                                  "127.0.0.1:9401")


def test_settings_before_the_proxy_or_with_a_public_control_address_are_one_line_errors(
        coordinator):
    path = coordinator.settings_file
    path.write_text('coordinator-host = "127.0.0.1"\nsuperlink-port = 9300\n'
                    'connection = "fedrisk"\nbanks = []\n')
    with pytest.raises(ConsortiumError, match="predates the bank-facing proxy"):
        read_settings(coordinator)
    path.write_text('fleet-address = "10.0.0.1:9300"\ncontrol-address = "10.0.0.1:9301"\n'
                    'connection = "fedrisk"\nbanks = []\n')
    with pytest.raises(ConsortiumError, match="must be a loopback address"):
        read_settings(coordinator)


def test_the_cli_bank_init_and_register_fail_with_one_line(tmp_path, coordinator, tables):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    result = run_cli("consortium", "bank-init", str(tmp_path / "bank"), "--bank-id", "west",
                     "--data", str(bad), "--contract", str(tables["contract"]),
                     "--fleet-address", "127.0.0.1:9400", "--ca", str(coordinator.ca_cert))
    assert result.returncode == 2
    assert result.stderr.startswith("error: bank 'west' refuses to join: ")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    bundle = tmp_path / "bundle.json"
    bundle.write_text("{}")
    result = run_cli("consortium", "register", str(coordinator.root), str(bundle))
    assert result.returncode == 2 and "a bank bundle has exactly the fields" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
