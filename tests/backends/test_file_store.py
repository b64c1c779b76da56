"""The single-file encrypted store: crypto as the core, atomic writes, tamper detection."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from keybroker.backends import EncryptedFileStore
from keybroker.core import KeyFileRoot, ManualClock, PassphraseRoot, RawRoot
from keybroker.crypto import Argon2Params
from keybroker.errors import DecryptionError, InvalidInput, StoreError, UnsealFailed

FAST = {"memory_kib": 19 * 1024, "time_cost": 2, "parallelism": 1}


def test_no_plaintext_on_disk_and_private_mode(file_store: EncryptedFileStore) -> None:
    file_store.put("OPENAI_API_KEY", "sk-plaintext-canary")
    raw = file_store.path.read_bytes()
    assert b"sk-plaintext-canary" not in raw
    assert stat.S_IMODE(file_store.path.stat().st_mode) == 0o600
    doc = json.loads(raw)
    assert doc["format"] == "keybroker-file/1"
    assert "OPENAI_API_KEY" in doc["secrets"]  # names are in clear, as in the core's database


def test_passphrase_root_reopens_and_wrong_passphrase_refused(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "p.kbf"
    s = EncryptedFileStore(
        path, PassphraseRoot("right horse", Argon2Params(os.urandom(16), **FAST)), clock=clock
    )
    s.put("K", "v1")
    again = EncryptedFileStore(path, PassphraseRoot("right horse"), clock=clock)
    assert again.get("K").reveal() == "v1"
    wrong = EncryptedFileStore(path, PassphraseRoot("wrong horse"), clock=clock)
    with pytest.raises(UnsealFailed) as e:
        wrong.get("K")
    assert e.value.code == "unseal_failed"
    assert "right horse" not in str(e.value)
    with pytest.raises(UnsealFailed):
        wrong.put("K", "v2")
    assert again.get("K").reveal() == "v1"  # nothing changed


def test_key_file_root(tmp_path: Path) -> None:
    key = tmp_path / "file.key"
    s = EncryptedFileStore(tmp_path / "k.kbf", KeyFileRoot(key))
    s.put("K", "v")
    assert key.exists()
    assert EncryptedFileStore(tmp_path / "k.kbf", KeyFileRoot(key)).get("K").reveal() == "v"


def test_portable_copy(file_store: EncryptedFileStore, raw_root: RawRoot, tmp_path: Path) -> None:
    file_store.put("K", "v")
    moved = tmp_path / "elsewhere" / "copy.kbf"
    moved.parent.mkdir()
    moved.write_bytes(file_store.path.read_bytes())
    assert EncryptedFileStore(moved, raw_root).get("K").reveal() == "v"


def test_tampering_detected(file_store: EncryptedFileStore, raw_root: RawRoot) -> None:
    file_store.put("A", "a1")
    file_store.put("A", "a2")
    doc = json.loads(file_store.path.read_text())
    doc["secrets"]["A"]["current"] = 1  # roll the label back
    file_store.path.write_text(json.dumps(doc))
    with pytest.raises(DecryptionError):
        EncryptedFileStore(file_store.path, raw_root).get("A")


def test_swapped_ciphertexts_fail_even_with_a_fixed_mac(
    file_store: EncryptedFileStore, raw_root: RawRoot
) -> None:
    """The AAD binds each value to its name and version."""
    file_store.put("A", "a")
    file_store.put("B", "b")
    doc = json.loads(file_store.path.read_text())
    doc["secrets"]["A"]["versions"]["1"], doc["secrets"]["B"]["versions"]["1"] = (
        doc["secrets"]["B"]["versions"]["1"],
        doc["secrets"]["A"]["versions"]["1"],
    )
    # recompute the document MAC as an attacker with the key could not, but a bug might
    from keybroker.backends._file import _canonical
    from keybroker.crypto import keyed_hash

    kr = file_store._keyring_of(doc)
    doc["mac"] = keyed_hash(kr.subkey("file-mac"), _canonical(doc))
    file_store.path.write_text(json.dumps(doc))
    with pytest.raises(DecryptionError):
        EncryptedFileStore(file_store.path, raw_root).get("A")


def test_garbage_file(tmp_path: Path, raw_root: RawRoot) -> None:
    p = tmp_path / "x.kbf"
    p.write_text("not json")
    with pytest.raises(DecryptionError):
        EncryptedFileStore(p, raw_root).get("A")
    p.write_text(json.dumps({"format": "other"}))
    with pytest.raises(InvalidInput):
        EncryptedFileStore(p, raw_root).list()


def test_missing_file_is_empty_and_create_false(tmp_path: Path, raw_root: RawRoot) -> None:
    s = EncryptedFileStore(tmp_path / "none.kbf", raw_root, create=False)
    assert s.list() == []
    with pytest.raises(StoreError):
        s.put("A", "v")
    assert not (tmp_path / "none.kbf").exists()


def test_failed_write_leaves_old_file_and_no_temp(
    file_store: EncryptedFileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    file_store.put("A", "before")
    before = file_store.path.read_bytes()

    def boom(*a: object, **k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StoreError) as e:
        file_store.put("A", "after")
    assert e.value.code == "store_full"
    monkeypatch.undo()
    assert file_store.path.read_bytes() == before
    leftovers = [p.name for p in file_store.path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    assert file_store.get("A").reveal() == "before"


def test_two_handles_see_each_others_writes(file_store: EncryptedFileStore, raw_root: RawRoot) -> None:
    other = EncryptedFileStore(file_store.path, raw_root)
    file_store.put("A", "1")
    other.put("A", "2")
    assert file_store.get("A").reveal() == "2"
    assert [v.version for v in file_store.versions("A")] == ["1", "2"]
