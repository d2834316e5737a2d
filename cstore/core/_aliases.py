"""Aliases: named pointers to a model's versions (``fraud@champion``), and what one points to.

An alias either follows the head (``"head"``) or is pinned to a snapshot version. A model
reference is ``name`` (the head) or ``name@alias``.

>>> parse_model_ref("fraud@champion")
('fraud', 'champion')
>>> parse_model_ref("fraud")
('fraud', None)
>>> parse_target("head"), parse_target("42"), parse_target(7)
(None, 42, 7)
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cstore.core._models import validate_name
from cstore.errors import ValidationError

ALIAS_RE = re.compile(r"^[a-z][a-z0-9_\-]{0,31}$")
HEAD = "head"


def validate_alias(alias: Any) -> str:
    if not isinstance(alias, str) or not ALIAS_RE.match(alias) or alias == HEAD:
        raise ValidationError(f"invalid alias {alias!r}: use 1-32 lower-case letters, digits, '_' or '-', "
                              f"starting with a letter (and not {HEAD!r}, which names the head itself)")
    return alias


def parse_model_ref(ref: Any) -> tuple[str, str | None]:
    """``"name"`` → ``(name, None)``; ``"name@alias"`` → ``(name, alias)``; both validated."""
    if not isinstance(ref, str):
        raise ValidationError(f"a model is named by a string ('fraud' or 'fraud@champion'), got {ref!r}")
    name, sep, alias = ref.partition("@")
    validate_name(name)
    if not sep:
        return name, None
    return name, validate_alias(alias)


def parse_target(target: Any) -> int | None:
    """What an alias is moved to: ``"head"`` → None (follow the head), else a snapshot version."""
    if target == HEAD:
        return None
    if isinstance(target, str) and target.isdigit():
        target = int(target)
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        raise ValidationError(f"an alias points to 'head' or to a snapshot version (a positive integer), "
                              f"got {target!r}; see `cstore model versions NAME`")
    return target


@dataclass(frozen=True)
class Alias:
    """One alias of a model, as stored (``pinned`` None: it follows the head)."""

    model: str
    alias: str
    rev: int
    pinned: int | None
    guard_json: str | None
    baseline: int | None
    guard_state: str | None
    moved_at: datetime | None
    moved_by: str | None
    reason: str | None

    @property
    def target(self) -> str:
        return HEAD if self.pinned is None else str(self.pinned)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "alias": self.alias, "target": self.target, "rev": self.rev,
                "guard": json.loads(self.guard_json) if self.guard_json else None, "baseline": self.baseline,
                "guard_state": self.guard_state, "moved_at": self.moved_at.isoformat() if self.moved_at else None,
                "moved_by": self.moved_by, "reason": self.reason}
