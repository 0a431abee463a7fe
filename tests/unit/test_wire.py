"""The chain header codec, replay cache, allowlist and hop state machine: pure, no sockets."""

from __future__ import annotations

import contextlib
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from linkscope.errors import LocalProtocolError
from linkscope.relay.hop import HopMachine, HopPolicy, HopState, TokenBucket
from linkscope.wire import (
    MAX_FRAME,
    MAX_HOPS,
    NEED_DATA,
    Allowlist,
    ConnectLayer,
    Frame,
    FrameReader,
    HopSpec,
    Kind,
    ProbeLayer,
    ReplayCache,
    Status,
    WireError,
    build_chain,
    build_connect,
    build_probe,
    decode_status,
    encode_status,
    nesting_depth,
    parse_allow_rule,
    parse_frame,
    time_ms,
    verify_frame,
)

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
NOW = 1_800_000_000_000
WINDOW = 30_000


def _verify(raw: bytes, key: bytes = KEY, now: int = NOW) -> ConnectLayer | ProbeLayer:
    return verify_frame(parse_frame(raw), key, now, WINDOW)


def test_connect_round_trip_final_target() -> None:
    raw = build_connect(KEY, "127.0.0.1", 22, now_ms=NOW)
    layer = _verify(raw)
    assert isinstance(layer, ConnectLayer)
    assert (layer.host, layer.port, layer.final, layer.timestamp_ms) == ("127.0.0.1", 22, True, NOW)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "db.example.net"])
def test_address_types_round_trip(host: str) -> None:
    layer = _verify(build_connect(KEY, host, 443, now_ms=NOW))
    assert isinstance(layer, ConnectLayer) and layer.host == host


def test_chain_nests_layers_and_each_hop_sees_only_its_own() -> None:
    keys = [os.urandom(32) for _ in range(3)]
    hops = [HopSpec(f"h{i}", f"127.0.0.{i + 2}", 7000 + i, k) for i, k in enumerate(keys)]
    raw = build_chain(hops, ("127.0.0.1", 22), now_ms=NOW)
    assert nesting_depth(raw) == 3
    seen = []
    for i, key in enumerate(keys):
        layer = _verify(raw, key)
        assert isinstance(layer, ConnectLayer)
        seen.append((layer.host, layer.port))
        if i < 2:
            with pytest.raises(WireError) as err:  # the next hop's key does not open this layer
                _verify(raw, keys[i + 1])
            assert err.value.code is Status.BAD_MAC
        raw = layer.inner
    assert seen == [("127.0.0.3", 7001), ("127.0.0.4", 7002), ("127.0.0.1", 22)]
    assert raw == b""


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), Status.BAD_MAC),  # tampered MAC
        (lambda raw: raw[:20] + bytes([raw[20] ^ 1]) + raw[21:], Status.BAD_MAC),  # tampered body
        (lambda raw: b"XX" + raw[2:], Status.MALFORMED),  # magic
        (lambda raw: raw[:2] + b"\x09" + raw[3:], Status.UNSUPPORTED_VERSION),
        (lambda raw: raw[:3] + b"\x07" + raw[4:], Status.MALFORMED),  # unknown kind
    ],
)
def test_tampered_frames_are_refused_with_their_reason(mutate, code) -> None:  # type: ignore[no-untyped-def]
    raw = mutate(build_connect(KEY, "127.0.0.1", 22, now_ms=NOW))
    with pytest.raises(WireError) as err:
        _verify(raw)
    assert err.value.code is code


def test_wrong_key_is_bad_mac() -> None:
    with pytest.raises(WireError) as err:
        _verify(build_connect(OTHER, "127.0.0.1", 22, now_ms=NOW))
    assert err.value.code is Status.BAD_MAC


@pytest.mark.parametrize("skew_ms", [WINDOW + 1, -(WINDOW + 1), 10**9])
def test_timestamp_outside_window_is_expired(skew_ms: int) -> None:
    with pytest.raises(WireError) as err:
        _verify(build_connect(KEY, "127.0.0.1", 22, now_ms=NOW - skew_ms))
    assert err.value.code is Status.EXPIRED


def test_timestamp_at_window_edge_is_accepted() -> None:
    assert _verify(build_connect(KEY, "127.0.0.1", 22, now_ms=NOW - WINDOW))


def test_oversized_declared_length_is_refused_from_the_prefix_alone() -> None:
    reader = FrameReader()
    reader.feed(b"LS\x01\x01\xff\xff")
    with pytest.raises(WireError) as err:
        reader.next_event()
    assert err.value.code is Status.OVERSIZED


def test_reader_needs_exactly_the_frame_and_reports_need_data() -> None:
    raw = build_connect(KEY, "127.0.0.1", 22, now_ms=NOW)
    reader = FrameReader()
    fed = 0
    while True:
        event = reader.next_event()
        if isinstance(event, Frame):
            break
        assert event is NEED_DATA
        n = reader.bytes_needed()
        assert n > 0 and fed + n <= len(raw)  # never asks for bytes beyond the frame
        reader.feed(raw[fed : fed + 1])  # one byte at a time
        fed += 1
    assert event.raw == raw and event.kind is Kind.CONNECT and fed == len(raw)


def test_garbage_first_byte_is_refused_before_buffering() -> None:
    reader = FrameReader()
    reader.feed(b"G")
    with pytest.raises(WireError) as err:
        reader.next_event()
    assert err.value.code is Status.MALFORMED


def test_truncated_input_then_eof() -> None:
    raw = build_connect(KEY, "127.0.0.1", 22, now_ms=NOW)
    reader = FrameReader()
    reader.feed(raw[:10])
    assert reader.next_event() is NEED_DATA
    with pytest.raises(WireError) as err:
        reader.eof()
    assert err.value.code is Status.TRUNCATED


def test_chain_depth_is_limited() -> None:
    hops = [HopSpec(str(i), "127.0.0.2", 7000, KEY) for i in range(MAX_HOPS + 1)]
    with pytest.raises(LocalProtocolError):
        build_chain(hops, ("127.0.0.1", 22))
    # Hand-nest one layer too many: the receiving hop refuses it after the MAC verifies.
    raw = build_chain(hops[:MAX_HOPS], ("127.0.0.1", 22), now_ms=NOW)
    raw = build_connect(KEY, "127.0.0.2", 7000, raw, now_ms=NOW)
    with pytest.raises(WireError) as err:
        _verify(raw)
    assert err.value.code is Status.MALFORMED


def test_header_size_is_limited() -> None:
    with pytest.raises(LocalProtocolError):
        build_connect(KEY, "127.0.0.2", 7000, b"x" * MAX_FRAME)


def test_probe_round_trip() -> None:
    layer = _verify(build_probe(KEY, ["127.0.0.1", "localhost"], [22, 80], 4, now_ms=NOW))
    assert isinstance(layer, ProbeLayer)
    assert layer.targets == ("127.0.0.1", "localhost")
    assert (layer.ports, layer.count) == ((22, 80), 4)


def test_status_encoding() -> None:
    assert decode_status(encode_status(Status.REPLAY, 2)) == (Status.REPLAY, 2)
    assert all(code.reason for code in Status)


def test_replay_cache_refuses_a_nonce_twice_and_forgets_after_two_windows() -> None:
    """Without the layer's timestamp, a nonce is kept for 2 windows after arrival (the latest a
    replay could still pass the clock check), to the second."""
    cache = ReplayCache(window_ms=1000)
    cache.check_and_add(b"a" * 16, 0)
    with pytest.raises(WireError) as err:
        cache.check_and_add(b"a" * 16, 2999)
    assert err.value.code is Status.REPLAY
    cache.check_and_add(b"a" * 16, 3000)  # expired from the cache, and EXPIRED by the window


def test_replay_cache_keeps_a_nonce_until_its_timestamp_leaves_the_window() -> None:
    cache = ReplayCache(window_ms=30_000)
    now = 1_800_000_000_000
    cache.check_and_add(b"a" * 16, now, ts_ms=now - 20_000)  # sender's clock 20 s behind
    cache.check_and_add(b"b" * 16, now, ts_ms=now + 25_000)  # 25 s ahead
    for t in (now + 9_999, now + 10_000):  # a replays pass the clock check until ts + window
        with pytest.raises(WireError):
            cache.check_and_add(b"a" * 16, t)
    cache.check_and_add(b"a" * 16, now + 11_000)  # by then a replay of a is EXPIRED anyway
    with pytest.raises(WireError):
        cache.check_and_add(b"b" * 16, now + 55_000)
    cache.check_and_add(b"b" * 16, now + 56_000)
    assert len(cache) == 2  # the two re-added ones


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 90_000), st.integers(-30_000, 30_000))))
def test_replay_cache_never_forgets_a_nonce_that_would_still_pass(
    events: list[tuple[int, int, int]],
) -> None:
    """Against a model that remembers everything: a nonce seen with timestamp ts is refused as
    long as a replay would pass the clock check (now <= ts + window)."""
    window = 30_000
    cache = ReplayCache(window_ms=window)
    seen: dict[bytes, int] = {}  # nonce -> latest ts + window among its accepted layers
    now = 1_800_000_000_000
    for nonce_i, advance, skew in sorted(events, key=lambda e: e[1]):
        t = now + advance
        nonce = bytes([nonce_i]) * 16
        try:
            cache.check_and_add(nonce, t, ts_ms=t + skew)
        except WireError as exc:
            assert exc.code is Status.REPLAY
            assert nonce in seen  # only a nonce seen before is refused
            continue
        assert seen.get(nonce, -1) < t, "a nonce was forgotten while a replay would still pass"
        seen[nonce] = t + skew + window


def test_replay_cache_is_bounded_and_refuses_rather_than_evicts() -> None:
    cache = ReplayCache(window_ms=1000, max_entries=3)
    for i in range(3):
        cache.check_and_add(bytes([i]) * 16, 0)
    with pytest.raises(WireError) as err:
        cache.check_and_add(b"z" * 16, 10)
    assert err.value.code is Status.BUSY
    cache.check_and_add(b"z" * 16, 3000)  # old ones expired
    assert len(cache) == 1


def test_replay_cache_holds_a_sustained_connection_rate() -> None:
    """16,000 connections/s for a minute at the default 30 s window: never BUSY, and the cache
    holds about a window's worth of nonces."""
    cache = ReplayCache(window_ms=30_000)
    now = 1_800_000_000_000
    for i in range(60 * 16_000):
        t = now + i // 16
        cache.check_and_add(i.to_bytes(16, "big"), t, ts_ms=t)
    assert 30 * 16_000 <= len(cache) <= 31 * 16_000


@pytest.mark.parametrize(
    ("spec", "host", "port", "ok"),
    [
        ("127.0.0.0/8", "127.1.2.3", 22, True),
        ("127.0.0.0/8", "10.0.0.1", 22, False),
        ("127.0.0.1/32:22", "127.0.0.1", 22, True),
        ("127.0.0.1/32:22", "127.0.0.1", 23, False),
        ("127.0.0.1:8000-8010", "127.0.0.1", 8005, True),
        ("127.0.0.1:8000-8010", "127.0.0.1", 8011, False),
        ("[::1/128]:22", "::1", 22, True),
        ("::1/128", "::1", 5, True),
        ("::1/128", "127.0.0.1", 5, False),
        ("127.0.0.0/8", "::ffff:127.0.0.1", 5, True),
        ("127.0.0.0/8", "not-an-address", 5, False),
    ],
)
def test_allowlist(spec: str, host: str, port: int, ok: bool) -> None:
    assert Allowlist.parse([spec]).allows(host, port) is ok


def test_empty_allowlist_allows_nothing() -> None:
    assert not Allowlist().allows("127.0.0.1", 22)


@pytest.mark.parametrize("bad", ["", "300.0.0.0/8", "127.0.0.1:0", "127.0.0.1:9-8", "[::1", "x:y"])
def test_bad_allow_rules_raise_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_allow_rule(bad)


def test_policy_admits_once_then_refuses_replay() -> None:
    policy = HopPolicy(KEY, allow=Allowlist.parse(["127.0.0.1/32"]))
    frame = parse_frame(build_connect(KEY, "127.0.0.1", 22))
    layer = policy.admit(frame, time_ms())
    assert isinstance(layer, ConnectLayer)
    policy.check_target(layer, "127.0.0.1")
    with pytest.raises(WireError) as err:
        policy.admit(frame, time_ms())
    assert err.value.code is Status.REPLAY
    with pytest.raises(WireError) as err:
        policy.check_target(layer, "127.0.0.2")
    assert err.value.code is Status.NOT_ALLOWED


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=1.0, burst=2.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.take(1.0) and not bucket.take(1.0)


def test_hop_state_machine_allows_only_legal_transitions() -> None:
    hop = HopMachine()
    hop.to(HopState.CONNECTING)
    with pytest.raises(LocalProtocolError):
        hop.to(HopState.PROBING)
    hop.to(HopState.RELAYING)
    hop.to(HopState.CLOSED)
    with pytest.raises(LocalProtocolError):
        hop.to(HopState.RELAYING)


# -- property tests --------------------------------------------------------------------------
def _feed_all(data: bytes) -> None:
    """Run the whole receive path on arbitrary bytes; only WireError may come out."""
    reader = FrameReader()
    reader.feed(data[: reader.bytes_needed()])
    pos = len(data[: reader.bytes_needed()])
    while True:
        event = reader.next_event()
        if isinstance(event, Frame):
            verify_frame(event, KEY, NOW, WINDOW)
            return
        chunk = data[pos : pos + reader.bytes_needed()]
        if not chunk:
            reader.eof()
        reader.feed(chunk)
        pos += len(chunk)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_only_raise_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        _feed_all(data)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzz_mutated_valid_frames(data: st.DataObject) -> None:
    hops = [HopSpec("a", "127.0.0.2", 7000, KEY), HopSpec("b", "db.example", 7001, OTHER)]
    raw = bytearray(build_chain(hops, ("127.0.0.1", 22), now_ms=NOW))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        _feed_all(bytes(raw[:cut]))
    except WireError as exc:
        assert exc.code in Status
    # A frame that still verifies must be the original (the MAC covers every byte before it).
    else:
        assert cut == len(raw)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(min_size=32, max_size=40), min_size=1, max_size=MAX_HOPS),
    st.integers(1, 65535),
)
def test_fuzz_built_chains_always_verify(keys: list[bytes], port: int) -> None:
    hops = [HopSpec(str(i), "127.0.0.2", 7000 + i, k) for i, k in enumerate(keys)]
    raw = build_chain(hops, ("127.0.0.1", port), now_ms=NOW)
    layers = []
    for key in keys:
        layer = _verify(raw, key)
        assert isinstance(layer, ConnectLayer)
        layers.append(layer)
        raw = layer.inner
    assert layers[-1].final and layers[-1].port == port


@pytest.mark.parametrize(
    "body_after_nonce",
    [
        b"\x00\x04\x7f\x00",  # IPv4 address cut short
        b"\x00\x06" + b"\x00" * 8,  # IPv6 address cut short
        b"\x00\x03\x05ab",  # name shorter than its length byte
        b"\x00\x03\x02\xff\xfe\x00\x16\x00\x00",  # non-ASCII name
        b"\x00\x09\x7f\x00\x00\x01\x00\x16\x00\x00",  # unknown address type
        b"\x00\x04\x7f\x00\x00\x01\x00\x00\x00\x00",  # port 0
        b"\x02\x04\x7f\x00\x00\x01\x00\x16\x00\x00",  # unknown flag
        b"\x01\x04\x7f\x00\x00\x01\x00\x16\x00\x00",  # next-hop flag without an inner frame
        b"\x00\x04\x7f\x00\x00\x01\x00\x16\x00\x00extra",  # trailing bytes
    ],
)
def test_authenticated_but_malformed_bodies_are_malformed(body_after_nonce: bytes) -> None:
    """A correct MAC over a broken body (a buggy or hostile key holder) is still refused."""
    from linkscope.wire import _TS_NONCE, _seal

    raw = _seal(Kind.CONNECT, KEY, _TS_NONCE.pack(NOW, b"n" * 16) + body_after_nonce)
    with pytest.raises(WireError) as err:
        _verify(raw)
    assert err.value.code is Status.MALFORMED


def _sealed(kind: Kind, body_after_nonce: bytes) -> bytes:
    """A frame with a correct MAC over ``body_after_nonce``: what a buggy or hostile key holder
    can send (random or mutated frames fail the MAC before the body parser is reached)."""
    from linkscope.wire import _TS_NONCE, _seal

    return _seal(kind, KEY, _TS_NONCE.pack(NOW, os.urandom(16)) + body_after_nonce)


@pytest.mark.parametrize(
    "request_json",
    [b"[" * 2000 + b"]" * 2000, b'{"targets":' + b"[" * 2000 + b"]" * 2000 + b"}", b"{" * 3000],
    ids=["deep-list", "deep-in-object", "unclosed"],
)
def test_authenticated_probe_with_deeply_nested_json_is_malformed(request_json: bytes) -> None:
    """Nesting past the interpreter's recursion limit is a MALFORMED refusal, not a crash."""
    from linkscope.wire import _U16

    raw = _sealed(Kind.PROBE, _U16.pack(len(request_json)) + request_json)
    with pytest.raises(WireError) as err:
        _verify(raw)
    assert err.value.code is Status.MALFORMED


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from([Kind.CONNECT, Kind.PROBE]),
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=8),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
            max_leaves=40,
        ).map(lambda doc: json.dumps(doc).encode()),
    ),
    length_ok=st.booleans(),
)
def test_fuzz_authenticated_bodies_only_raise_wire_error(
    kind: Kind, body: bytes, length_ok: bool
) -> None:
    """Arbitrary bodies under a valid MAC (JSON of any shape for probes, any bytes): the parser
    returns a layer or raises WireError, nothing else."""
    from linkscope.wire import _U16

    payload = _U16.pack(len(body) if length_ok else len(body) + 1) + body
    with contextlib.suppress(WireError):
        _verify(_sealed(kind, payload))


def test_policy_holds_next_hops_to_the_allowlist_unless_told_otherwise() -> None:
    """A next hop's layer is opaque bytes of the sender's choosing: by default a next hop must
    be allowed like a target, so --allow cannot be bypassed by calling a target a next hop."""
    inner = build_connect(OTHER, "127.0.0.1", 22, now_ms=NOW)
    frame = build_connect(KEY, "198.19.9.9", 6379, inner, now_ms=NOW)
    layer = _verify(frame)
    assert isinstance(layer, ConnectLayer) and not layer.final
    policy = HopPolicy(KEY, allow=Allowlist.parse(["127.0.0.1/32:22"]))
    with pytest.raises(WireError) as err:
        policy.check_target(layer, "198.19.9.9")
    assert err.value.code is Status.NOT_ALLOWED and "next hop" in err.value.detail
    hops = HopPolicy(KEY, allow=Allowlist.parse(["127.0.0.1/32:22"]),
                     allow_hops=Allowlist.parse(["198.19.9.0/24:6379"]))  # fmt: skip
    hops.check_target(layer, "198.19.9.9")


def test_probe_targets_are_allowed_as_targets_or_as_next_hops() -> None:
    """An agent measures the edge to a next-hop agent it may chain to, not only to targets."""
    policy = HopPolicy(
        KEY,
        allow=Allowlist.parse(["198.18.0.4/32:22"]),
        allow_hops=Allowlist.parse(["198.18.0.0/24:7070"]),
    )
    assert policy.check_probe_target("198.18.0.4", ())  # the target
    assert policy.check_probe_target("198.18.0.6", ())  # a next hop's host
    assert policy.check_probe_target("198.18.0.6", (7070,))  # and its agent port
    assert not policy.check_probe_target("198.18.0.6", (22,))  # not any port of it
    assert not policy.check_probe_target("198.18.1.9", ())  # nor anything else


def test_replay_cache_expiry_runs_on_the_monotonic_clock() -> None:
    """A wall-clock step must neither fill the cache (back: nothing expired until the clock
    caught up, then every layer refused as BUSY) nor let a replay through (forward then back:
    a nonce dropped early)."""
    window, rate = 30_000, 1000  # 30 s, 1,000 layers/s
    cache = ReplayCache(window, max_entries=3 * 30 * rate)
    wall, mono = 10**12, 5_000
    step_back = 3_600_000
    for i in range(300 * rate):  # 300 s of traffic, the wall clock set back an hour at 100 s
        t_wall = wall + i - (step_back if i >= 100 * rate else 0)
        cache.check_and_add(i.to_bytes(16, "big"), t_wall, ts_ms=t_wall, mono_ms=mono + i)
    assert len(cache) <= 2 * 30 * rate  # ~a window's worth, not everything since the step

    cache = ReplayCache(window)
    nonce = b"n" * 16
    cache.check_and_add(nonce, wall, ts_ms=wall, mono_ms=mono)
    cache.check_and_add(b"x" * 16, wall + 3_600_000, mono_ms=mono + 1000)  # wall jumps forward
    with pytest.raises(WireError) as err:  # wall set back: the header is in its window again
        cache.check_and_add(nonce, wall + 2000, ts_ms=wall, mono_ms=mono + 2000)
    assert err.value.code == Status.REPLAY
