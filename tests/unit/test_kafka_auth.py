"""Kafka credentials from the environment, generated passwords, the ACL list and the auth broker's settings.

The broker enforcing them is tested for real in tests/integration/test_kafka_auth.py.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from chexstack import kafka_auth
from chexstack.broker import Broker
from chexstack.cli import app
from chexstack.kafka_auth import Acl, client_security, load_or_create_passwords, service_acls
from chexstack.topics import Topics

ROOT = Path(__file__).resolve().parents[2]


def test_no_user_is_plaintext_and_a_user_gets_scram(tmp_path: Path) -> None:
    assert client_security({}) == {}
    cfg = client_security({"CHEXSTACK_KAFKA_USER": "router", "CHEXSTACK_KAFKA_PASSWORD": "s3cret"})
    assert cfg == {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "router",
        "sasl.password": "s3cret",
    }
    secret_file = tmp_path / "router.password"
    secret_file.write_text("from-a-file\n")
    env = {"CHEXSTACK_KAFKA_USER": "router", "CHEXSTACK_KAFKA_PASSWORD_FILE": str(secret_file)}
    assert client_security(env)["sasl.password"] == "from-a-file"
    admin = client_security({"CHEXSTACK_KAFKA_USER": "admin", "CHEXSTACK_KAFKA_PASSWORD": "a"})
    assert admin["sasl.mechanism"] == "PLAIN"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHEXSTACK_KAFKA_USER": "router"}, "CHEXSTACK_KAFKA_USER=router needs CHEXSTACK_KAFKA_PASSWORD"),
        ({"CHEXSTACK_KAFKA_PASSWORD": "x"}, "CHEXSTACK_KAFKA_USER is not"),
        ({"CHEXSTACK_KAFKA_USER": "a", "CHEXSTACK_KAFKA_PASSWORD_FILE": "/nonexistent"}, "cannot read"),
    ],
)
def test_half_set_credentials_name_the_variables(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        client_security(env)


def test_the_cli_refuses_half_set_credentials_before_any_command() -> None:
    result = CliRunner().invoke(app, ["kafka", "status"], env={"CHEXSTACK_KAFKA_USER": "ingest"})
    assert result.exit_code == 2
    assert "CHEXSTACK_KAFKA_USER=ingest needs CHEXSTACK_KAFKA_PASSWORD" in result.output


def test_passwords_are_generated_once_private_and_distinct(tmp_path: Path) -> None:
    users = tmp_path / "users"
    first = load_or_create_passwords(users)
    assert set(first) == set(kafka_auth.USERS)
    assert len(set(first.values())) == len(first)
    assert all(len(p) >= 40 for p in first.values())
    assert stat.S_IMODE(users.stat().st_mode) == 0o700
    for user in kafka_auth.USERS:
        assert stat.S_IMODE(kafka_auth.password_file(users, user).stat().st_mode) == 0o600
    assert load_or_create_passwords(users) == first
    kafka_auth.password_file(users, "hub").write_text("")
    with pytest.raises(ValueError, match=r"hub\.password is empty"):
        load_or_create_passwords(users)
    kafka_auth.password_file(users, "hub").unlink()
    with pytest.raises(ValueError, match=r"cannot read the password of Kafka user hub: .*hub\.password"):
        kafka_auth.read_passwords(users)


def rights(acls: list[Acl], user: str) -> set[tuple[str, str, str]]:
    return {(a.resource, a.operation, a.name) for a in acls if a.user == user and not a.prefixed}


def test_each_service_may_do_only_what_it_needs() -> None:
    t = Topics("p.")
    acls = service_acls(t)
    assert rights(acls, "preprocess") == {
        ("topic", "read", "p.xray.uploaded"),
        ("topic", "write", "p.xray.preprocessed"),
        ("topic", "write", "p.xray.dlq"),
        ("group", "read", "p.chexstack-preprocess"),
    }
    assert rights(acls, "router") == {
        ("topic", "read", "p.xray.preprocessed"),
        ("topic", "read", "p.chexstack.control"),
        ("topic", "write", "p.xray.predictions"),
        ("topic", "write", "p.xray.dlq"),
        ("group", "read", "p.chexstack-router"),
    }
    assert rights(acls, "ingest") == {
        ("topic", "write", "p.xray.uploaded"),
        ("topic", "read", "p.xray.predictions"),
        ("topic", "read", "p.xray.dlq"),
    }
    assert rights(acls, "hub") == {
        ("topic", "read", "p.chexstack.control"),
        ("topic", "write", "p.chexstack.control"),
    }
    assert rights(acls, "notebook") == {
        ("topic", "read", "p.xray.preprocessed"),
        ("topic", "read", "p.xray.predictions"),
        ("topic", "read", "p.xray.dlq"),
    }
    prefixed = {(a.user, a.resource, a.name) for a in acls if a.prefixed}
    assert prefixed == {
        ("preprocess", "transactional_id", "p.chexstack-preprocess-"),
        ("router", "transactional_id", "p.chexstack-router-"),
        *((user, "group", "chexstack-reader-") for user in kafka_auth.SERVICES),
    }
    assert not any(a.user == kafka_auth.ADMIN for a in acls)  # the super user needs none


def test_retired_rights_are_granted_no_more() -> None:
    t = Topics("p.")
    retired = kafka_auth.retired_acls(t)
    assert Acl("notebook", "topic", "p.xray.uploaded", "write") in retired
    assert not set(retired) & set(service_acls(t))


def test_acls_become_admin_client_bindings() -> None:
    from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType

    binding = kafka_auth._binding(
        Acl("router", "transactional_id", "chexstack-router-", "write", prefixed=True)
    )
    assert binding.restype == ResourceType.TRANSACTIONAL_ID
    assert binding.resource_pattern_type == ResourcePatternType.PREFIXED
    assert binding.principal == "User:router"
    assert binding.operation == AclOperation.WRITE


def test_the_auth_broker_listens_for_sasl_only_and_denies_by_default(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "kafka", port=19092, auth=True)
    props = dict(line.split("=", 1) for line in broker._properties().splitlines() if line)
    assert props["listeners"] == "BROKER://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert "PLAINTEXT:" not in props["listener.security.protocol.map"]
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["super.users"] == "User:admin"
    # The services with SCRAM; the admin, known only to the broker's JAAS config, with PLAIN.
    assert props["listener.name.broker.sasl.enabled.mechanisms"] == "PLAIN,SCRAM-SHA-512"
    assert props["listener.name.controller.sasl.enabled.mechanisms"] == "PLAIN"
    admin_password = broker.passwords()["admin"]
    assert f'user_admin="{admin_password}"' in props["listener.name.broker.plain.sasl.jaas.config"]
    assert "password" not in props["listener.name.broker.scram-sha-512.sasl.jaas.config"]
    assert broker.admin_config()["sasl.mechanism"] == "PLAIN"
    assert broker.client_env("ingest") == {
        "CHEXSTACK_KAFKA_USER": "ingest",
        "CHEXSTACK_KAFKA_PASSWORD_FILE": str(tmp_path / "kafka" / "users" / "ingest.password"),
    }
    plain = Broker(tmp_path / "plain", port=19092)
    assert plain.admin_config() == {} and plain.client_env("ingest") == {}
    assert "authorizer" not in plain._properties()


def test_the_kafka_role_generates_a_password_for_every_user() -> None:
    role_vars = yaml.safe_load((ROOT / "roles" / "kafka" / "vars" / "main.yml").read_text())
    assert role_vars["kafka_users"] == list(kafka_auth.USERS)
