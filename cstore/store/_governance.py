"""Governance: aliases scorers follow, the guard on each alias, and the audit trail.

An alias (``fraud@champion``) follows the head or is pinned to a snapshot version. Every move is one
compare-and-set on the alias row (so two movers never both win) followed by a bump of the model's
head counter, which scorers poll anyway: they see the move within their refresh interval.

A guarded alias carries a rule (:class:`cstore.learn.GuardRule`) and a *baseline*: the snapshot
version it was last promoted to (a snapshot of the head is taken at that moment when it follows
the head). Workers learning the model score each labelled event with the head and the baseline
before learning it; when the head is worse by the rule's margin, a worker pins the alias to the
baseline (:meth:`Governance.trip`), the head keeps learning, and a reviewer moves the alias forward
again with :meth:`Governance.promote`, which refuses while the guard still fails unless forced.

Every action here, and the admin actions of the store (create, drop, snapshot, rollback), is
written to the audit trail with who (the Cassandra role and a free-form actor), when, from → to
and why.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from cstore.backend import Backend, Row
from cstore.core import HEAD, Alias, ModelInfo, op_time, parse_target, uuid_now, validate_alias
from cstore.errors import CstoreError, GuardFailing, UnknownAlias, ValidationError
from cstore.learn import GuardRule
from cstore.store._snapshots import actor as default_actor

KEEP = "keep"  # set_alias(guard=KEEP): leave the alias's guard as it is
KEYSPACE_AUDIT = "*"  # the audit trail of keyspace-wide actions (roles); never a model name
_MAX_AUDIT = 10_000


class Governance:
    """Aliases, guards and the audit trail of one store."""

    def __init__(self, backend: Backend, snapshot: Callable[[ModelInfo, str], int],
                 snapshot_exists: Callable[[ModelInfo, int], bool]) -> None:
        self._tables = backend.governance
        self._params = backend.params
        self._snapshot = snapshot
        self._snapshot_exists = snapshot_exists

    # -- audit ------------------------------------------------------------------------------------------
    def record(self, model: str, action: str, *, before: Any = None, after: Any = None, reason: str | None = None,
               details: Mapping[str, Any] | None = None, actor: str | None = None) -> None:
        """Append one entry to the model's audit trail."""
        self._tables.record(model, uuid_now(), action, actor or default_actor(),
                            None if before is None else str(before), None if after is None else str(after),
                            reason, json.dumps(dict(details), sort_keys=True, default=str) if details else None)

    def audit(self, model: str, limit: int = 100) -> list[dict[str, Any]]:
        """The model's audit trail, newest first (kept after the model is dropped)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_AUDIT:
            raise ValidationError(f"limit must be an integer in [1, {_MAX_AUDIT}], got {limit!r}")
        out = []
        for r in self._tables.audit(model, limit):
            out.append({"at": datetime.fromtimestamp(op_time(r["at"]), UTC).isoformat(),
                        "action": r["action"], "actor": r["actor"], "role": r["role"], "from": r["from_value"],
                        "to": r["to_value"], "reason": r["reason"],
                        "details": json.loads(r["details"]) if r["details"] else None})
        return out

    # -- aliases ----------------------------------------------------------------------------------------
    def aliases(self, info: ModelInfo) -> list[Alias]:
        return [_alias(info, r) for r in self._tables.aliases(info.model_id)]

    def alias(self, info: ModelInfo, alias: str, *, serial: bool = False) -> Alias:
        validate_alias(alias)
        row = self._tables.alias(info.model_id, alias, serial=serial)
        if row is None:
            known = ", ".join(a.alias for a in self.aliases(info)) or "none"
            raise UnknownAlias(f"model {info.name!r} has no alias {alias!r} (its aliases: {known}); create it with "
                               f"`cstore model alias {info.name} {alias} --to head|VERSION --reason TEXT`",
                               model=info.name, alias=alias)
        return _alias(info, row)

    def set_alias(self, info: ModelInfo, alias: str, target: Any, *, reason: str, guard: Any = KEEP,
                  force: bool = False, actor: str | None = None, action: str = "alias") -> Alias:
        """Create or move ``alias`` to ``target`` ("head" or a snapshot version); see the module doc."""
        validate_alias(alias)
        pinned = parse_target(target)
        reason = _reason(reason, force)
        rule = None if guard is None or guard == KEEP else _rule(guard)
        if pinned is not None and not self._snapshot_exists(info, pinned):
            raise ValidationError(f"model {info.name!r} has no snapshot at version {pinned}; an alias points to "
                                  f"'head' or to a snapshot (see `cstore model versions {info.name}`)")
        row = self._tables.alias(info.model_id, alias, serial=True)
        current = _alias(info, row) if row is not None else None
        if current is None and action == "promote":
            raise self._unknown(info, alias)
        guard_json = (current.guard_json if current else None) if guard == KEEP else (rule.to_json() if rule else None)
        forward = pinned is None or current is None or current.baseline is None or pinned > current.baseline
        if current is not None and current.guard_json and forward and not force:
            self._refuse_if_failing(info, current)  # moving back to the baseline or older is always allowed
        # The baseline a guard compares with: the version promoted to (a snapshot of the head, now).
        baseline = None
        if guard_json:
            baseline = pinned if pinned is not None else self._snapshot(info, f"baseline of @{alias}: {reason}")
        state = "passing" if guard_json else None
        now = datetime.now(UTC)
        who = actor or default_actor()
        if current is None:
            cas = self._tables.create_alias(info.model_id, alias, pinned, guard_json, baseline, state, now, who, reason)
        else:
            cas = self._tables.move_alias(info.model_id, alias, current.rev, pinned, guard_json, baseline, state, now,
                                          who, reason)
        if not cas.applied:
            raise CstoreError(f"alias {info.name}@{alias} was moved by someone else meanwhile (or the write timed "
                              f"out); look with `cstore model aliases {info.name}` and run the command again")
        self._params.bump_head(info.model_id)  # scorers poll the head counter: this makes them look
        self.record(info.name, action, before=f"@{alias}={current.target}" if current else None,
                    after=f"@{alias}={HEAD if pinned is None else pinned}", reason=reason, actor=who,
                    details={"guard": json.loads(guard_json) if guard_json else None, "baseline": baseline,
                             "forced": bool(force)})
        return self.alias(info, alias, serial=True)

    def promote(self, info: ModelInfo, alias: str, target: Any = HEAD, *, reason: str, force: bool = False,
                actor: str | None = None) -> Alias:
        """Move an existing alias forward after review; refused while its guard fails unless ``force``."""
        return self.set_alias(info, alias, target, reason=reason, force=force, actor=actor, action="promote")

    def remove_alias(self, info: ModelInfo, alias: str, *, reason: str, actor: str | None = None) -> None:
        current = self.alias(info, alias, serial=True)
        reason = _reason(reason, False)
        cas = self._tables.delete_alias(info.model_id, alias, current.rev)
        if not cas.applied:
            raise CstoreError(f"alias {info.name}@{alias} was moved meanwhile; look again and retry")
        self._params.bump_head(info.model_id)
        self.record(info.name, "alias", before=f"@{alias}={current.target}", after=None, reason=reason, actor=actor)

    def trip(self, info: ModelInfo, current: Alias, *, why: str, details: Mapping[str, Any], actor: str) -> bool:
        """The guard's action: pin ``current`` to its baseline iff nobody moved it since it was read."""
        if current.baseline is None:
            return False
        now = datetime.now(UTC)
        cas = self._tables.move_alias(info.model_id, current.alias, current.rev, current.baseline, current.guard_json,
                                      current.baseline, "tripped", now, actor, why)
        if not cas.applied:
            return False  # moved meanwhile (another worker's guard, or a reviewer): nothing to do here
        self._params.bump_head(info.model_id)
        self.record(info.name, "guard", before=f"@{current.alias}={current.target}",
                    after=f"@{current.alias}={current.baseline}", reason=why, actor=actor, details=details)
        return True

    # -- online metrics ---------------------------------------------------------------------------------
    def metrics(self, info: ModelInfo) -> list[dict[str, Any]]:
        """Per guarded alias: the workers' current windows summed (head vs baseline), and the verdict."""
        aliases = {a.alias: a for a in self.aliases(info) if a.guard_json}
        rows: dict[str, list[Row]] = {name: [] for name in aliases}
        for r in self._tables.metrics(info.model_id):
            a = aliases.get(r["alias"])
            if a is not None and r["baseline"] == a.baseline and r["labels"]:
                rows[r["alias"]].append(r)
        return [_combine(info, aliases[name], rs) for name, rs in sorted(rows.items())]

    def _refuse_if_failing(self, info: ModelInfo, current: Alias) -> None:
        m = next((m for m in self.metrics(info) if m["alias"] == current.alias), None)
        if m is not None and m["failing"]:
            raise GuardFailing(
                f"the guard of {info.name}@{current.alias} fails: over the last {m['labels']} labels the head's log "
                f"loss is worse than baseline version {current.baseline}'s by {m['regression']:.4f} "
                f"(> {m['rule']['max_regression']}); nothing was moved. Wait for the head to recover, or force "
                f"it with a reason (--force --reason TEXT)", model=info.name, alias=current.alias,
                regression=m["regression"], labels=m["labels"])

    def _unknown(self, info: ModelInfo, alias: str) -> UnknownAlias:
        return UnknownAlias(f"model {info.name!r} has no alias {alias!r} to promote; create it first with "
                            f"`cstore model alias {info.name} {alias} --to head|VERSION --reason TEXT`",
                            model=info.name, alias=alias)


def _combine(info: ModelInfo, alias: Alias, rows: list[Row]) -> dict[str, Any]:
    rule = GuardRule.from_json(alias.guard_json or "{}")
    labels = sum(r["labels"] for r in rows)
    out: dict[str, Any] = {"model": info.name, "alias": alias.alias, "target": alias.target,
                           "baseline": alias.baseline, "guard_state": alias.guard_state,
                           "rule": json.loads(rule.to_json()), "labels": labels,
                           "positives": sum(r["positives"] for r in rows), "workers": len(rows)}
    for side in ("head", "base"):
        out[f"{side}_log_loss"] = _weighted(rows, f"{side}_log_loss", labels)
        out[f"{side}_auc"] = _weighted(rows, f"{side}_auc", labels)
    regression = None
    if labels and out["head_log_loss"] is not None and out["base_log_loss"] is not None:
        regression = out["head_log_loss"] - out["base_log_loss"]
    out["regression"] = regression
    out["failing"] = bool(regression is not None and labels >= rule.min_labels and regression > rule.max_regression)
    return out


def _weighted(rows: list[Row], column: str, labels: int) -> float | None:
    """A mean over workers weighted by their labels (AUC so combined is an approximation, said in docs)."""
    have = [(r[column], r["labels"]) for r in rows if r[column] is not None]
    if not have or not labels:
        return None
    return sum(v * n for v, n in have) / sum(n for _, n in have)


def _alias(info: ModelInfo, row: Row) -> Alias:
    return Alias(info.name, row["alias"], row["rev"], row["pinned_version"], row["guard"], row["baseline"],
                 row["guard_state"], row["moved_at"], row["moved_by"], row["reason"])


def _reason(reason: Any, force: bool) -> str:
    if not isinstance(reason, str) or not reason.strip():
        what = "a forced move" if force else "moving an alias"
        raise ValidationError(f"{what} needs a reason (the audit trail records it): --reason TEXT")
    if len(reason) > 2000:
        raise ValidationError(f"a reason is at most 2000 characters, got {len(reason)}")
    return reason.strip()


def _rule(guard: Any) -> GuardRule:
    if isinstance(guard, GuardRule):
        return guard
    if isinstance(guard, str):
        return GuardRule.from_json(guard)
    return GuardRule.from_dict(dict(guard) if isinstance(guard, Mapping) else guard)
