"""Kafka authentication (SASL/SCRAM) and authorisation (ACLs): one user per service, least privilege.

A client authenticates when CHEXSTACK_KAFKA_USER is set, with CHEXSTACK_KAFKA_PASSWORD or (as the
platform's compose secrets do) CHEXSTACK_KAFKA_PASSWORD_FILE; without a user it speaks PLAINTEXT, as
to a broker started without `--auth`. `service_acls` is the one list of what each service may do;
`apply` creates the users' SCRAM credentials and those ACLs as the admin user.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from chexstack.settings import secret
from chexstack.topics import Topics

MECHANISM: Final = "SCRAM-SHA-512"
ADMIN: Final = "admin"
# The admin logs in with PLAIN against the broker's own JAAS configuration, not SCRAM: its credential is
# not in the KRaft metadata, so a broker whose data predates authentication needs no reformatting and
# the admin can create every other user's SCRAM credentials.
ADMIN_MECHANISM: Final = "PLAIN"
# The services' users; `admin` is the broker's super user, for topics, users and ACLs only.
SERVICES: Final = ("preprocess", "router", "ingest", "hub", "notebook")
USERS: Final = (ADMIN, *SERVICES)
# Every TopicReader's throwaway group starts with this (chexstack.bus): readers of any user may use them.
READER_GROUP_PREFIX: Final = "chexstack-reader-"


def mechanism(user: str) -> str:
    return ADMIN_MECHANISM if user == ADMIN else MECHANISM


def sasl_config(user: str, password: str) -> dict[str, str]:
    """librdkafka settings for SASL over the loopback or a private network (no TLS)."""
    return {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism(user),
        "sasl.username": user,
        "sasl.password": password,
    }


def client_security(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The SASL settings from CHEXSTACK_KAFKA_USER and its password; {} (PLAINTEXT) without a user.

    A user without a password (or the reverse) is an error naming both variables: a half-configured
    client would otherwise fail later with a less helpful "authentication failed".
    """
    e = os.environ if env is None else env
    user = e.get("CHEXSTACK_KAFKA_USER", "")
    password = secret("CHEXSTACK_KAFKA_PASSWORD", e)
    if not user and password is None:
        return {}
    if not user:
        raise ValueError("CHEXSTACK_KAFKA_PASSWORD(_FILE) is set but CHEXSTACK_KAFKA_USER is not")
    if password is None:
        raise ValueError(
            f"CHEXSTACK_KAFKA_USER={user} needs CHEXSTACK_KAFKA_PASSWORD or CHEXSTACK_KAFKA_PASSWORD_FILE"
        )
    return sasl_config(user, password)


def password_file(directory: Path, user: str) -> Path:
    return directory / f"{user}.password"


def read_passwords(directory: Path, users: tuple[str, ...] = USERS) -> dict[str, str]:
    """Each user's password from `directory`/<user>.password; a missing or empty file is an error."""
    out = {}
    for user in users:
        path = password_file(directory, user)
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the password of Kafka user {user}: {exc}") from exc
        if not value:
            raise ValueError(f"{path} is empty: delete it to generate a new password")
        out[user] = value
    return out


def load_or_create_passwords(directory: Path, users: tuple[str, ...] = USERS) -> dict[str, str]:
    """Each user's password from `directory`, generating the missing ones (dir 0700, files 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    for user in users:
        path = password_file(directory, user)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
    return read_passwords(directory, users)


@dataclass(frozen=True)
class Acl:
    """One ALLOW rule: `user` may `operation` on the resource (`name`, a literal or a prefix)."""

    user: str
    resource: str  # "topic", "group" or "transactional_id"
    name: str
    operation: str  # "read", "write", "describe"
    prefixed: bool = False


def service_acls(topics: Topics) -> list[Acl]:
    """What each service may do, and nothing more.

    The workers' consumer groups and transactional ids are those chexstack.commands.workers and
    chexstack.workers.base derive from the topic prefix; every user may use the readers' groups.
    """
    p = topics.prefix
    rules = [
        # preprocess: uploaded -> preprocessed, dead letters
        Acl("preprocess", "topic", topics.uploaded, "read"),
        Acl("preprocess", "topic", topics.preprocessed, "write"),
        Acl("preprocess", "topic", topics.dlq, "write"),
        # router: preprocessed (+ the A/B control topic) -> predictions, dead letters
        Acl("router", "topic", topics.preprocessed, "read"),
        Acl("router", "topic", topics.control, "read"),
        Acl("router", "topic", topics.predictions, "write"),
        Acl("router", "topic", topics.dlq, "write"),
        # ingest (the ingest service, and `chexstack upload` on the host): writes uploads, reads their
        # outcome
        Acl("ingest", "topic", topics.uploaded, "write"),
        Acl("ingest", "topic", topics.predictions, "read"),
        Acl("ingest", "topic", topics.dlq, "read"),
        # notebook (JupyterLab): follows uploads through the pipeline (the result cards show the
        # preprocessed thumbnail); uploads go through the ingest service, which holds the pseudonym key.
        # Never publishes: no uploads bypassing de-identification, no forged predictions or A/B weights.
        Acl("notebook", "topic", topics.preprocessed, "read"),
        Acl("notebook", "topic", topics.predictions, "read"),
        Acl("notebook", "topic", topics.dlq, "read"),
        # hub (and `chexstack ab set`): the A/B weights
        Acl("hub", "topic", topics.control, "read"),
        Acl("hub", "topic", topics.control, "write"),
    ]
    for worker in ("preprocess", "router"):
        rules += [
            Acl(worker, "group", f"{p}chexstack-{worker}", "read"),
            Acl(worker, "transactional_id", f"{p}chexstack-{worker}-", "write", prefixed=True),
        ]
    rules += [Acl(user, "group", READER_GROUP_PREFIX, "read", prefixed=True) for user in SERVICES]
    return rules


def retired_acls(topics: Topics) -> list[Acl]:
    """Rights earlier releases granted and this one takes back: `apply` deletes them from the broker."""
    return [
        # Uploads from the notebooks go through the ingest service now.
        Acl("notebook", "topic", topics.uploaded, "write"),
    ]


def _binding(acl: Acl) -> Any:
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    resource = {
        "topic": ResourceType.TOPIC,
        "group": ResourceType.GROUP,
        "transactional_id": ResourceType.TRANSACTIONAL_ID,
    }[acl.resource]
    return AclBinding(
        resource,
        acl.name,
        ResourcePatternType.PREFIXED if acl.prefixed else ResourcePatternType.LITERAL,
        f"User:{acl.user}",
        "*",
        AclOperation[acl.operation.upper()],
        AclPermissionType.ALLOW,
    )


def apply(
    bootstrap: str,
    passwords: Mapping[str, str],
    topics: Topics,
    *,
    timeout_s: float = 30.0,
) -> None:
    """As the admin user (`passwords[ADMIN]`): create or update the services' SCRAM credentials, add
    their ACLs and delete the retired ones (`retired_acls`).

    Idempotent: credentials are upserted, creating an ACL that exists and deleting one that does not are
    no-ops.
    """
    from confluent_kafka.admin import (
        AclBindingFilter,
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    from chexstack.bus import LibrdkafkaLogger

    config = {
        "bootstrap.servers": bootstrap,
        "logger": LibrdkafkaLogger(),
        **sasl_config(ADMIN, passwords[ADMIN]),
    }
    admin = AdminClient(config)
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
    upserts = [
        UserScramCredentialUpsertion(user, info, password.encode())
        for user, password in passwords.items()
        if user != ADMIN
    ]
    if upserts:
        for user, fut in admin.alter_user_scram_credentials(upserts, request_timeout=timeout_s).items():
            try:
                fut.result()
            except Exception as exc:
                raise RuntimeError(f"cannot set the SCRAM credentials of Kafka user {user}: {exc}") from exc
    bindings = [_binding(a) for a in service_acls(topics)]
    for binding, fut in admin.create_acls(bindings, request_timeout=timeout_s).items():
        try:
            fut.result()
        except Exception as exc:
            raise RuntimeError(f"cannot create the Kafka ACL {binding}: {exc}") from exc
    # A binding with exact values is a filter that matches only itself.
    retired = [_binding(a) for a in retired_acls(topics)]
    filters = [
        AclBindingFilter(
            b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation, b.permission_type
        )
        for b in retired
    ]
    for rule, fut in admin.delete_acls(filters, request_timeout=timeout_s).items():
        try:
            fut.result()
        except Exception as exc:
            raise RuntimeError(f"cannot delete the retired Kafka ACL {rule}: {exc}") from exc
