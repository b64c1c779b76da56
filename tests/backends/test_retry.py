"""Throttling: reads retry with back-off, writes never (they may have been applied).

Vault and AWS are driven over real HTTP against a tiny local server that always throttles, so
the whole path (SDK -> exception -> translation -> retry) is what runs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from keybroker.backends import RetryPolicy
from keybroker.errors import InvalidInput, StoreError


class Throttler:
    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        self.requests: list[tuple[str, str]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                outer.requests.append((self.command, self.path))
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_LIST = _reply

            def log_message(self, *a: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def policy(sleeps: list[float]) -> RetryPolicy:
    return RetryPolicy(attempts=4, base_delay=0.1, max_delay=1.0, sleep=sleeps.append, rng=lambda: 1.0)


def test_policy_backs_off_exponentially(policy: RetryPolicy, sleeps: list[float]) -> None:
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise StoreError("slow down", throttled=True)
        return "ok"

    assert policy.call(flaky) == "ok"
    assert sleeps == [0.1, 0.2]


def test_policy_does_not_retry_other_errors(policy: RetryPolicy, sleeps: list[float]) -> None:
    def down() -> None:
        raise StoreError("unreachable")

    with pytest.raises(StoreError):
        policy.call(down)
    assert sleeps == []
    with pytest.raises(InvalidInput):
        policy.call(lambda: (_ for _ in ()).throw(InvalidInput("bad")))


@pytest.fixture
def vault_429() -> Iterator[Throttler]:
    t = Throttler(429, {"errors": ["request path rate limited"]}, {"Content-Type": "application/json"})
    yield t
    t.close()


def test_vault_reads_retry_writes_do_not(
    vault_429: Throttler, policy: RetryPolicy, sleeps: list[float]
) -> None:
    import hvac

    from keybroker.backends import VaultKVStore

    client = hvac.Client(url=vault_429.url, token="t")
    store = VaultKVStore(client, mount="secret", retry=policy, check_mount=False)
    with pytest.raises(StoreError) as e:
        store.get("K")
    assert e.value.details.get("throttled") is True
    assert len(vault_429.requests) == 4
    assert sleeps == [0.1, 0.2, 0.4]
    vault_429.requests.clear()
    with pytest.raises(StoreError) as e2:
        store.put("K", "never-twice")
    assert e2.value.details.get("throttled") is True
    assert len(vault_429.requests) == 1
    assert "never-twice" not in str(e2.value)


@pytest.fixture
def aws_throttle() -> Iterator[Throttler]:
    t = Throttler(
        400,
        {"__type": "ThrottlingException", "message": "Rate exceeded"},
        {"Content-Type": "application/x-amz-json-1.1"},
    )
    yield t
    t.close()


def test_aws_reads_retry_writes_do_not(
    aws_throttle: Throttler, policy: RetryPolicy, sleeps: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    from keybroker.backends import AwsSecretsManagerStore

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    store = AwsSecretsManagerStore.connect("us-east-1", endpoint_url=aws_throttle.url, retry=policy)
    with pytest.raises(StoreError) as e:
        store.get("K")
    assert e.value.details.get("throttled") is True
    assert len(aws_throttle.requests) == 4  # botocore's own retries are off: only ours
    aws_throttle.requests.clear()
    with pytest.raises(StoreError):
        store.put("K", "never-twice")
    assert len(aws_throttle.requests) == 1
