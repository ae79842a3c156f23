"""The wire's value encoding: what a call's arguments and result may hold, and its errors."""

from __future__ import annotations

import datetime
import decimal
import math
import zoneinfo
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_engine.enforcement.wire import (
    LIMITS,
    MAX_NUMBER_DIGITS,
    VALUE_TAGS,
    Ready,
    Result,
    WireError,
    decode_json,
    decode_value,
    decode_worker_message,
    encode_frame,
    encode_value,
)
from policy_engine.errors import ChannelValueError


def cross(value: Any, where: str = "result") -> Any:
    """Encode, send as a frame's bytes, decode strictly: what the other side gets."""
    payload = encode_frame({"op": "result", "value": encode_value(value, where, depth=2)})[4:]
    message = decode_worker_message(payload)
    assert isinstance(message, Result)
    return message.value


PARIS = zoneinfo.ZoneInfo("Europe/Paris")
VALUES: list[Any] = [
    b"\x00\xff bytes", bytearray(b"ba"), memoryview(b"mv"), (1, (2, "x")), (), {1, 2},
    frozenset({"a", (1, 2)}), {1: "int key", (1, 2): "tuple key", None: 0},
    {"$looks": "like a tag"}, {"$a": 1, "$b": 2}, 2**64, -(2**200), math.inf, -math.inf,
    decimal.Decimal("1.10"), decimal.Decimal("-0"), datetime.datetime(2024, 2, 29, 12, 0, 1, 5),
    datetime.datetime(2024, 7, 1, 8, tzinfo=PARIS), datetime.date(1, 1, 1),
    datetime.time(23, 59, 59, 999999), datetime.timedelta(days=-3, microseconds=7),
    {"nested": [{"deep": ({b"k"}, frozenset())}]},
]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_values_json_cannot_say_cross_as_themselves(value: Any) -> None:
    expected = bytes(value) if isinstance(value, (bytearray, memoryview)) else value
    got = cross(value)
    assert got == expected and type(got) is type(expected)


def test_nan_crosses_and_aware_datetimes_keep_their_offset() -> None:
    assert math.isnan(cross(math.nan))
    got = cross(datetime.datetime(2024, 7, 1, 8, tzinfo=PARIS))
    assert got.utcoffset() == datetime.timedelta(hours=2)


def test_subclasses_cross_as_their_base_type() -> None:
    import collections
    import enum

    class Colour(enum.IntEnum):
        RED = 1

    Point = collections.namedtuple("Point", "x y")
    assert cross([Colour.RED, Point(1, 2), collections.OrderedDict(a=1)]) == [1, (1, 2), {"a": 1}]
    assert type(cross(Colour.RED)) is int


def test_json_values_are_sent_unchanged() -> None:
    value = {"a": [1, 2.5, None, True, "x"], "b": {}}
    assert encode_value(value) == value


@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    | st.binary() | st.decimals(allow_nan=False) | st.datetimes() | st.dates()
    | st.timedeltas(),
    lambda inner: st.lists(inner) | st.tuples(inner, inner)
    | st.dictionaries(st.text() | st.integers(), inner)
    | st.frozensets(st.integers() | st.text()),
    max_leaves=20))
@settings(max_examples=200, deadline=None)
def test_every_encodable_value_round_trips(value: Any) -> None:
    assert cross(value) == value


def where_of(value: Any, where: str = "result") -> ChannelValueError:
    with pytest.raises(ChannelValueError) as info:
        encode_value(value, where, depth=2)
    return info.value


def test_an_unencodable_value_names_its_type_and_where_it_was() -> None:
    class Thing:
        pass

    error = where_of({"a": [1, 2, Thing()]})
    assert error.where == 'result["a"][2]'
    assert error.value_type.endswith("Thing")
    assert str(error).startswith(f"`{error.value_type}` at `result[\"a\"][2]` cannot cross")
    assert isinstance(error, TypeError)
    assert where_of({1: {"k": object()}}).where == 'result[1]["k"]'
    assert where_of([(1, object())], "args").where == "args[0][1]"
    assert where_of({object(): 1}).where == "a key of result"


def test_limits_are_checked_before_anything_is_sent() -> None:
    assert "characters" in str(where_of(["x" * (LIMITS.string_chars + 1)]))
    assert "bytes are over" in str(where_of({"b": b"x" * LIMITS.string_chars}))
    assert "items" in str(where_of([0] * (LIMITS.list_items + 1)))
    deep: Any = []
    for _ in range(LIMITS.nesting):
        deep = [deep]
    assert "nests deeper" in str(where_of(deep))
    loop: list[Any] = []
    loop.append(loop)
    assert "nests deeper" in str(where_of(loop))
    assert "digits" in str(where_of(10 ** (MAX_NUMBER_DIGITS + 1)))


def test_an_encoded_frame_stays_within_the_wire_nesting_limit() -> None:
    deep: Any = ()
    for _ in range(LIMITS.nesting // 2 - 2):
        deep = (deep,)
    decode_json(encode_frame(Result(deep).encode())[4:])  # does not raise
    with pytest.raises(ChannelValueError):
        Result(((deep,),)).encode()


@pytest.mark.parametrize("bad", [
    {"$nope": 1}, {"$bytes": "not base64!"}, {"$bytes": "QQ"}, {"$bytes": 3},
    {"$tuple": "x"}, {"$set": [[1]]}, {"$frozenset": [{"a": 1}]}, {"$dict": [[1]]},
    {"$dict": [[1, 2], [1, 3]]}, {"$dict": [[[1], 2]]}, {"$int": "1.5"}, {"$int": " 1"},
    {"$int": "9" * (MAX_NUMBER_DIGITS + 2)}, {"$float": "NaN"}, {"$decimal": "one"},
    {"$datetime": "yesterday"}, {"$date": "2024-02-30"}, {"$time": "x" * 100},
    {"$timedelta": [1, 2]}, {"$timedelta": [10**12, 0, 0]}, {"$timedelta": [1, 2, 3.0]},
    [{"ok": {"$tuple": [{"$bogus": None}]}}],
])
def test_decoding_is_strict(bad: Any) -> None:
    with pytest.raises(WireError):
        decode_value(bad, "result")


def test_a_decoding_error_says_where() -> None:
    with pytest.raises(WireError, match=r"`\$bogus` at `result\[0\]\[\"ok\"\]`"):
        decode_value([{"ok": {"$bogus": 1}}], "result")


def test_ready_carries_initialize_result_encoded() -> None:
    from policy_engine.enforcement.wire import PROTOCOL_VERSION, IsolationReport

    report = IsolationReport("full", 6, True, True, False, ())
    ready = Ready(PROTOCOL_VERSION, 7, report, {"since": datetime.date(2024, 1, 1)})
    got = decode_worker_message(encode_frame(ready.encode())[4:])
    assert isinstance(got, Ready) and got.init_result == {"since": datetime.date(2024, 1, 1)}


def test_every_tag_is_documented() -> None:
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    for tag in VALUE_TAGS:
        assert f"`{{\"{tag}\"" in readme, tag
