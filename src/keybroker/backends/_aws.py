"""AWS Secrets Manager as a key store, through ``boto3``.

Names: secret ``NAME`` is the AWS secret ``<prefix>NAME``. Values: text goes to ``SecretString``;
bytes that are not UTF-8 go to ``SecretBinary``.

Versions are AWS version ids (UUIDs). Labels are AWS staging labels, mapped one to one:

    keybroker   AWS
    current     AWSCURRENT
    previous    AWSPREVIOUS
    pending     AWSPENDING

``put(label="pending")`` stages ``AWSPENDING`` (what a rotation Lambda does); :meth:`promote`
moves ``AWSCURRENT`` to it, and AWS moves ``AWSPREVIOUS`` to the old current by itself.

Retries: botocore's own retries are switched off (they would repeat writes after a timeout);
reads are retried here, with back-off, only when AWS throttles. Credentials come from boto3's
usual chain (environment, profile, instance role), never from a URL.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import boto3
import botocore.exceptions as bce
from botocore.config import Config

from keybroker.backends._base import (
    NO_RETRY,
    Names,
    RetryPolicy,
    SecretInfo,
    StoreCapabilities,
    VersionInfo,
    Versions,
    as_secret,
    check_label,
    check_store_name,
    throttled,
)
from keybroker.crypto import SecretValue
from keybroker.errors import (
    AlreadyExists,
    AuthenticationError,
    InvalidInput,
    KeybrokerError,
    PermissionDenied,
    SecretDeleted,
    SecretNotFound,
    StoreError,
    VersionNotFound,
)

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient
else:
    SecretsManagerClient = Any

__all__ = ["AwsSecretsManagerStore"]

T = TypeVar("T")
_Raw = list[dict[str, Any]]

TO_AWS = {"current": "AWSCURRENT", "previous": "AWSPREVIOUS", "pending": "AWSPENDING"}
FROM_AWS = {v: k for k, v in TO_AWS.items()}

_AUTH_CODES = {
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "ExpiredTokenException",
    "ExpiredToken",
    "MissingAuthenticationToken",
    "AuthFailure",
}
_THROTTLE_CODES = {
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
}


class AwsSecretsManagerStore:
    """Secrets Manager in one region, optionally under a name prefix (``team/app/``)."""

    kind = "aws-sm"
    capabilities = StoreCapabilities(writable=True, versions=True, labels=frozenset({"current", "pending"}))

    def __init__(
        self,
        client: SecretsManagerClient,
        *,
        prefix: str = "",
        recovery_window_days: int = 30,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.recovery_window_days = recovery_window_days
        self.retry = retry or RetryPolicy()

    @classmethod
    def connect(
        cls,
        region: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        profile: str | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        **client_kwargs: Any,
    ) -> AwsSecretsManagerStore:
        """A store on a new client. ``endpoint_url`` for moto, LocalStack or a VPC endpoint."""
        try:
            session = boto3.session.Session(profile_name=profile, region_name=region)
            config = Config(
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=timeout,
                read_timeout=timeout,
            )
            client = session.client(
                "secretsmanager", endpoint_url=endpoint_url, config=config, **client_kwargs
            )
            client.meta.events.register("before-parse.secrets-manager", _xml_errors_as_json)
        except bce.ProfileNotFound as exc:
            raise AuthenticationError(f"no AWS profile named {profile!r}") from exc
        except (bce.BotoCoreError, ValueError) as exc:
            raise InvalidInput(
                f"cannot set up an AWS client for region {region!r}: {type(exc).__name__}"
            ) from exc
        return cls(client, prefix=prefix, retry=retry)

    def __repr__(self) -> str:
        return f"AwsSecretsManagerStore({self.location()!r})"

    def location(self) -> str:
        region = self.client.meta.region_name
        endpoint = self.client.meta.endpoint_url
        default = f"https://secretsmanager.{region}.amazonaws.com"
        q = f"?endpoint_url={endpoint}" if endpoint and endpoint != default else ""
        return f"aws-sm://{region}/{self.prefix}{q}"

    # ------------------------------------------------------------------ plumbing
    def _id(self, name: str) -> str:
        check_store_name(name)
        return self.prefix + name

    def _call(self, fn: Callable[[], T], what: str, name: str, *, read: bool) -> T:
        def once() -> T:
            try:
                return fn()
            except bce.ClientError as exc:
                raise _translate(exc, what, name, self.location()) from exc
            except bce.NoCredentialsError as exc:
                raise AuthenticationError("no AWS credentials found (environment, profile or role)") from exc
            except (bce.EndpointConnectionError, bce.ConnectionClosedError, bce.ConnectTimeoutError) as exc:
                raise StoreError(f"{self.location()} is unreachable ({type(exc).__name__})") from exc
            except bce.ReadTimeoutError as exc:
                raise StoreError(
                    f"{self.location()} timed out while trying to {what} {name!r}"
                    + ("" if read else ": the write may or may not have been applied")
                ) from exc
            except bce.BotoCoreError as exc:
                raise StoreError(f"AWS call to {what} {name!r} failed ({type(exc).__name__})") from exc

        return (self.retry if read else NO_RETRY).call(once)

    # ------------------------------------------------------------------ protocol
    def get(self, name: str, *, version: str | None = None, label: str | None = None) -> SecretValue:
        sid = self._id(name)
        kwargs: dict[str, Any] = {"SecretId": sid}
        if version is not None:
            kwargs["VersionId"] = version
        else:
            kwargs["VersionStage"] = TO_AWS[check_label(label)]
        try:
            resp = self._call(lambda: self.client.get_secret_value(**kwargs), "read", name, read=True)
        except SecretNotFound:
            if version is None and check_label(label) == "current":
                raise
            self.metadata(name)  # SecretNotFound when the secret itself is missing
            what = f"version {version!r}" if version is not None else f"{check_label(label)} version"
            raise VersionNotFound(f"secret {name!r} has no {what}") from None
        except InvalidInput:
            if version is not None:
                raise VersionNotFound(f"secret {name!r} has no version {version!r}") from None
            raise
        if "SecretString" in resp:
            return SecretValue(resp["SecretString"])
        return SecretValue(resp.get("SecretBinary", b""))

    def get_many(self, names: list[str]) -> dict[str, SecretValue]:
        """Current values in batches of 20 (``BatchGetSecretValue``); missing names are left out."""
        out: dict[str, SecretValue] = {}
        for i in range(0, len(names), 20):
            chunk = names[i : i + 20]
            ids = {self._id(n): n for n in chunk}
            resp = self._call(
                functools.partial(self.client.batch_get_secret_value, SecretIdList=list(ids)),
                "read",
                ",".join(chunk),
                read=True,
            )
            for item in resp.get("SecretValues", []):
                n = ids.get(item.get("Name", ""))
                if n is None:
                    continue
                if "SecretString" in item:
                    out[n] = SecretValue(item["SecretString"])
                elif "SecretBinary" in item:
                    out[n] = SecretValue(item["SecretBinary"])
            for err in resp.get("Errors", []):
                code = err.get("ErrorCode", "")
                if code not in ("ResourceNotFoundException", "InvalidRequestException"):
                    raise _code_error(code, "read", ids.get(err.get("SecretId", ""), "?"), self.location())
        return out

    def _value_kwargs(self, value: SecretValue | str | bytes) -> dict[str, Any]:
        raw = as_secret(value).reveal_bytes()
        try:
            return {"SecretString": raw.decode("utf-8")}
        except UnicodeDecodeError:
            return {"SecretBinary": raw}

    def put(self, name: str, value: SecretValue | str | bytes, *, label: str = "current") -> str:
        lab = check_label(label, ("current", "pending"))
        sid = self._id(name)
        vk = self._value_kwargs(value)
        # A request token of our own makes an accidental repeat of this exact call a no-op at AWS.
        token = str(uuid.uuid4())
        try:
            resp = self._call(
                lambda: self.client.put_secret_value(
                    SecretId=sid, ClientRequestToken=token, VersionStages=[TO_AWS[lab]], **vk
                ),
                "write",
                name,
                read=False,
            )
            return str(resp["VersionId"])
        except SecretNotFound:
            if lab == "pending":
                raise SecretNotFound(f"no secret {name!r} to stage a pending version for") from None
        resp2 = self._call(
            lambda: self.client.create_secret(Name=sid, ClientRequestToken=token, **vk),
            "create",
            name,
            read=False,
        )
        return str(resp2["VersionId"])

    def promote(self, name: str) -> None:
        """AWSPENDING becomes AWSCURRENT; AWS moves AWSPREVIOUS to the old current itself."""
        sid = self._id(name)
        current = pending = None
        for v in self._version_list(name):
            stages = v.get("VersionStages", [])
            if "AWSCURRENT" in stages:
                current = v["VersionId"]
            if "AWSPENDING" in stages:
                pending = v["VersionId"]
        if pending is None:
            raise VersionNotFound(f"secret {name!r} has no pending version to promote")
        if pending != current:
            kw: dict[str, Any] = {"MoveToVersionId": pending}
            if current is not None:
                kw["RemoveFromVersionId"] = current
            self._call(
                lambda: self.client.update_secret_version_stage(
                    SecretId=sid, VersionStage="AWSCURRENT", **kw
                ),
                "promote",
                name,
                read=False,
            )
        self._call(
            lambda: self.client.update_secret_version_stage(
                SecretId=sid, VersionStage="AWSPENDING", RemoveFromVersionId=pending
            ),
            "promote",
            name,
            read=False,
        )

    def delete(self, name: str) -> None:
        """Schedule deletion after the recovery window (restorable with RestoreSecret until then)."""
        sid = self._id(name)
        self._call(
            lambda: self.client.delete_secret(SecretId=sid, RecoveryWindowInDays=self.recovery_window_days),
            "delete",
            name,
            read=False,
        )

    def list(self, prefix: str = "") -> Names:
        full = self.prefix + prefix
        out: list[str] = []
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"MaxResults": 100}
            if full:
                kw["Filters"] = [{"Key": "name", "Values": [full]}]
            if token:
                kw["NextToken"] = token
            resp = self._call(
                functools.partial(self.client.list_secrets, **kw), "list", full or "*", read=True
            )
            for s in resp.get("SecretList", []):
                n = s.get("Name", "")
                if n.startswith(full) and not s.get("DeletedDate"):
                    out.append(n[len(self.prefix) :])
            token = resp.get("NextToken")
            if not token:
                break
        return sorted(set(out))

    def _version_list(self, name: str) -> _Raw:
        sid = self._id(name)
        out: _Raw = []
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"SecretId": sid, "IncludeDeprecated": True, "MaxResults": 100}
            if token:
                kw["NextToken"] = token
            try:
                resp = self._call(
                    functools.partial(self.client.list_secret_version_ids, **kw),
                    "list versions of",
                    name,
                    read=True,
                )
            except StoreError:
                # Some AWS-compatible servers (moto) fail this call with a 500 for a missing
                # secret instead of ResourceNotFoundException: ask DescribeSecret, which says.
                self.metadata(name)
                raise
            out.extend(dict(v) for v in resp.get("Versions", []))
            token = resp.get("NextToken")
            if not token:
                return out

    def versions(self, name: str) -> Versions:
        vs = self._version_list(name)
        # Oldest first. CreatedDate can tie (moto keeps whole seconds): then the stages tell the
        # order, since AWS moves labels forward: unlabelled, AWSPREVIOUS, AWSCURRENT, AWSPENDING.
        rank = {"AWSPREVIOUS": 1, "AWSCURRENT": 2, "AWSPENDING": 3}

        def order(v: dict[str, Any]) -> tuple[Any, ...]:
            created = v.get("CreatedDate")
            stage = max((rank.get(s, 0) for s in v.get("VersionStages", [])), default=0)
            return (created is None, created.timestamp() if created else 0.0, stage)

        vs.sort(key=order)
        return [
            VersionInfo(
                str(v["VersionId"]),
                v.get("CreatedDate"),
                tuple(FROM_AWS[s] for s in v.get("VersionStages", []) if s in FROM_AWS),
            )
            for v in vs
        ]

    def metadata(self, name: str) -> SecretInfo:
        sid = self._id(name)
        d = self._call(lambda: self.client.describe_secret(SecretId=sid), "describe", name, read=True)
        current = None
        for vid, stages in (d.get("VersionIdsToStages") or {}).items():
            if "AWSCURRENT" in stages:
                current = vid
        return SecretInfo(
            name=name,
            store=self.kind,
            current_version=current,
            created_at=d.get("CreatedDate"),
            updated_at=d.get("LastChangedDate"),
            description=d.get("Description", ""),
            tags={t["Key"]: t["Value"] for t in d.get("Tags", []) if "Key" in t and "Value" in t},
            deleted=d.get("DeletedDate") is not None,
        )

    def close(self) -> None:
        self.client.close()


_XML_CODE = re.compile(rb"<Code>([A-Za-z0-9_.]{1,100})</Code>")


def _xml_errors_as_json(response_dict: dict[str, Any], **_: Any) -> None:
    """Some AWS-compatible endpoints (moto's IAM checks, proxies) answer a JSON-protocol call
    with a query-style XML error; botocore then sees only the HTTP status. Keep the code."""
    body = response_dict.get("body") or b""
    if int(response_dict.get("status_code") or 0) < 400 or not body.lstrip().startswith(b"<"):
        return
    m = _XML_CODE.search(body)
    if m:
        response_dict["body"] = json.dumps({"__type": m.group(1).decode(), "message": ""}).encode()


def _code_error(code: str, what: str, name: str, where: str, message: str = "") -> KeybrokerError:
    low = message.lower()
    if code == "ResourceNotFoundException":
        return SecretNotFound(f"no secret {name!r} in {where}")
    if code == "AccessDeniedException" or code == "AccessDenied":
        return PermissionDenied(f"AWS denied permission to {what} {name!r} in {where}")
    if code in _AUTH_CODES:
        return AuthenticationError(f"AWS refused the credentials ({code}) to {what} {name!r}")
    if code in _THROTTLE_CODES:
        return throttled(f"AWS is throttling requests ({what} {name!r})", aws_code=code)
    if code == "InvalidRequestException" and ("deletion" in low or "deleted" in low):
        return SecretDeleted(f"secret {name!r} in {where} is scheduled for deletion (restore it to use it)")
    if code == "ResourceExistsException":
        return AlreadyExists(f"secret {name!r} already exists in {where}")
    if code in ("InvalidParameterException", "InvalidRequestException", "ValidationException"):
        return InvalidInput(f"AWS rejected the request to {what} {name!r} ({code})", aws_code=code)
    if code in ("LimitExceededException",):
        return StoreError(f"an AWS quota was reached while trying to {what} {name!r}", aws_code=code)
    if code == "401":
        return AuthenticationError(f"AWS refused the credentials to {what} {name!r}")
    if code == "403":
        return PermissionDenied(f"AWS denied permission to {what} {name!r} in {where}")
    return StoreError(f"AWS failed to {what} {name!r} ({code or 'unknown error'})", aws_code=code)


def _translate(exc: bce.ClientError, what: str, name: str, where: str) -> KeybrokerError:
    err = exc.response.get("Error", {})
    # AWS messages name secrets and stages, never values; we only use them to classify.
    return _code_error(str(err.get("Code", "")), what, name, where, str(err.get("Message", "")))
