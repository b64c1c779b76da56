"""AwsSecretsManagerStore against moto in server mode (a real HTTP server on a free port, in its
own process), driven through boto3."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("boto3")
pytest.importorskip("moto")

from keybroker.backends import (
    AwsSecretsManagerStore,
    EncryptedFileStore,
    KeyStore,
    NativeStore,
    migrate,
    open_store,
)
from keybroker.core import RawRoot, Scope, SecretService
from keybroker.crypto import SecretValue
from keybroker.errors import (
    AuthenticationError,
    PermissionDenied,
    SecretDeleted,
    SecretNotFound,
    StoreError,
    VersionNotFound,
)

pytestmark = pytest.mark.slow

CREDS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Moto:
    url: str
    proc: subprocess.Popen[bytes]


def start_moto(**env: str) -> Moto:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/moto-api/", timeout=1).status_code < 500:
                return Moto(url, proc)
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto did not start")


@pytest.fixture(scope="session")
def moto() -> Iterator[Moto]:
    m = start_moto()
    yield m
    m.proc.terminate()
    m.proc.wait(10)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}/"


@pytest.fixture
def aws(moto: Moto, prefix: str) -> Iterator[AwsSecretsManagerStore]:
    s = AwsSecretsManagerStore.connect("us-east-1", prefix=prefix, endpoint_url=moto.url, **CREDS)
    yield s
    s.close()


def values(store: KeyStore, name: str) -> list[str]:
    return [store.get(name, version=v.version).reveal() for v in store.versions(name) if v.readable]


def test_round_trip_and_versions(aws: AwsSecretsManagerStore, prefix: str, moto: Moto) -> None:
    v1 = aws.put("OPENAI_API_KEY", "sk-one")
    v2 = aws.put("OPENAI_API_KEY", "sk-two")
    assert v1 != v2
    assert aws.get("OPENAI_API_KEY").reveal() == "sk-two"
    assert aws.get("OPENAI_API_KEY", version=v1).reveal() == "sk-one"
    assert [(i.version, i.labels) for i in aws.versions("OPENAI_API_KEY")] == [
        (v1, ("previous",)),
        (v2, ("current",)),
    ]
    meta = aws.metadata("OPENAI_API_KEY")
    assert (meta.current_version, meta.store, meta.deleted) == (v2, "aws-sm", False)
    # plain boto3 sees the same secret under the prefix, with AWS's own labels
    import boto3

    raw = boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=moto.url, **CREDS)
    got = raw.get_secret_value(SecretId=f"{prefix}OPENAI_API_KEY", VersionStage="AWSPREVIOUS")
    assert got["SecretString"] == "sk-one"
    aws.put("BIN", SecretValue(b"\x00\xff"))
    assert aws.get("BIN").reveal_bytes() == b"\x00\xff"


def test_rotation_labels_map_to_aws_stages(aws: AwsSecretsManagerStore, prefix: str, moto: Moto) -> None:
    import boto3

    raw = boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=moto.url, **CREDS)
    old = aws.put("DB", "old")
    new = aws.put("DB", "new", label="pending")
    stages = raw.describe_secret(SecretId=f"{prefix}DB")["VersionIdsToStages"]
    assert stages[old] == ["AWSCURRENT"] and stages[new] == ["AWSPENDING"]
    assert aws.get("DB").reveal() == "old"
    assert aws.get("DB", label="pending").reveal() == "new"
    aws.promote("DB")
    stages = raw.describe_secret(SecretId=f"{prefix}DB")["VersionIdsToStages"]
    assert stages[new] == ["AWSCURRENT"] and stages[old] == ["AWSPREVIOUS"]
    assert aws.get("DB").reveal() == "new"
    assert aws.get("DB", label="previous").reveal() == "old"
    with pytest.raises(VersionNotFound):
        aws.get("DB", label="pending")
    with pytest.raises(VersionNotFound):
        aws.promote("DB")
    # a rotation Lambda's own staging is understood too
    token = str(uuid.uuid4())
    raw.put_secret_value(
        SecretId=f"{prefix}DB", SecretString="lambda", ClientRequestToken=token, VersionStages=["AWSPENDING"]
    )
    assert aws.get("DB", label="pending").reveal() == "lambda"
    assert [i.labels for i in aws.versions("DB")][-1] == ("pending",)


def test_missing_deleted_list_batch(aws: AwsSecretsManagerStore) -> None:
    with pytest.raises(SecretNotFound):
        aws.get("NOPE")
    with pytest.raises(SecretNotFound):
        aws.put("NOPE", "x", label="pending")
    for n in ("A", "b/one", "b/two", "GONE"):
        aws.put(n, f"val-{n}")
    with pytest.raises(VersionNotFound):
        aws.get("A", label="previous")
    with pytest.raises(VersionNotFound):
        aws.get("A", version="00000000-0000-0000-0000-000000000000")
    aws.delete("GONE")
    with pytest.raises(SecretDeleted):
        aws.get("GONE")
    assert aws.list() == ["A", "b/one", "b/two"]
    assert aws.list("b/") == ["b/one", "b/two"]
    got = aws.get_many(["A", "b/one", "MISSING"])
    assert {k: v.reveal() for k, v in got.items()} == {"A": "val-A", "b/one": "val-b/one"}


def test_open_store_url(moto: Moto, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    s = open_store(f"aws-sm://us-east-1/{prefix}?endpoint_url={moto.url}")
    assert isinstance(s, AwsSecretsManagerStore)
    assert s.location() == f"aws-sm://us-east-1/{prefix}?endpoint_url={moto.url}"
    s.put("K", "v")
    assert s.get("K").reveal() == "v"


def test_unreachable() -> None:
    s = AwsSecretsManagerStore.connect(
        "us-east-1", endpoint_url=f"http://127.0.0.1:{free_port()}", timeout=2, **CREDS
    )
    with pytest.raises(StoreError) as e:
        s.get("K")
    assert "unreachable" in e.value.message


@pytest.fixture(scope="module")
def moto_iam() -> Iterator[tuple[Moto, dict[str, str], dict[str, str]]]:
    """A second moto with IAM checks on: an admin and a read-only user."""
    import boto3

    m = start_moto()
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=m.url, **CREDS)

    def user(name: str, actions: list[str]) -> dict[str, str]:
        iam.create_user(UserName=name)
        doc = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
        }
        iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(doc))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}

    admin = user("admin", ["secretsmanager:*"])
    reader = user("reader", ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"])
    httpx.post(f"{m.url}/moto-api/reset-auth", content=b"0", timeout=5).raise_for_status()
    yield m, admin, reader
    m.proc.terminate()
    m.proc.wait(10)


def test_wrong_credentials_and_permission_denied(
    moto_iam: tuple[Moto, dict[str, str], dict[str, str]],
) -> None:
    m, admin, reader = moto_iam
    a = AwsSecretsManagerStore.connect("us-east-1", endpoint_url=m.url, **admin)
    a.put("K", "v")
    r = AwsSecretsManagerStore.connect("us-east-1", endpoint_url=m.url, **reader)
    assert r.get("K").reveal() == "v"
    with pytest.raises(PermissionDenied) as e:
        r.put("K", "not-allowed-canary")
    assert "not-allowed-canary" not in str(e.value)
    wrong = AwsSecretsManagerStore.connect(
        "us-east-1", endpoint_url=m.url, aws_access_key_id="AKIAWRONGWRONGWRONG1", aws_secret_access_key="x"
    )
    with pytest.raises(AuthenticationError):
        wrong.get("K")
    bad_secret = AwsSecretsManagerStore.connect(
        "us-east-1",
        endpoint_url=m.url,
        aws_access_key_id=admin["aws_access_key_id"],
        aws_secret_access_key="not-the-secret",
    )
    with pytest.raises(AuthenticationError):
        bad_secret.get("K")


def test_migrate_aws_to_keybroker_and_back(
    aws: AwsSecretsManagerStore, moto: Moto, secrets: SecretService, me: Any, tmp_path: Path
) -> None:
    for i in range(5):
        aws.put(f"svc/KEY_{i}", f"k{i}-a")
        aws.put(f"svc/KEY_{i}", f"k{i}-b")
    aws.put("svc/KEY_0", "k0-next", label="pending")
    native = NativeStore(secrets, me, Scope("default", "dev"))
    r = migrate(aws, native, state_file=tmp_path / "s.json")
    assert r.ok, r.to_dict()
    assert r.versions_written == 11
    assert values(native, "svc/KEY_2") == ["k2-a", "k2-b"]
    assert native.get("svc/KEY_0", label="pending").reveal() == "k0-next"
    back = AwsSecretsManagerStore.connect(
        "us-east-1", prefix=f"back{uuid.uuid4().hex[:6]}/", endpoint_url=moto.url, **CREDS
    )
    r2 = migrate(native, back)
    assert r2.ok and r2.versions_written == 11
    assert back.get("svc/KEY_0", label="pending").reveal() == "k0-next"
    assert back.get("svc/KEY_0", label="previous").reveal() == "k0-a"
    assert values(back, "svc/KEY_4") == ["k4-a", "k4-b"]
    assert migrate(native, back).versions_written == 0


def test_migrate_file_to_aws_resumes(aws: AwsSecretsManagerStore, tmp_path: Path) -> None:
    src = EncryptedFileStore(tmp_path / "f.kbf", RawRoot(os.urandom(32), kind="key"))
    for i in range(8):
        src.put(f"F{i}", f"f{i}")
    state = tmp_path / "state.json"

    def stop_at_4(done: int, total: int, name: str) -> None:
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        migrate(src, aws, state_file=state, progress=stop_at_4)
    r = migrate(src, aws, state_file=state)
    assert r.ok and len(r.copied) == 4 and len(r.skipped) == 4
    assert all(len(aws.versions(f"F{i}")) == 1 for i in range(8))
