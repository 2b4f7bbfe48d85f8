"""The wire protocol without sockets: framing, HELLO, channel rules, the SYNC barrier, partition.

Everything here is plain Python state driven directly, as the channel loop drives it; a header
that breaks a rule must raise ProtocolError (never another exception type), because the
channel loop only turns ProtocolError into a clean FAULT for the peer.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.wire import framing, jobs, protocol
from engine.coordinator.barrier import SyncBarrier
from engine.errors import CorruptPayload, ProtocolError
from engine.wire.framing import MAX_HEADER_BYTES, decode, encode
from engine.coordinator.partition import chunk_spans, list_packets, range_packets, runs_bytes
from engine.wire.protocol import (MAGIC, SESSION_BYTES, VERSION, Ack, ChannelRules, Complete, Hello,
                             Init, Packet, Sync, checksum, check_hello, new_hello)
from engine.settings import PAGE_SIZE, TransferSettings
from engine.coordinator.processes import check_codecs, handler_names

SESSION = bytes(range(SESSION_BYTES))
# names it, so that the test cannot pass as 'expected failure' for any other reason.
OTHER_SESSION = bytes(reversed(range(SESSION_BYTES)))


def accept(hello: Hello, **limits) -> TransferSettings:
    """check_hello as our receiver calls it: with our workers' handlers and codecs."""
    return check_hello(hello, handler_names(), check_codecs, **limits)


# -- every registered message, found by looking, so a new one is covered automatically ------

def _messages_in(module: types.ModuleType) -> list[type]:
    return [obj for obj in vars(module).values()
            if isinstance(obj, type) and obj.__module__ == module.__name__
            and isinstance(getattr(obj, "TAG", None), str)]


MESSAGES = _messages_in(protocol) + _messages_in(jobs)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _required(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def sample_value(hint: Any) -> Any:
    """One plausible value of a field's declared type."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return sample_value(next(a for a in typing.get_args(hint) if a is not type(None)))
    if origin is list:
        (item,) = typing.get_args(hint)
        return [sample_value(item), sample_value(item)]
    if origin is dict:
        _, item = typing.get_args(hint)
        return {"first": sample_value(item), "second": sample_value(item)}
    return {str: "text", int: 7, bool: True, bytes: b"\x00\x01" * 8, float: 1.5,
            Any: {"runs": [[0, 1]], "zero": b"\x00", "nested": [None, 2.5, "x"]}}[hint]


def sample_message(cls: type) -> Any:
    return cls(**{name: sample_value(hint) for name, hint in _hints(cls).items()})


def _raw(tag: str, fields: dict) -> bytes:
    return msgpack.packb([tag, fields], use_bin_type=True)


def _fields(msg: Any) -> dict[str, Any]:
    return {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}


def test_the_message_list_found_the_wire_and_ipc_messages():
    tags = {cls.TAG for cls in MESSAGES}
    assert {"hello", "welcome", "init", "pkt", "sync", "ack", "fault", "complete", "verdict",
            "w.job", "w.sync", "w.notice", "w.hashed", "w.failure"} <= tags
    assert tags == set(framing._TYPES), "a registered message lives outside protocol/jobs"


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.TAG)
def test_every_message_survives_encode_and_decode(cls):
    msg = sample_message(cls)
    data = encode(msg)
    assert decode(data) == msg
    assert decode(data, cls) == msg
    assert decode(memoryview(data), cls) == msg  # zmq hands over buffers, not bytes


# Values of each declared type, as the peer could send them (bounded by decode's limits).
_LEAF = (st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1)
         | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20))
_ANY = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


def strategy_for(hint: Any) -> st.SearchStrategy:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return st.one_of(*(strategy_for(a) for a in typing.get_args(hint)))
    if hint is type(None):
        return st.none()
    if origin is list:
        (item,) = typing.get_args(hint)
        return st.lists(strategy_for(item), max_size=6)
    if origin is dict:
        key, item = typing.get_args(hint)
        return st.dictionaries(strategy_for(key), strategy_for(item), max_size=6)
    return {str: st.text(max_size=40), int: st.integers(-(1 << 63), (1 << 64) - 1),
            bool: st.booleans(), bytes: st.binary(max_size=40),
            float: st.floats(allow_nan=False), Any: _ANY}[hint]


@st.composite
def any_message(draw):
    cls = draw(st.sampled_from(MESSAGES))
    return cls(**{name: draw(strategy_for(hint)) for name, hint in _hints(cls).items()})


@settings(max_examples=200, deadline=None)
@given(any_message())
def test_any_well_typed_message_round_trips(msg):
    assert decode(encode(msg), type(msg)) == msg


def test_a_field_with_a_default_may_be_left_out():
    hello = new_hello(SESSION, 4096, TransferSettings(), ["ram"])
    fields = _fields(hello)
    del fields["resume"]
    assert decode(_raw("hello", fields), Hello).resume is False


# -- what decode refuses --------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\x92", b"\x92\xa4sync", b"\xff" * 64, bytes(range(256)),
    encode(Ack(seq=1)) + b"\x00",        # trailing bytes after the header
    encode(Ack(seq=1))[:-1],             # truncated header
], ids=["empty", "reserved-byte", "truncated-array", "truncated-map", "ff", "all-bytes",
        "trailing-byte", "truncated-message"])
def test_decode_refuses_bytes_that_are_not_a_message(data):
    with pytest.raises(ProtocolError):
        decode(data)


@pytest.mark.parametrize("top", [
    {"tag": "ack"}, 5, "ack", None, b"ack", ["ack"], ["ack", {"seq": 1}, "extra"],
    [1, {"seq": 1}], ["ack", ["seq", 1]], ["ack", None], [b"ack", {"seq": 1}],
], ids=repr)
def test_decode_refuses_anything_but_a_tag_and_fields_pair(top):
    with pytest.raises(ProtocolError):
        decode(msgpack.packb(top, use_bin_type=True))


def test_decode_refuses_an_unknown_tag():
    with pytest.raises(ProtocolError, match="unexpected message"):
        decode(_raw("no-such-message", {}))


def test_decode_refuses_a_known_message_that_is_not_expected_here():
    data = encode(Ack(seq=1))
    assert decode(data, Ack) == Ack(seq=1)
    with pytest.raises(ProtocolError, match="wanted pkt, sync"):
        decode(data, Packet, Sync)


_WITH_FIELDS = [cls for cls in MESSAGES if _required(cls)]


@pytest.mark.parametrize("cls", _WITH_FIELDS, ids=lambda c: c.TAG)
def test_decode_refuses_a_missing_field(cls):
    for name in _required(cls):
        fields = _fields(sample_message(cls))
        del fields[name]
        with pytest.raises(ProtocolError, match="missing"):
            decode(_raw(cls.TAG, fields))


@pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.TAG)
def test_decode_refuses_an_extra_field(cls):
    fields = _fields(sample_message(cls))
    fields["smuggled"] = 1
    with pytest.raises(ProtocolError, match="unknown fields"):
        decode(_raw(cls.TAG, fields))


def test_decode_refuses_extra_fields_with_binary_names():
    # bin keys: strict_map_key lets both str and bytes keys through msgpack
    msg = msgpack.packb(["ack", {b"smuggled": 1, b"seq": 1}], use_bin_type=True)
    with pytest.raises(ProtocolError):
        decode(msg)


def test_decode_refuses_fields_mixing_text_and_binary_names():
    msg = msgpack.packb(["ack", {"seq": 1, b"smuggled": 1, "other": 2}], use_bin_type=True)
    with pytest.raises(ProtocolError):
        decode(msg)


def _wrong_values(hint: Any) -> list[Any]:
    """Values a sloppy or hostile peer might put where `hint` is declared."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:  # optional: None is allowed
        arm = next(a for a in typing.get_args(hint) if a is not type(None))
        return [w for w in _wrong_values(arm) if w is not None]
    if origin is list:
        (item,) = typing.get_args(hint)
        return ["not a list", {"k": 1}] + [[w] for w in _wrong_values(item)[:2]]
    if origin is dict:
        key, item = typing.get_args(hint)
        wrong = [["k", 1], "not a map"]
        if item is not Any:
            wrong.append({"k": _wrong_values(item)[0]})
        return wrong
    if hint is Any:
        return []
    return {int: ["7", True, False, 1.5, None, b"\x07"],
            str: [7, b"text", None, ["text"]],
            bytes: ["text", 7, None, [1, 2]],
            bool: [1, 0, "true", None],
            float: ["1.5", True, None]}[hint]


_TYPED_FIELDS = [(cls, name) for cls in MESSAGES for name, hint in _hints(cls).items()
                 if _wrong_values(hint)]


@pytest.mark.parametrize("cls,name", _TYPED_FIELDS,
                         ids=[f"{c.TAG}.{n}" for c, n in _TYPED_FIELDS])
def test_decode_refuses_a_field_of_the_wrong_type(cls, name):
    for value in _wrong_values(_hints(cls)[name]):
        fields = _fields(sample_message(cls))
        fields[name] = value
        with pytest.raises(ProtocolError, match="wrong type"):
            decode(_raw(cls.TAG, fields))


def _packet_of_size(total: int) -> bytes:
    """A valid PACKET header of exactly `total` bytes (its body padded with one bin32)."""
    template = sample_message(Packet)
    overhead = len(encode(dataclasses.replace(template, body={"pad": b"x" * 70000}))) - 70000
    data = encode(dataclasses.replace(template, body={"pad": b"x" * (total - overhead)}))
    assert len(data) == total
    return data


def test_decode_accepts_a_header_of_exactly_the_size_limit():
    assert isinstance(decode(_packet_of_size(MAX_HEADER_BYTES)), Packet)


def test_decode_refuses_a_header_larger_than_the_limit():
    with pytest.raises(ProtocolError, match="larger than"):
        decode(_packet_of_size(MAX_HEADER_BYTES + 1))


def test_decode_refuses_a_map_with_thousands_of_keys():
    fields = {"digest": "d", "rounds": 1, "devices": {f"k{i}": "v" for i in range(5000)}}
    with pytest.raises(ProtocolError):
        decode(_raw("complete", fields))
    with pytest.raises(ProtocolError):
        decode(_raw("ack", {f"k{i}": i for i in range(5000)}))


def test_complete_for_a_hundred_devices_decodes():
    complete = Complete(digest="d" * 32, devices={f"dev{i}": "e" * 32 for i in range(100)},
                        rounds=1)
    assert decode(encode(complete), Complete) == complete


@pytest.mark.parametrize("depth", [100, 2000, 10000])
def test_decode_refuses_deeply_nested_arrays(depth):
    with pytest.raises(ProtocolError):
        decode(b"\x91" * depth + b"\xc0")
    nested = b"\x92\xa3ack\x81\xa3seq" + b"\x91" * depth + b"\x01"
    with pytest.raises(ProtocolError):
        decode(nested)


def test_decode_refuses_a_long_string_even_inside_the_size_limit():
    with pytest.raises(ProtocolError):
        decode(_raw("fault", {"message": "x" * 5000}))


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_decode_of_arbitrary_bytes_raises_only_protocol_error(data):
    try:
        decode(data)
    except ProtocolError:
        pass


_FIELD_NAMES = sorted({name for cls in MESSAGES for name in _hints(cls)})


@st.composite
def message_like(draw):
    """[tag, fields] with a real tag and mostly real field names: gets past the msgpack layer."""
    tag = draw(st.sampled_from([cls.TAG for cls in MESSAGES]) | st.text(max_size=6))
    keys = st.sampled_from(_FIELD_NAMES) | st.text(max_size=6)
    fields = draw(st.dictionaries(keys, _LEAF | st.lists(_LEAF, max_size=3), max_size=10))
    return msgpack.packb([tag, fields], use_bin_type=True)


@settings(max_examples=300, deadline=None)
@given(message_like())
def test_decode_of_arbitrary_message_shapes_raises_only_protocol_error(data):
    try:
        decode(data)
    except ProtocolError:
        pass


# -- HELLO ----------------------------------------------------------------------------------

def good_hello(**changes: Any) -> Hello:
    settings = TransferSettings(channels=4, compress="zstd:3", packet_pages=64, window=4,
                                chunk_size=1 << 16)
    hello = new_hello(SESSION, 10 * PAGE_SIZE + 5, settings, ["ram", "device"])
    return dataclasses.replace(hello, **changes)


def test_a_good_hello_passes_and_yields_its_settings():
    settings = accept(good_hello())
    assert settings == TransferSettings(channels=4, compress="zstd:3", packet_pages=64,
                                        window=4, chunk_size=1 << 16)


def test_a_hello_survives_the_wire_and_still_passes():
    assert accept(decode(encode(good_hello()), Hello)).channels == 4


def test_hello_accepts_an_empty_image_and_the_largest_allowed_one():
    accept(good_hello(image_size=0))
    accept(good_hello(image_size=1 << 20), max_image_size=1 << 20)


@pytest.mark.parametrize("changes", [
    {"magic": "qemu-multifd"}, {"magic": ""}, {"version": VERSION + 1}, {"version": 0},
    {"session": SESSION[:-1]}, {"session": SESSION + b"\x00"}, {"session": b""},
    {"page_size": 8192}, {"page_size": 0},
    {"image_size": -1}, {"image_size": -(1 << 40)}, {"image_size": (1 << 46) + 1},
    {"image_size": 1 << 70},
    {"channels": 0}, {"channels": 1000}, {"channels": -1},
    {"packet_pages": 0}, {"packet_pages": 100000}, {"packet_pages": -5},
    {"window": 0}, {"window": 10 ** 6}, {"chunk_size": 0}, {"chunk_size": 1 << 40},
], ids=repr)
def test_hello_with_a_bad_field_is_refused(changes):
    with pytest.raises(ProtocolError):
        accept(good_hello(**changes))


def test_hello_refuses_an_image_over_the_receivers_limit():
    with pytest.raises(ProtocolError, match="out of range"):
        accept(good_hello(image_size=(1 << 20) + 1), max_image_size=1 << 20)


@pytest.mark.parametrize("field", ["compress", "device_compress"])
@pytest.mark.parametrize("codec", ["bogus", "zstd:99", "none:1"])
def test_hello_with_a_codec_this_side_cannot_load_is_refused(field, codec):
    with pytest.raises(ProtocolError):
        accept(good_hello(**{field: codec}))


@pytest.mark.parametrize("handlers", [["ram", "no-such-handler"], []], ids=repr)
def test_hello_with_handlers_this_side_cannot_load_is_refused(handlers):
    with pytest.raises(ProtocolError):
        accept(good_hello(handlers=handlers))


# -- the channel rules ----------------------------------------------------------------------

CHANNEL = 1
CHANNELS = 3
MAX_PAYLOAD = 64 << 10


def rules(first_seq: int | None = 0) -> ChannelRules:
    """Rules of channel 1 of 3, opened by an INIT at `first_seq` (None: not opened yet)."""
    r = ChannelRules(SESSION, CHANNEL, TransferSettings(channels=CHANNELS), ["ram", "device"],
                     MAX_PAYLOAD)
    if first_seq is not None:
        r.check_init(init_frames(first_seq=first_seq))
    return r


def init_frames(**changes: Any) -> list[bytes]:
    fields = dict(magic=MAGIC, version=VERSION, session=SESSION, channel=CHANNEL, first_seq=0)
    fields.update(changes)
    return [encode(Init(**fields))]


def packet(seq: int, payload: list[bytes], **changes: Any) -> list[bytes]:
    fields = dict(session=SESSION, channel=CHANNEL, seq=seq, kind="ram",
                  sizes=[len(f) for f in payload], checksum=checksum(payload),
                  body={"runs": [[0, 1]]})
    fields.update(changes)
    return [encode(Packet(**fields)), *payload]


def sync(round_: int = 0, **changes: Any) -> list[bytes]:
    fields = dict(session=SESSION, channel=CHANNEL, round=round_)
    fields.update(changes)
    return [encode(Sync(**fields))]


def receive(r: ChannelRules, frames: list) -> bool:
    """What the destination channel does: validate, then ask whether the packet is new."""
    return r.accept(r.check_message(frames))


def test_init_of_this_channel_is_accepted():
    init = rules(None).check_init(init_frames())
    assert (init.session, init.channel, init.first_seq) == (SESSION, CHANNEL, 0)


@pytest.mark.parametrize("changes", [
    {"magic": "other"}, {"version": VERSION + 1}, {"session": OTHER_SESSION},
    {"channel": CHANNELS}, {"channel": CHANNELS + 10}, {"channel": 0}, {"channel": 2},
    {"channel": -1}, {"first_seq": -1},
], ids=repr)
def test_init_with_a_wrong_field_is_refused(changes):
    with pytest.raises(ProtocolError):
        rules(None).check_init(init_frames(**changes))


@pytest.mark.parametrize("frames", [[], init_frames() + [b"extra"], sync(), [b"\x00"]],
                         ids=["no-frame", "two-frames", "sync-instead", "garbage"])
def test_init_that_is_not_one_init_frame_is_refused(frames):
    with pytest.raises(ProtocolError):
        rules(None).check_init(frames)


def test_the_first_init_sets_the_first_sequence_number():
    r = rules(first_seq=5)
    assert receive(r, packet(5, [b"x"])) is True
    with pytest.raises(ProtocolError):
        receive(rules(first_seq=5), packet(6, [b"x"]))


def test_a_reconnect_may_resume_at_or_before_the_next_packet_due():
    r = rules()
    for seq in range(3):
        assert receive(r, packet(seq, [b"x"])) is True
    r.check_init(init_frames(first_seq=1))      # re-sends packets 1 and 2
    assert receive(r, packet(1, [b"x"])) is False
    assert receive(r, packet(2, [b"x"])) is False
    assert receive(r, packet(3, [b"x"])) is True
    r.check_init(init_frames(first_seq=4))      # nothing to re-send


def test_a_reconnect_that_would_skip_packets_is_refused():
    r = rules()
    receive(r, packet(0, [b"x"]))
    with pytest.raises(ProtocolError, match="next one due"):
        r.check_init(init_frames(first_seq=2))


def test_valid_packets_are_accepted_in_sequence():
    r = rules()
    for seq in range(3):
        payload = [b"a" * 100, b"", b"b" * 4096]
        msg = r.check_message(packet(seq, payload))
        assert isinstance(msg, Packet) and msg.seq == seq and msg.kind == "ram"
        assert r.accept(msg) is True
    assert r.next_seq == 3


def test_packets_as_zmq_style_buffers_are_accepted():
    frames = [memoryview(f) for f in packet(0, [b"x" * 10, b"y" * 20], kind="device")]
    assert rules().check_message(frames).kind == "device"


def test_a_packet_with_no_payload_frames_is_accepted():
    assert rules().check_message(packet(0, [])).sizes == []


def test_payload_of_exactly_max_payload_is_accepted():
    assert rules().check_message(packet(0, [b"x" * (MAX_PAYLOAD - 10), b"y" * 10]))


def test_sync_is_accepted_and_takes_no_sequence_number():
    r = rules()
    receive(r, packet(0, [b"x"]))
    msg = r.check_message(sync(round_=4))
    assert isinstance(msg, Sync) and msg.round == 4
    assert receive(r, packet(1, [b"y"])) is True


@pytest.mark.parametrize("changes", [{"session": OTHER_SESSION}, {"channel": 0},
                                     {"channel": CHANNELS}], ids=repr)
def test_packet_or_sync_from_another_session_or_channel_is_refused(changes):
    with pytest.raises(ProtocolError):
        rules().check_message(packet(0, [b"x"], **changes))
    with pytest.raises(ProtocolError):
        rules().check_message(sync(**changes))


def test_a_duplicate_packet_is_not_applied_twice():
    r = rules()
    assert receive(r, packet(0, [b"x"])) is True
    assert receive(r, packet(0, [b"x"])) is False
    assert r.next_seq == 1


def test_a_skipped_sequence_number_is_refused():
    r = rules()
    receive(r, packet(0, [b"x"]))
    with pytest.raises(ProtocolError, match="arrived where 1 was due"):
        receive(r, packet(2, [b"x"]))
    assert r.next_seq == 1


def test_a_first_packet_after_the_announced_one_is_refused():
    with pytest.raises(ProtocolError):
        receive(rules(), packet(1, [b"x"]))


def test_a_packet_of_an_unannounced_kind_is_refused():
    with pytest.raises(ProtocolError, match="unannounced kind"):
        rules().check_message(packet(0, [b"x"], kind="video"))


@pytest.mark.parametrize("sizes", [[], [1], [1, 1, 1]], ids=repr)
def test_a_sizes_list_that_does_not_match_the_frame_count_is_refused(sizes):
    with pytest.raises(ProtocolError, match="frames"):
        rules().check_message(packet(0, [b"a", b"b"], sizes=sizes))


def test_a_frame_of_another_size_than_announced_is_refused():
    with pytest.raises(ProtocolError, match="announced"):
        rules().check_message(packet(0, [b"abc", b"de"], sizes=[2, 3]))


def test_payload_over_max_payload_is_refused():
    with pytest.raises(ProtocolError, match="larger than"):
        rules().check_message(packet(0, [b"x" * MAX_PAYLOAD, b"y"]))


def test_a_checksum_mismatch_is_a_corrupt_payload():
    assert issubclass(CorruptPayload, ProtocolError)
    frames = packet(0, [b"original payload"])
    frames[1] = b"Original payload"  # same size, one bit flipped on the way
    with pytest.raises(CorruptPayload):
        rules().check_message(frames)
    with pytest.raises(CorruptPayload):
        rules().check_message(packet(0, [b"x"], checksum=checksum([b"y"])))


def test_a_checksum_covers_frame_order():
    frames = packet(0, [b"aaaa", b"bbbb"])
    frames[1], frames[2] = frames[2], frames[1]
    with pytest.raises(CorruptPayload):
        rules().check_message(frames)


def test_a_sync_with_extra_frames_is_refused():
    with pytest.raises(ProtocolError, match="single frame"):
        rules().check_message(sync() + [b"payload"])


def test_an_empty_message_is_refused():
    with pytest.raises(ProtocolError, match="empty"):
        rules().check_message([])


@pytest.mark.parametrize("header", [encode(Ack(seq=0)), init_frames()[0], b"\x00", b""],
                         ids=["ack", "init", "garbage", "empty-header"])
def test_a_data_message_that_is_neither_packet_nor_sync_is_refused(header):
    with pytest.raises(ProtocolError):
        rules().check_message([header])


# -- the SYNC barrier -----------------------------------------------------------------------

def test_barrier_releases_only_when_every_channel_arrived():
    barrier = SyncBarrier(3)
    assert barrier.idle
    assert barrier.arrive(2, 0) is False
    assert not barrier.idle
    assert barrier.arrive(0, 0) is False
    assert barrier.round == 0
    assert barrier.arrive(1, 0) is True
    assert barrier.idle and barrier.round == 1


def test_a_single_channel_barrier_releases_at_every_sync():
    barrier = SyncBarrier(1)
    for round_ in range(4):
        assert barrier.arrive(0, round_) is True
    assert barrier.round == 4 and barrier.idle


def test_barrier_rounds_advance_whatever_the_arrival_order():
    barrier = SyncBarrier(4)
    orders = [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]]
    for round_, order in enumerate(orders):
        results = [barrier.arrive(channel, round_) for channel in order]
        assert results == [False, False, False, True]
        assert barrier.round == round_ + 1 and barrier.idle


def test_a_channel_arriving_twice_in_one_round_is_refused():
    barrier = SyncBarrier(2)
    barrier.arrive(0, 0)
    with pytest.raises(ProtocolError, match="twice"):
        barrier.arrive(0, 0)
    assert barrier.arrive(1, 0) is True  # the refusal did not disturb the round


@pytest.mark.parametrize("round_", [1, 5, -1])
def test_a_sync_of_another_round_is_refused(round_):
    barrier = SyncBarrier(2)
    with pytest.raises(ProtocolError, match="during round 0"):
        barrier.arrive(0, round_)
    assert barrier.idle


def test_a_forgotten_channel_may_arrive_again_and_is_still_awaited():
    barrier = SyncBarrier(2)
    barrier.arrive(0, 0)
    barrier.forget(0)  # channel 0's worker was replaced; its SYNC will be re-sent
    assert barrier.idle
    assert barrier.arrive(1, 0) is False
    assert barrier.arrive(0, 0) is True
    barrier.forget(1)  # forgetting a channel that has not arrived changes nothing
    assert barrier.arrive(0, 1) is False and barrier.arrive(1, 1) is True


def test_a_sync_of_an_already_released_round_is_refused():
    barrier = SyncBarrier(2)
    barrier.arrive(0, 0)
    barrier.arrive(1, 0)
    with pytest.raises(ProtocolError):
        barrier.arrive(0, 0)


# -- partition ------------------------------------------------------------------------------

def _pages_of(packets: list) -> list[int]:
    return [page for runs in packets for start, count in runs
            for page in range(start, start + count)]


@pytest.mark.parametrize("start,count,packet_pages,expected", [
    (0, 0, 4, []),
    (0, 1, 4, [[[0, 1]]]),
    (5, 8, 4, [[[5, 4]], [[9, 4]]]),
    (5, 9, 4, [[[5, 4]], [[9, 4]], [[13, 1]]]),
    (3, 10, 128, [[[3, 10]]]),
    (0, 3, 1, [[[0, 1]], [[1, 1]], [[2, 1]]]),
])
def test_range_packets_cover_the_range_in_packets_of_at_most_packet_pages(
        start, count, packet_pages, expected):
    assert list(range_packets(start, count, packet_pages)) == expected


@pytest.mark.parametrize("pages,packet_pages,expected", [
    ([], 4, []),
    ([9], 4, [[[9, 1]]]),
    ([3, 4, 5], 128, [[[3, 3]]]),
    ([1, 2, 5, 7, 8], 128, [[[1, 2], [5, 1], [7, 2]]]),
    (list(range(10)), 4, [[[0, 4]], [[4, 4]], [[8, 2]]]),
    ([0, 1, 2, 3, 10, 11], 4, [[[0, 4]], [[10, 2]]]),
    ([0, 2, 4, 6, 8], 2, [[[0, 1], [2, 1]], [[4, 1], [6, 1]], [[8, 1]]]),
], ids=["empty", "single", "consecutive", "gaps", "split", "boundary", "every-other"])
def test_list_packets_turns_sorted_pages_into_runs(pages, packet_pages, expected):
    assert list(list_packets(np.array(pages, dtype=np.int64), packet_pages)) == expected


def test_list_packets_yields_plain_ints_that_msgpack_can_carry():
    packets = list(list_packets(np.array([1, 2, 3, 7], dtype=np.int64), 128))
    assert all(type(v) is int for runs in packets for run in runs for v in run)
    job = dataclasses.replace(sample_message(jobs.Job), kind="ram",
                              specs=[{"runs": runs} for runs in packets])
    assert decode(encode(job), jobs.Job) == job


@pytest.mark.parametrize("runs,image_size,expected", [
    ([[0, 10]], 10 * PAGE_SIZE, 10 * PAGE_SIZE),
    ([[8, 2]], 9 * PAGE_SIZE + 100, PAGE_SIZE + 100),
    ([[0, 1], [9, 1]], 9 * PAGE_SIZE + 100, PAGE_SIZE + 100),
    ([[0, 1]], 100, 100),
    ([[2, 3], [7, 1]], 8 * PAGE_SIZE, 4 * PAGE_SIZE),
])
def test_runs_bytes_counts_a_short_last_page_as_short(runs, image_size, expected):
    assert runs_bytes(runs, image_size) == expected


@pytest.mark.parametrize("size,chunk,expected", [
    (0, 4, [(0, 0, 0, True)]),
    (1, 4, [(0, 0, 1, True)]),
    (4, 4, [(0, 0, 4, True)]),
    (8, 4, [(0, 0, 4, False), (1, 4, 4, True)]),
    (9, 4, [(0, 0, 4, False), (1, 4, 4, False), (2, 8, 1, True)]),
], ids=["empty", "one-byte", "one-chunk", "exact-multiple", "multiple-plus-one"])
def test_chunk_spans_cut_a_blob_into_chunks_with_one_last(size, chunk, expected):
    assert list(chunk_spans(size, chunk)) == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10 ** 6), st.integers(0, 3000), st.integers(1, 1024))
def test_range_packets_union_is_exactly_the_range(start, count, packet_pages):
    packets = list(range_packets(start, count, packet_pages))
    assert _pages_of(packets) == list(range(start, start + count))
    assert all(len(runs) == 1 and 1 <= runs[0][1] <= packet_pages for runs in packets)


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(0, 4000), max_size=300), st.integers(1, 300))
def test_list_packets_union_is_exactly_the_pages(page_set, packet_pages):
    pages = np.array(sorted(page_set), dtype=np.int64)
    packets = list(list_packets(pages, packet_pages))
    assert _pages_of(packets) == sorted(page_set)
    for runs in packets:
        assert sum(count for _, count in runs) <= packet_pages
        assert all(count >= 1 for _, count in runs)
        # runs are maximal: each starts after a gap from the previous one
        assert all(b[0] > a[0] + a[1] for a, b in zip(runs, runs[1:]))
    assert sum(1 for _ in packets) == -(-len(pages) // packet_pages)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 1 << 20), st.integers(0, 1000), st.integers(-1, 1))
def test_chunk_spans_tile_the_blob_exactly(chunk, whole, extra):
    size = max(0, whole * chunk + extra)
    spans = list(chunk_spans(size, chunk))
    assert [s[0] for s in spans] == list(range(len(spans)))
    assert sum(s[2] for s in spans) == size
    assert all(offset == index * chunk for index, offset, _, _ in spans)
    assert [s[3] for s in spans] == [False] * (len(spans) - 1) + [True]
    assert all(0 < s[2] <= chunk for s in spans) or size == 0
