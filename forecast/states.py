"""The states of a model version in the registry, and which changes between them are allowed.

`forecast:model:states` holds a version's state; the current version (`forecast:model:current`)
and a version only stored have none. A version's life:

    stored ──publish/shadow──▶ CANDIDATE ──promote──▶ current
    current ──another one promoted──▶ PREVIOUS (shadowed: rollback evidence) ──settled──▶ stored
    current ──rolled back──▶ REJECTED          any non-current, unprotected ──retire──▶ RETIRED
"""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    """A version's state in `forecast:model:states` (its value is what Redis holds)."""

    CANDIDATE = "candidate"  # scored live in shadow, promoted on evidence
    PREVIOUS = "previous"  # the last current one, shadowed for rollback evidence
    REJECTED = "rejected"  # rolled back from
    RETIRED = "retired"  # blob removed (keep_versions), manifest kept

    def __str__(self) -> str:
        return self.value


CURRENT = "current"  # not a stored state: the version forecast:model:current names
STORED = "stored"  # not a stored state either: no entry in forecast:model:states
SHADOWED = (State.CANDIDATE, State.PREVIOUS)  # the states workers run in shadow
KEPT = (State.CANDIDATE, State.PREVIOUS)  # never retired

# old -> new: every change the registry makes
TRANSITIONS: dict[str, set[str]] = {
    STORED: {State.CANDIDATE, CURRENT, State.RETIRED},
    State.CANDIDATE: {CURRENT, STORED, State.RETIRED},
    CURRENT: {State.PREVIOUS, State.REJECTED, STORED},
    State.PREVIOUS: {CURRENT, STORED, State.RETIRED},
    State.REJECTED: {CURRENT, State.CANDIDATE, State.RETIRED, STORED},
    State.RETIRED: set(),
}


def parse(raw: str | bytes | None) -> State | None:
    """A state read from Redis (None: no state, or one this version does not know).

    >>> parse(b"candidate"), parse("retired"), parse(None), parse("x")
    (<State.CANDIDATE: 'candidate'>, <State.RETIRED: 'retired'>, None, None)
    """
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        return State(text) if text is not None else None
    except ValueError:
        return None


def allowed(old: str, new: str) -> bool:
    """Whether a version may go from `old` to `new` (CURRENT and STORED included).

    >>> allowed(State.CANDIDATE, CURRENT), allowed(State.RETIRED, CURRENT)
    (True, False)
    """
    return new in TRANSITIONS.get(old, set())
