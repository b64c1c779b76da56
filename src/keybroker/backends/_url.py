"""``open_store(url)``: one URL names a store; credentials come from the environment, never the URL.

::

    vault://HOST:PORT/MOUNT/PREFIX?namespace=NS&auth=token|approle&tls=false&verify=false&field=value
        token from $VAULT_TOKEN (or $BAO_TOKEN; ``token_env=NAME`` to pick another variable);
        AppRole from $VAULT_ROLE_ID / $VAULT_SECRET_ID (``role_id_env``/``secret_id_env``),
        ``approle_mount=approle``. ``vault+http://`` is ``tls=false``; ``openbao://`` is an alias.
    aws-sm://REGION/PREFIX?endpoint_url=http://127.0.0.1:5000&profile=NAME
        credentials from boto3's usual chain (environment, profile, instance role)
    file:///PATH?key_file=/path/key | root_key_env=NAME | passphrase_env=NAME
        default: passphrase from $KEYBROKER_FILE_PASSPHRASE
    env://PREFIX_
    keybroker://PROJECT/ENV?org=ORG&resolve=false
        needs an unsealed vault: given by ``native=`` / :func:`set_native_opener`, else from
        $KEYBROKER_DB_URL unsealed with $KEYBROKER_PASSPHRASE_FILE or $KEYBROKER_KEY_FILE
    azure-kv://NAME.vault.azure.net/PREFIX   (see backends docs: not verified against Azure)
    gcp-sm://PROJECT/PREFIX                  (see backends docs: not verified against Google)

Third-party stores register a factory in the entry-point group ``keybroker.stores`` under their
scheme: ``factory(url: str, environ: Mapping[str, str]) -> KeyStore``. Built-in schemes cannot be
overridden by a plug-in.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from keybroker.backends._base import KeyStore, RetryPolicy
from keybroker.core import (
    KeyFileRoot,
    PassphraseRoot,
    Principal,
    RawRoot,
    RootKeySource,
    Scope,
    SecretService,
    check_scope_name,
)
from keybroker.errors import AuthenticationError, InvalidInput, KeybrokerError, UnsealFailed

__all__ = ["ENTRY_POINT_GROUP", "NativeOpener", "open_store", "redact_url", "set_native_opener"]

ENTRY_POINT_GROUP = "keybroker.stores"

#: Gives the service and principal that ``keybroker://`` URLs act through.
NativeOpener = Callable[[Scope], tuple[SecretService, Principal]]

_native_opener: NativeOpener | None = None

_CREDENTIAL_PARAMS = ("token", "secret_id", "role_id", "password", "passphrase", "secret", "key", "root_key")
_BUILTIN = (
    *("vault", "vault+http", "vault+https", "openbao"),
    *("aws-sm", "file", "env", "keybroker", "azure-kv", "gcp-sm"),
)


def set_native_opener(opener: NativeOpener | None) -> None:
    """Say how ``keybroker://`` URLs reach the local vault (the CLI sets its unsealed session)."""
    global _native_opener
    _native_opener = opener


def redact_url(url: str) -> str:
    """The URL without user info (for messages); store URLs should carry none anyway."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        parts = parts._replace(netloc="[redacted]@" + parts.netloc.rsplit("@", 1)[1])
    return parts.geturl()


def _params(url: str) -> tuple[Any, dict[str, str]]:
    parts = urlsplit(url)
    if parts.username or parts.password or "@" in parts.netloc:
        raise InvalidInput(
            "credentials never go in a store URL (they would end up in shell history and logs): "
            "use the environment variables the backend documents"
        )
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    bad = [k for k in params if k.lower() in _CREDENTIAL_PARAMS]
    if bad:
        raise InvalidInput(
            f"credentials never go in a store URL (found {', '.join(sorted(bad))}): "
            "name an environment variable instead (for example token_env=MY_VAULT_TOKEN)"
        )
    return parts, params


def _bool(params: dict[str, str], key: str, default: bool) -> bool:
    raw = params.get(key)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise InvalidInput(f"{key} must be true or false, not {raw!r}")


def _check_known(params: dict[str, str], known: set[str], scheme: str) -> None:
    unknown = sorted(set(params) - known)
    if unknown:
        raise InvalidInput(f"unknown {scheme}:// option(s): {', '.join(unknown)}")


def open_store(
    url: str,
    *,
    environ: Mapping[str, str] | None = None,
    native: NativeOpener | None = None,
    retry: RetryPolicy | None = None,
) -> KeyStore:
    """Open the store a URL names. Raises InvalidInput (bad URL or a credential in it),
    AuthenticationError (missing or refused credentials), StoreError (unreachable)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    if not isinstance(url, str) or "://" not in url:
        raise InvalidInput("a store URL looks like vault://host:8200/secret/app or file:///path/to/file")
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("vault", "vault+http", "vault+https", "openbao"):
        return _open_vault(url, scheme, env, retry)
    if scheme == "aws-sm":
        return _open_aws(url, retry)
    if scheme == "file":
        return _open_file(url, env)
    if scheme == "env":
        return _open_env(url, env)
    if scheme == "keybroker":
        return _open_native(url, env, native)
    if scheme == "azure-kv":
        from keybroker.backends._azure import open_azure_url

        return open_azure_url(url, env, retry)
    if scheme == "gcp-sm":
        from keybroker.backends._gcp import open_gcp_url

        return open_gcp_url(url, env, retry)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name.lower() == scheme and scheme not in _BUILTIN:
            try:
                factory = ep.load()
            except Exception as exc:
                raise InvalidInput(
                    f"the store plug-in for {scheme}:// could not be loaded ({type(exc).__name__})"
                ) from exc
            store = factory(url, env)
            if not isinstance(store, KeyStore):
                raise InvalidInput(f"the store plug-in for {scheme}:// did not return a KeyStore")
            return store
    raise InvalidInput(
        f"unknown store scheme {scheme!r}: use vault, aws-sm, file, env, keybroker, azure-kv, gcp-sm, "
        f"or install a plug-in that registers it in the {ENTRY_POINT_GROUP!r} entry-point group"
    )


def _open_vault(url: str, scheme: str, env: Mapping[str, str], retry: RetryPolicy | None) -> KeyStore:
    from keybroker.backends._vault import VaultKVStore

    parts, params = _params(url)
    _check_known(
        params,
        {
            "namespace",
            "auth",
            "tls",
            "verify",
            "ca_cert",
            "field",
            "token_env",
            "role_id_env",
            "secret_id_env",
            "approle_mount",
            "timeout",
        },
        "vault",
    )
    if not parts.hostname:
        raise InvalidInput("a vault:// URL needs a host: vault://127.0.0.1:8200/secret/prefix")
    tls = _bool(params, "tls", scheme != "vault+http")
    if scheme == "vault+https":
        tls = True
    segments = [unquote(s) for s in parts.path.split("/") if s]
    mount = segments[0] if segments else "secret"
    prefix = "/".join(segments[1:])
    verify: bool | str = params.get("ca_cert") or _bool(params, "verify", True)
    base = f"{'https' if tls else 'http'}://{parts.netloc}"
    auth = params.get("auth", "token")
    common: dict[str, Any] = {
        "namespace": params.get("namespace") or None,
        "mount": mount,
        "prefix": prefix,
        "field": params.get("field", "value"),
        "verify": verify,
        "retry": retry,
        "timeout": float(params.get("timeout", "10")),
    }
    if auth == "token":
        names = [params["token_env"]] if "token_env" in params else ["VAULT_TOKEN", "BAO_TOKEN"]
        token = next((env[n] for n in names if env.get(n)), None)
        if not token:
            raise AuthenticationError(f"no Vault token: set {' or '.join(names)}")
        return VaultKVStore.connect(base, token=token, **common)
    if auth == "approle":
        rid_var = params.get("role_id_env", "VAULT_ROLE_ID")
        sid_var = params.get("secret_id_env", "VAULT_SECRET_ID")
        role_id, secret_id = env.get(rid_var), env.get(sid_var)
        if not role_id or not secret_id:
            raise AuthenticationError(f"AppRole login needs ${rid_var} and ${sid_var}")
        return VaultKVStore.connect(
            base,
            role_id=role_id,
            secret_id=secret_id,
            approle_mount=params.get("approle_mount", "approle"),
            **common,
        )
    raise InvalidInput(f"unknown Vault auth {auth!r}: use token or approle")


def _open_aws(url: str, retry: RetryPolicy | None) -> KeyStore:
    from keybroker.backends._aws import AwsSecretsManagerStore

    parts, params = _params(url)
    _check_known(params, {"endpoint_url", "profile", "timeout"}, "aws-sm")
    region = parts.netloc
    if not region:
        raise InvalidInput("an aws-sm:// URL needs a region: aws-sm://eu-west-1/prefix/")
    prefix = unquote(parts.path.lstrip("/"))
    return AwsSecretsManagerStore.connect(
        region,
        prefix=prefix,
        endpoint_url=params.get("endpoint_url") or None,
        profile=params.get("profile") or None,
        timeout=float(params.get("timeout", "10")),
        retry=retry,
    )


def _open_file(url: str, env: Mapping[str, str]) -> KeyStore:
    from keybroker.backends._file import EncryptedFileStore

    parts, params = _params(url)
    _check_known(params, {"key_file", "root_key_env", "passphrase_env", "create"}, "file")
    if parts.netloc not in ("", "localhost"):
        raise InvalidInput("a file:// URL names a local path: file:///absolute/path/secrets.kbf")
    path = unquote(parts.path)
    if not path:
        raise InvalidInput("a file:// URL needs a path: file:///absolute/path/secrets.kbf")
    root: RootKeySource
    if "key_file" in params:
        root = KeyFileRoot(Path(params["key_file"]))
    elif "root_key_env" in params:
        raw = env.get(params["root_key_env"], "")
        try:
            key = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise UnsealFailed(f"${params['root_key_env']} is not a base64 256-bit key") from exc
        if not raw:
            raise UnsealFailed(f"${params['root_key_env']} is empty or not set")
        root = RawRoot(key, kind="key")
    else:
        var = params.get("passphrase_env", "KEYBROKER_FILE_PASSPHRASE")
        passphrase = env.get(var)
        if not passphrase:
            raise UnsealFailed(f"no passphrase for {path}: set ${var} (or give key_file= / root_key_env=)")
        root = PassphraseRoot(passphrase)
    return EncryptedFileStore(path, root, create=_bool(params, "create", True))


def _open_env(url: str, env: Mapping[str, str]) -> KeyStore:
    from keybroker.backends._env import EnvStore

    parts, params = _params(url)
    _check_known(params, set(), "env")
    return EnvStore(unquote(parts.netloc + parts.path), environ=env)


def _open_native(url: str, env: Mapping[str, str], native: NativeOpener | None) -> KeyStore:
    from keybroker.backends._native import NativeStore

    parts, params = _params(url)
    _check_known(params, {"org", "resolve"}, "keybroker")
    segments = [unquote(s) for s in [parts.netloc, *parts.path.split("/")] if s]
    if len(segments) != 2:
        raise InvalidInput("a keybroker:// URL names a project and an environment: keybroker://myapp/prod")
    project, environment = segments
    org = params.get("org", "default")
    check_scope_name("project", project)
    check_scope_name("environment", environment)
    check_scope_name("organization", org)
    scope = Scope(project, environment, org)
    opener = native or _native_opener or _env_native_opener(env)
    service, principal = opener(scope)
    return NativeStore(service, principal, scope, resolve=_bool(params, "resolve", True))


def _env_native_opener(env: Mapping[str, str]) -> NativeOpener:
    """The fallback: the vault database in $KEYBROKER_DB_URL, unsealed with the passphrase in
    $KEYBROKER_PASSPHRASE_FILE or the key in $KEYBROKER_KEY_FILE (the CLI's own settings)."""

    def opener(scope: Scope) -> tuple[SecretService, Principal]:
        from keybroker.core import Vault, local_principal
        from keybroker.store import Store

        db = env.get("KEYBROKER_DB_URL")
        if not db:
            raise InvalidInput(
                "keybroker:// needs the vault: run through the keybroker CLI, or set $KEYBROKER_DB_URL "
                "and $KEYBROKER_PASSPHRASE_FILE or $KEYBROKER_KEY_FILE"
            )
        root: RootKeySource
        if env.get("KEYBROKER_PASSPHRASE_FILE"):
            pf = Path(env["KEYBROKER_PASSPHRASE_FILE"])
            try:
                passphrase = pf.read_text("utf-8").rstrip("\r\n")
            except OSError as exc:
                raise UnsealFailed(f"cannot read the passphrase file {pf}: {exc.strerror}") from exc
            root = PassphraseRoot(passphrase)
        elif env.get("KEYBROKER_KEY_FILE"):
            root = KeyFileRoot(Path(env["KEYBROKER_KEY_FILE"]))
        else:
            raise UnsealFailed("the vault is sealed: set $KEYBROKER_PASSPHRASE_FILE or $KEYBROKER_KEY_FILE")
        principal = local_principal("migrate")
        vault = Vault(Store(db))
        try:
            vault.unseal(root, principal)
        except KeybrokerError:
            vault.store.dispose()
            raise
        return SecretService(vault), principal

    return opener
