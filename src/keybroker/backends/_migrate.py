"""Copy every secret from one store to another: dry run, progress, resumable, a report.

Per secret, the plan is the sequence of values to write: the readable versions oldest first,
ending with ``current`` (when both stores keep versions; otherwise just the current value), then
``pending`` where both stores have that stage. Resuming is safe twice over:

- the state file lists the names finished (copied or found up to date); they are not touched;
- writes are idempotent by content: before writing, the target's own versions are compared with
  the plan, and only the part of the plan the target does not already end with is written. A
  write that was applied just before a crash (and so never made it into the state file) is
  therefore not written again: every version arrives exactly once.

Nothing is ever deleted or changed at the source. Reasons in the report are error codes and
messages, which never contain values. A store that becomes unreachable (or refuses our
credentials) stops the run: the report says it was interrupted and the same command with the
same state file picks up where it stopped. Other per-secret failures (a name the target does not
accept, a permission missing for one secret) are reported and the run goes on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keybroker.backends._base import KeyStore
from keybroker.backends._fs import atomic_write
from keybroker.crypto import SecretValue
from keybroker.errors import (
    AuthenticationError,
    InvalidInput,
    KeybrokerError,
    SecretDeleted,
    SecretNotFound,
    StoreError,
    VersionNotFound,
)

__all__ = ["MigrationItem", "MigrationReport", "Progress", "migrate"]

STATE_FORMAT = "keybroker-migration/1"

#: ``progress(done, total, name)`` after each secret (and once with done=0 before the first).
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True, slots=True)
class MigrationItem:
    name: str
    status: str  # copied | skipped | failed | would-copy
    versions: int = 0  # versions written (or that would be written)
    reason: str = ""


@dataclass
class MigrationReport:
    source: str
    target: str
    dry_run: bool
    total: int = 0
    items: list[MigrationItem] = field(default_factory=list)
    interrupted: str | None = None

    def _with(self, status: str) -> list[MigrationItem]:
        return [i for i in self.items if i.status == status]

    @property
    def copied(self) -> list[MigrationItem]:
        return self._with("would-copy" if self.dry_run else "copied")

    @property
    def skipped(self) -> list[MigrationItem]:
        return self._with("skipped")

    @property
    def failed(self) -> list[MigrationItem]:
        return self._with("failed")

    @property
    def versions_written(self) -> int:
        return sum(i.versions for i in self.copied)

    @property
    def ok(self) -> bool:
        return not self.failed and self.interrupted is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "dry_run": self.dry_run,
            "total": self.total,
            "copied": len(self.copied),
            "versions_written": self.versions_written,
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "interrupted": self.interrupted,
            "items": [
                {"name": i.name, "status": i.status, "versions": i.versions, "reason": i.reason}
                for i in self.items
            ],
        }


class _State:
    """Which names are finished, in a JSON file replaced atomically after each secret."""

    def __init__(self, path: Path | None, source: str, target: str) -> None:
        self.path = path
        self.done: dict[str, str] = {}
        self.source, self.target = source, target
        if path is None or not path.exists():
            return
        try:
            doc = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"the state file {path} cannot be read: delete it to start over") from exc
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise InvalidInput(f"{path} is not a keybroker migration state file")
        if doc.get("source") != source or doc.get("target") != target:
            raise InvalidInput(
                f"the state file {path} belongs to another migration "
                f"({doc.get('source')} -> {doc.get('target')}): use a new state file"
            )
        self.done = {str(k): str(v) for k, v in (doc.get("done") or {}).items()}

    def mark(self, name: str, status: str) -> None:
        self.done[name] = status
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        doc = {
            "format": STATE_FORMAT,
            "source": self.source,
            "target": self.target,
            "updated_at": datetime.now(UTC).isoformat(),
            "done": self.done,
        }
        atomic_write(self.path, json.dumps(doc, indent=1, sort_keys=True).encode("utf-8"))


class _Abort(Exception):
    def __init__(self, item: MigrationItem, why: str) -> None:
        self.item, self.why = item, why


def _fatal(exc: KeybrokerError) -> bool:
    """Errors after which going on makes no sense: the store is gone or refuses us."""
    return isinstance(exc, StoreError | AuthenticationError)


def _reason(exc: KeybrokerError) -> str:
    return f"{exc.code}: {exc.message}"


def _plan(source: KeyStore, name: str, with_versions: bool) -> tuple[list[SecretValue], SecretValue | None]:
    """(values to write as current, oldest first; the pending value or None)."""
    if not with_versions:
        return [source.get(name)], None
    infos = [v for v in source.versions(name) if v.readable]
    current = [v for v in infos if "current" in v.labels]
    pending = [v for v in infos if "pending" in v.labels and "current" not in v.labels]
    if not current:
        raise SecretDeleted(f"secret {name!r} has no readable current version at the source")
    rest = [v for v in infos if v not in current and v not in pending]
    seq: list[SecretValue] = []
    for v in [*rest, current[-1]]:
        try:
            seq.append(source.get(name, version=v.version))
        except VersionNotFound:
            continue  # deleted or destroyed since it was listed
    pend = None
    if pending:
        try:
            pend = source.get(name, version=pending[-1].version)
        except VersionNotFound:
            pend = None
    return seq, pend


def _target_values(target: KeyStore, name: str, with_versions: bool) -> list[SecretValue]:
    """The values the target holds for ``name`` as current, oldest first ([] if none)."""
    try:
        if not with_versions:
            return [target.get(name)]
        infos = [v for v in target.versions(name) if v.readable and "pending" not in v.labels]
        out = []
        for v in infos:
            try:
                out.append(target.get(name, version=v.version))
            except VersionNotFound:
                continue
        return out
    except (SecretNotFound, VersionNotFound):
        return []


def _overlap(have: list[SecretValue], plan: list[SecretValue]) -> int:
    """Largest k such that the target's history ends with the first k values of the plan."""
    for k in range(min(len(have), len(plan)), 0, -1):
        if have[len(have) - k :] == plan[:k]:
            return k
    return 0


def _target_pending(target: KeyStore, name: str) -> SecretValue | None:
    try:
        return target.get(name, label="pending")
    except (SecretNotFound, VersionNotFound):
        return None


def migrate(
    source: KeyStore,
    target: KeyStore,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    state_file: str | Path | None = None,
    prefix: str = "",
    with_versions: bool = True,
) -> MigrationReport:
    """Copy every secret of ``source`` (under ``prefix``) into ``target``; see the module doc.

    Raises InvalidInput (target read-only, same store twice, a state file of another
    migration) and, before anything is copied, the source's errors from listing it. Once copying
    has started, errors land in the report instead."""
    if not target.capabilities.writable and not dry_run:
        raise InvalidInput(f"{target.location()} is read-only: it cannot be a migration target")
    src_loc, dst_loc = source.location(), target.location()
    if src_loc == dst_loc:
        raise InvalidInput("the source and the target are the same store")
    versions = with_versions and source.capabilities.versions and target.capabilities.versions
    pending_ok = "pending" in target.capabilities.labels
    state = _State(Path(state_file) if state_file is not None and not dry_run else None, src_loc, dst_loc)
    names = source.list(prefix)
    report = MigrationReport(src_loc, dst_loc, dry_run, total=len(names))
    if progress:
        progress(0, len(names), "")
    for done, name in enumerate(names, start=1):
        try:
            report.items.append(_one(source, target, name, state, dry_run, versions, pending_ok))
        except _Abort as ab:
            report.items.append(ab.item)
            report.interrupted = ab.why
            break
        finally:
            if progress:
                progress(done, len(names), name)
    return report


def _one(
    source: KeyStore,
    target: KeyStore,
    name: str,
    state: _State,
    dry_run: bool,
    versions: bool,
    pending_ok: bool,
) -> MigrationItem:
    if name in state.done:
        return MigrationItem(name, "skipped", reason="finished in an earlier run (state file)")
    # -- read the source --------------------------------------------------------------------
    try:
        seq, pend = _plan(source, name, versions)
    except (SecretNotFound, SecretDeleted) as exc:
        return MigrationItem(name, "skipped", reason=f"not readable at the source ({exc.code})")
    except KeybrokerError as exc:
        item = MigrationItem(name, "failed", reason="reading the source: " + _reason(exc))
        if _fatal(exc):
            raise _Abort(item, f"the source failed: {_reason(exc)}") from exc
        return item
    if not seq:
        return MigrationItem(name, "skipped", reason="no readable version at the source")
    notes = []
    if pend is not None and not pending_ok:
        notes.append("pending version not copied (the target has no pending stage)")
        pend = None
    # -- compare with the target ----------------------------------------------------------
    try:
        if not versions:
            have = _target_values(target, name, False)
            todo = [] if have and have[-1] == seq[-1] else [seq[-1]]
        else:
            have = _target_values(target, name, True)
            todo = seq[_overlap(have, seq) :]
        pend_todo = pend is not None and _target_pending(target, name) != pend
    except KeybrokerError as exc:
        item = MigrationItem(name, "failed", reason="reading the target: " + _reason(exc))
        if _fatal(exc):
            raise _Abort(item, f"the target failed: {_reason(exc)}") from exc
        return item
    count = len(todo) + (1 if pend_todo else 0)
    if count == 0:
        if not dry_run:
            state.mark(name, "up-to-date")
        return MigrationItem(name, "skipped", reason="; ".join(["the target already holds it", *notes]))
    if dry_run:
        return MigrationItem(name, "would-copy", count, "; ".join(notes))
    # -- write (never retried: see RetryPolicy) ---------------------------------------------
    written = 0
    try:
        for value in todo:
            target.put(name, value)
            written += 1
        if pend_todo and pend is not None:
            target.put(name, pend, label="pending")
            written += 1
    except KeybrokerError as exc:
        item = MigrationItem(
            name,
            "failed",
            written,
            reason=f"writing to the target after {written} version(s): {_reason(exc)}",
        )
        if _fatal(exc):
            raise _Abort(item, f"the target failed: {_reason(exc)}") from exc
        return item
    state.mark(name, "copied")
    return MigrationItem(name, "copied", written, "; ".join(notes))
