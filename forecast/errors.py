"""The product's exception hierarchy: everything a user can cause derives from `ForecastError`.

The CLI turns any `ForecastError` into one line (`forecast: error: ...`) and exit code 2.
Library code raises the specific kind; only the CLI decides how it is shown.
"""

from __future__ import annotations


class ForecastError(Exception):
    """Base of every error the product raises on purpose."""


class UsageError(ForecastError):
    """A bad command-line argument, setting or file name."""


class DataError(ForecastError):
    """Training or input data that cannot be used (missing, malformed, too little)."""


class ModelRejected(ForecastError):
    """A model artifact failed a check (hash, signature, shape, probe, safe mode)."""


class RegistryError(ForecastError, LookupError):
    """An unknown model version, or nothing to roll back to."""


class ReplicasBehind(ForecastError):
    """Fewer replicas than asked confirmed a write within the timeout (WAIT)."""

    def __init__(self, confirmed: int, wanted: int, timeout_ms: int, pushed: int = 0) -> None:
        super().__init__(f"only {confirmed} of {wanted} replica(s) confirmed the write "
                         f"within {timeout_ms} ms")
        self.confirmed, self.wanted, self.timeout_ms = confirmed, wanted, timeout_ms
        self.pushed = pushed  # values written to the primary before the shortfall


class Fenced(ForecastError):
    """A shard's lease is no longer held by this worker (its writes are refused)."""

def error_code(exc: BaseException) -> str:
    """The leading code word of a Redis error reply, e.g. `NOGROUP` or `FENCED`.

    >>> error_code(Exception("NOGROUP No such key 'forecast:values'"))
    'NOGROUP'
    >>> error_code(Exception(""))
    ''
    """
    text = str(exc)
    return text.split(" ", 1)[0] if text else ""
