"""Fuzzing the input parser: it never raises and accepts exactly the documented grammar.

The oracle below is an independent, character-by-character reading of the README's input
table: `series` non-empty UTF-8, at most 256 bytes, no control characters (Unicode Cc);
`value` a finite decimal number (`[+-]digits[.digits][e[+-]digits]` or `[+-].digits...`),
no nan/inf/hex/underscores/spaces, at most 64 bytes; optional `ts` of 1 to 15 ASCII digits
(and, like `value`, at most FORECAST_MAX_VALUE_BYTES long).
A repeated `series`, `value` or `ts` field is `duplicate_field`; other fields are ignored.
"""

from __future__ import annotations

import math
import unicodedata

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forecast.grammar import REASONS, Limits, parse_fields

LIMITS = Limits()
DIGITS = b"0123456789"
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _digits(s: bytes, i: int) -> int:
    """Index after the run of ASCII digits starting at i."""
    while i < len(s) and s[i] in DIGITS:
        i += 1
    return i


def is_decimal(s: bytes) -> bool:
    """The README's number grammar, as a hand-written scanner."""
    i = 1 if s[:1] in (b"+", b"-") else 0
    j = _digits(s, i)
    mantissa = j > i
    if j < len(s) and s[j:j + 1] == b".":
        k = _digits(s, j + 1)
        mantissa = mantissa or k > j + 1
        j = k
    if not mantissa:
        return False
    if j < len(s) and s[j:j + 1] in (b"e", b"E"):
        k = j + 1 + (1 if s[j + 1:j + 2] in (b"+", b"-") else 0)
        end = _digits(s, k)
        if end == k:
            return False
        j = end
    return j == len(s)


def oracle(fields: list[bytes], limits: Limits = LIMITS) -> tuple[bytes, float, int, int] | str:
    """What the documented grammar says about an entry."""
    named: dict[bytes, list[bytes]] = {}
    for name, raw in zip(fields[0::2], fields[1::2], strict=False):
        named.setdefault(name, []).append(raw)
    if any(len(named.get(n, [])) > 1 for n in (b"series", b"value", b"ts", b"seq")):
        return "duplicate_field"
    series, value, ts, seq = (named[n][0] if n in named else None
                              for n in (b"series", b"value", b"ts", b"seq"))
    if series is None:
        return "missing_series"
    if series == b"":
        return "empty_series"
    if len(series) > limits.max_series_bytes:
        return "series_too_long"
    try:
        text = series.decode("utf-8")
    except UnicodeDecodeError:
        return "bad_series"
    if any(unicodedata.category(c) == "Cc" for c in text):
        return "bad_series"
    if value is None:
        return "missing_value"
    if len(value) > limits.max_value_bytes:
        return "value_too_long"
    if not is_decimal(value):
        return "bad_value"
    number = float(value.decode("ascii"))
    if not math.isfinite(number):
        return "value_not_finite"
    if abs(number) > 1e30:  # README: at most 1e30 in absolute value
        return "value_out_of_range"
    stamp = -1
    if ts is not None:
        if not (1 <= len(ts) <= min(15, limits.max_value_bytes)
                and all(b in DIGITS for b in ts)):
            return "bad_ts"
        stamp = int(ts)
    if seq is None:
        return series, number, stamp, -1
    if not (1 <= len(seq) <= 18 and all(b in DIGITS for b in seq)):  # README: an int64
        return "bad_seq"
    return series, number, stamp, int(seq)


# --- strategies ----------------------------------------------------------------------------

NUMBER = st.from_regex(
    rb"\A[+-]?(?:[0-9]{1,20}(?:\.[0-9]{0,10})?|\.[0-9]{1,10})(?:[eE][+-]?[0-9]{1,4})?\Z")
TRICKY = st.sampled_from([
    b"nan", b"NaN", b"inf", b"-inf", b"Infinity", b"1e999", b"-1e999", b"1e-999", b"0x10",
    b"1_000", b" 1", b"1 ", b"\t1", b"1\n", b"1,5", b"", b".", b"+", b"-", b"e5", b"1e", b"1e+",
    b"--1", b"+-1", b"1.2.3", b"\x00", b"\xff", "\u0661\u0662".encode(), "\u22121".encode(),
    b"1" * 65, b"0" * 64, b"9" * 64, b"1e308", b"2e308", b"1e30", b"-1e30", b"1.0000001e30",
    b"3e38", b"3.5e38", b"-0", b"00", b"0.", b".0",
])
VALUE = st.one_of(NUMBER, TRICKY, st.binary(max_size=70),
                  st.text(alphabet="0123456789+-.eE ,_xinfa", max_size=12).map(str.encode))
SERIES = st.one_of(
    st.text(min_size=0, max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=40),
    st.sampled_from([b"", b"s" * 256, b"s" * 257, ("\u00e9" * 128).encode(), "\u0085".encode(),
                     "a\u2028b".encode(), b"\x7f", "\u00e9".encode()[:1]]),
)
TS = st.one_of(st.integers(0, 10**15 - 1).map(lambda n: str(n).encode()),
               st.sampled_from([b"", b"-5", b"1.5", b"1e3", b"0x10", b" 5", b"1" * 16, b"\xff"]),
               st.binary(max_size=20))
SEQ = st.one_of(st.integers(0, 10**18 - 1).map(lambda n: str(n).encode()),
                st.sampled_from([b"", b"-1", b"1.0", b"1" * 19, b"0", b" 1", b"\xff"]))
NAME = st.sampled_from([b"series", b"value", b"ts", b"seq", b"extra", b"Series", b"\xff", b""])


@st.composite
def entries(draw: st.DrawFn) -> list[bytes]:
    """Entries of mostly plausible fields, sometimes repeated, missing or extra, any order."""
    pairs: list[tuple[bytes, bytes]] = []
    if draw(st.integers(0, 9)):
        pairs.append((b"series", draw(SERIES)))
    if draw(st.integers(0, 9)):
        pairs.append((b"value", draw(VALUE)))
    if draw(st.booleans()):
        pairs.append((b"ts", draw(TS)))
    if draw(st.booleans()):
        pairs.append((b"seq", draw(SEQ)))
    for _ in range(draw(st.integers(0, 3))):
        name = draw(NAME)
        gen = {b"series": SERIES, b"value": VALUE, b"ts": TS, b"seq": SEQ}.get(
            name, st.binary(max_size=8))
        pairs.append((name, draw(gen)))
    pairs = draw(st.permutations(pairs))
    flat = [b for pair in pairs for b in pair]
    if draw(st.integers(0, 9)) == 0:
        flat.append(draw(st.binary(max_size=5)))  # a dangling odd field is ignored
    return flat


# --- properties ----------------------------------------------------------------------------

@FUZZ
@given(st.lists(st.binary(max_size=30), max_size=12))
def test_never_raises_on_arbitrary_fields(fields: list[bytes]) -> None:
    """Any list of byte strings gives a parse or one of the documented reasons."""
    result = parse_fields(fields)
    assert isinstance(result, tuple) or result in REASONS
    assert result == oracle(fields)


@FUZZ
@given(entries())
def test_accepts_exactly_the_documented_grammar(fields: list[bytes]) -> None:
    """The parser and the oracle agree on every generated entry, reason included."""
    assert parse_fields(fields) == oracle(fields)


@FUZZ
@given(NUMBER, st.text(min_size=1, max_size=30).filter(
    lambda t: not any(unicodedata.category(c) == "Cc" for c in t)),
    st.one_of(st.none(), st.integers(0, 10**15 - 1)))
def test_valid_entries_round_trip(value: bytes, series: str, ts: int | None) -> None:
    """A well-formed entry parses to its own series, float value and ts."""
    fields = [b"series", series.encode(), b"value", value]
    if ts is not None:
        fields += [b"ts", str(ts).encode()]
    result = parse_fields(fields)
    if len(value) <= 64 and abs(float(value)) <= 1e30:
        assert result == (series.encode(), float(value), -1 if ts is None else ts, -1)
    else:
        assert result in ("value_too_long", "value_not_finite", "value_out_of_range")


@FUZZ
@given(st.integers(1, 300), st.integers(1, 80), entries())
def test_limits_are_respected(max_series: int, max_value: int, fields: list[bytes]) -> None:
    """Configured size caps move the boundary exactly where the oracle puts it."""
    limits = Limits(max_series_bytes=max_series, max_value_bytes=max_value)
    assert parse_fields(fields, limits) == oracle(fields, limits)


def test_oracle_itself_on_known_cases() -> None:
    """The oracle is checked against hand-picked cases (so agreement means something)."""
    good = [b"7", b"-1.5", b"2.5e3", b"+3", b"3.", b".5", b"1E-2", b"-0", b"1e-999"]
    bad = [b"nan", b"inf", b"0x10", b"1_000", b" 1", b"1e", b".", b"", b"--1", b"1.2.3"]
    assert all(is_decimal(v) for v in good)
    assert not any(is_decimal(v) for v in bad)
    assert oracle([b"series", b"s", b"value", b"1e999"]) == "value_not_finite"
    assert oracle([b"series", "a\u0085".encode(), b"value", b"1"]) == "bad_series"
    assert oracle([b"value", b"1", b"series", b"s", b"ts", b"0"]) == (b"s", 1.0, 0, -1)
    assert oracle([b"series", b"s", b"value", b"1", b"seq", b"9" * 18]) == (b"s", 1.0, -1,
                                                                            10**18 - 1)
    assert oracle([b"series", b"s", b"value", b"1", b"seq", b"9" * 19]) == "bad_seq"
    assert oracle([b"series", b"s", b"series", b"s", b"value", b"1"]) == "duplicate_field"
