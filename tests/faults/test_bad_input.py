"""Bad input against the real daemon: the gateway answers every bad message with a reason,
keeps serving well-behaved clients, is never restarted, and its memory stays bounded.

One daemon serves the whole module (start-up is the expensive part). Every loop is bounded by
a count and by a deadline; nothing here measures speed.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.config import GatewayConfig
from engine.messages import Accepted, Rejected, RejectReason
from gateway import admin
from gateway import protocol as p
from gateway.client import Client
from journal import Journal
from tests.faults.conftest import Daemon

MAX_BYTES = GatewayConfig().max_message_bytes  # the test config keeps the default
MAX_BATCH = GatewayConfig().max_batch_orders
GATEWAY = "[-]m gateway"  # pgrep pattern of the gateway's command line
MALFORMED = RejectReason.MALFORMED_MESSAGE
# The largest reply any bad request may cause: a reject echoes short fields and a short text,
# never the attacker's payload (else a client that sends big and never reads grows our memory).
MAX_REJECT_BYTES = 2048

enc = msgspec.msgpack.encode


def gateway_pid(d: Daemon) -> int:
    (pid,) = d.child_pids(GATEWAY)
    return pid


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class Raw:
    """A bare DEALER: sends whatever bytes it is given, decodes what comes back."""

    def __init__(self, endpoint: str, rcvhwm: int = 100_000, routing_id: bytes | None = None) -> None:
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.sndhwm = 100_000
        self.sock.rcvhwm = rcvhwm
        if routing_id is not None:
            self.sock.routing_id = routing_id
        self.sock.connect(endpoint)

    def send(self, payload: bytes | list[bytes]) -> None:
        if isinstance(payload, list):
            self.sock.send_multipart(payload)
        else:
            self.sock.send(payload)

    def recv_frame(self, timeout: float = 5.0) -> bytes | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return self.sock.recv()

    def reply(self, timeout: float = 5.0) -> p.Reply:
        frame = self.recv_frame(timeout)
        assert frame is not None, f"no reply within {timeout} s"
        reply: p.Reply = p.reply_decoder.decode(frame)
        return reply

    def logon(self, account: str) -> None:
        self.send(enc({"type": "logon", "account": account, "req_id": 1}))
        assert isinstance(self.reply(), p.LogonAck)

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def raw(live: Daemon) -> Iterator[Raw]:
    r = Raw(live.endpoint)
    r.logon("fuzz")
    yield r
    r.close()


ORDER: dict[str, Any] = {
    "type": "new_order", "symbol": "BTCUSDT", "client_order_id": "bad-1", "side": 1, "qty": 1,
    "price": 100, "req_id": 11,
}  # fmt: skip


def nested_ping(depth: int, first: bool = False) -> bytes:
    """A ping with an extra key "x" holding `depth` nested arrays, as the last key or the
    first: hand-built (no encoder recurses that deep)."""
    deep = enc("x") + b"\x91" * depth + b"\xc0"
    rest = enc("type") + enc("ping") + enc("req_id") + enc(12)
    return b"\x83" + (deep + rest if first else rest + deep)


# (payload, the reject code expected, the req_id it must carry)
REJECTED: list[tuple[str, bytes | list[bytes], int, int]] = [
    ("empty frame", b"", MALFORMED, 0),
    ("not msgpack", b"\xc1\xc1\xc1", MALFORMED, 0),
    ("truncated map", enc(ORDER)[:-4], MALFORMED, 0),
    ("an array", enc([1, 2, 3]), MALFORMED, 0),
    ("an int", enc(7), MALFORMED, 0),
    ("nil", enc(None), MALFORMED, 0),
    ("a string", enc("new_order"), MALFORMED, 0),
    ("int keys", enc({1: 2, 3: 4}), MALFORMED, 0),
    ("no type", enc({"req_id": 7}), MALFORMED, 7),
    ("type is an int", enc({"type": 5, "req_id": 8}), MALFORMED, 8),
    ("type is bin", enc({"type": b"ping", "req_id": 9}), MALFORMED, 9),
    ("unknown type", enc({"type": "no_such_type", "req_id": 10}), MALFORMED, 10),
    ("an admin request", admin.encoder.encode(admin.StatusRequest(req_id=13)), MALFORMED, 13),
    ("qty as str", enc(ORDER | {"qty": "1"}), MALFORMED, 11),
    ("qty as float", enc(ORDER | {"qty": 1.0}), MALFORMED, 11),
    ("qty as bool", enc(ORDER | {"qty": True}), MALFORMED, 11),
    ("post_only as int", enc(ORDER | {"post_only": 1}), MALFORMED, 11),
    ("symbol as bin", enc(ORDER | {"symbol": b"BTCUSDT"}), MALFORMED, 11),
    ("side 3", enc(ORDER | {"side": 3}), MALFORMED, 11),
    ("side as str", enc(ORDER | {"side": "buy"}), MALFORMED, 11),
    ("side 2**64-1", enc(ORDER | {"side": 2**64 - 1}), MALFORMED, 11),
    ("tif -2**63", enc(ORDER | {"tif": -(2**63)}), MALFORMED, 11),
    ("missing qty", enc({k: v for k, v in ORDER.items() if k != "qty"}), MALFORMED, 11),
    ("unknown key", enc(ORDER | {"colour": "red"}), MALFORMED, 11),
    ("req_id as str", enc(ORDER | {"req_id": "11", "qty": "x"}), MALFORMED, 0),
    ("req_id 2**64-1", enc(ORDER | {"req_id": 2**64 - 1, "qty": "x"}), MALFORMED, 2**64 - 1),
    ("req_id -2**63", enc(ORDER | {"req_id": -(2**63), "qty": "x"}), MALFORMED, -(2**63)),
    ("unknown symbol", enc(ORDER | {"symbol": "NOPE"}), RejectReason.UNKNOWN_INSTRUMENT, 11),
    ("depth 0", enc({"type": "book", "symbol": "BTCUSDT", "depth": 0, "req_id": 14}),
     RejectReason.INVALID_FIELD, 14),
    ("depth 2**64-1", enc({"type": "book", "symbol": "BTCUSDT", "depth": 2**64 - 1, "req_id": 14}),
     RejectReason.INVALID_FIELD, 14),
    ("depth -2**63", enc({"type": "book", "symbol": "BTCUSDT", "depth": -(2**63), "req_id": 14}),
     RejectReason.INVALID_FIELD, 14),
    ("batch too large", enc({"type": "order_batch", "req_id": 15,
                             "orders": [ORDER | {"client_order_id": f"b{i}"} for i in range(MAX_BATCH + 1)]}),
     RejectReason.MESSAGE_TOO_LARGE, 15),
    ("batch of a cancel", enc({"type": "order_batch", "req_id": 16,
                               "orders": [{"type": "cancel", "symbol": "BTCUSDT", "order_id": 1}]}),
     MALFORMED, 16),
    ("batch not a list", enc({"type": "order_batch", "req_id": 17, "orders": ORDER}), MALFORMED, 17),
    ("deeply nested", nested_ping(100_000), MALFORMED, 0),  # req_id 0: its reader recurses too
    ("deeply nested first", nested_ping(100_000, first=True), MALFORMED, 0),
    ("just above max_message_bytes", b"\x00" * (MAX_BYTES + 1), RejectReason.MESSAGE_TOO_LARGE, 0),
    ("a map above max_message_bytes", enc({"type": "ping", "req_id": 18, "pad": "x" * MAX_BYTES}),
     RejectReason.MESSAGE_TOO_LARGE, 0),
    ("two frames", [enc({"type": "ping", "req_id": 19}), b"more"], MALFORMED, 0),
    ("REQ-style delimiter", [b"", enc({"type": "ping", "req_id": 20})], MALFORMED, 0),
    ("five frames", [b"1", b"2", b"3", b"4", b"5"], MALFORMED, 0),
    ("five big frames", [b"x" * (MAX_BYTES - 1)] * 5, MALFORMED, 0),
]  # fmt: skip

# Huge strings: refused by the gateway, without echoing them back.
HUGE = "\u00e9" * (MAX_BYTES // 4)  # about half of max_message_bytes in UTF-8
HUGE_STRINGS: list[tuple[str, bytes]] = [
    ("symbol", enc(ORDER | {"symbol": HUGE})),
    ("client_order_id", enc(ORDER | {"client_order_id": HUGE})),
    ("cancel orig_client_order_id", enc({"type": "cancel", "symbol": "BTCUSDT", "req_id": 11,
                                         "orig_client_order_id": HUGE})),
    ("mass_cancel symbol", enc({"type": "mass_cancel", "symbol": HUGE, "req_id": 11})),
    ("book symbol", enc({"type": "book", "symbol": HUGE, "req_id": 11})),
    ("logon account", enc({"type": "logon", "account": HUGE, "req_id": 11})),
    ("unknown key name", enc(ORDER | {HUGE: 1})),
    ("unknown type name", enc({"type": HUGE, "req_id": 11})),
]  # fmt: skip

# Valid msgpack and valid types, absurd values: these reach the engine, which refuses them in a
# journaled Ack (docs/protocol.md section 8: codes 1-99 arrive as a Rejected event).
ENGINE_REFUSED: list[tuple[str, dict[str, Any], int]] = [
    ("qty 2**64-1", ORDER | {"qty": 2**64 - 1, "client_order_id": "e1"}, RejectReason.QUANTITY_OUT_OF_RANGE),
    ("qty -2**63", ORDER | {"qty": -(2**63), "client_order_id": "e2"}, RejectReason.INVALID_QUANTITY),
    ("qty 0", ORDER | {"qty": 0, "client_order_id": "e3"}, RejectReason.INVALID_QUANTITY),
    ("price -1", ORDER | {"price": -1, "client_order_id": "e4"}, RejectReason.INVALID_PRICE),
    ("price 2**64-1", ORDER | {"price": 2**64 - 1, "client_order_id": "e5"}, RejectReason.PRICE_OUT_OF_BAND),
    ("empty client_order_id", ORDER | {"client_order_id": ""}, RejectReason.INVALID_FIELD),
    ("cancel order_id 2**64-1", {"type": "cancel", "symbol": "BTCUSDT", "order_id": 2**64 - 1, "req_id": 11},
     RejectReason.UNKNOWN_ORDER),
    ("cancel order_id -1", {"type": "cancel", "symbol": "BTCUSDT", "order_id": -1, "req_id": 11},
     RejectReason.UNKNOWN_ORDER),
    ("amend order_id -2**63", {"type": "amend", "symbol": "BTCUSDT", "order_id": -(2**63), "qty": -1,
                               "req_id": 11}, RejectReason.UNKNOWN_ORDER),
]  # fmt: skip


@pytest.mark.parametrize("payload,code,req_id", [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_a_bad_message_gets_a_reject_with_a_reason(
    raw: Raw, payload: bytes | list[bytes], code: int, req_id: int
) -> None:
    raw.send(payload)
    reply = raw.reply()
    assert isinstance(reply, p.Reject), reply
    assert (reply.code, reply.req_id) == (code, req_id), reply
    assert reply.text
    raw.send(enc({"type": "ping", "req_id": 99}))  # exactly one answer: the next is the pong
    assert raw.reply() == p.Pong(99)


def test_deep_nesting_is_malformed_input_not_an_internal_error(live: Daemon, raw: Raw) -> None:
    """Regression: msgspec raises RecursionError (not a DecodeError) for values nested too
    deeply. It escaped the decoding, so the client got "internal error" without its req_id
    and the gateway logged a traceback at ERROR for input any client can send."""
    for first in (False, True):
        raw.send(nested_ping(100_000, first))
        reply = raw.reply()
        assert isinstance(reply, p.Reject) and reply.code == MALFORMED, reply
        assert reply.text and reply.text != "internal error", reply
    assert "client_message_failed" not in live.log_path.read_text(errors="replace")


def test_bad_input_on_the_admin_socket_does_not_kill_the_gateway(live: Daemon) -> None:
    """The admin socket (local, 0600) has no reject: bad requests go unanswered, and the
    gateway keeps answering good ones."""
    pid = gateway_pid(live)
    sock = Raw(f"ipc://{live.workdir / 'run' / 'admin.sock'}")
    try:
        deep = b"\x82" + enc("x") + b"\x91" * 100_000 + b"\xc0" + enc("type") + enc("status_request")
        for payload in (deep, b"\xc1", enc({"type": "status_request", "req_id": "x"}), enc([1])):
            sock.send(payload)  # unanswered: the admin protocol has no reject
        sock.send(admin.encoder.encode(admin.StatusRequest(req_id=77)))
        frame = sock.recv_frame(timeout=10)
        assert frame is not None, "the admin endpoint stopped answering"
        reply = admin.reply_decoder.decode(frame)
        assert reply.req_id == 77 and reply.gateway_pid == pid
    finally:
        sock.close()
    assert gateway_pid(live) == pid


@pytest.mark.parametrize("payload", [c[1] for c in HUGE_STRINGS], ids=[c[0] for c in HUGE_STRINGS])
def test_a_huge_string_is_refused_without_being_echoed(raw: Raw, payload: bytes) -> None:
    raw.send(payload)
    frame = raw.recv_frame()
    assert frame is not None
    reply = p.reply_decoder.decode(frame)
    assert isinstance(reply, p.Reject) and reply.code == MALFORMED, str(reply)[:200]
    assert reply.text and len(frame) <= MAX_REJECT_BYTES


@pytest.mark.parametrize(
    "request_map,reason", [c[1:] for c in ENGINE_REFUSED], ids=[c[0] for c in ENGINE_REFUSED]
)
def test_an_absurd_value_is_refused_by_the_engine_and_journaled(
    live: Daemon, raw: Raw, request_map: dict[str, Any], reason: int
) -> None:
    raw.send(enc(request_map))
    reply = raw.reply()
    assert isinstance(reply, p.Ack) and reply.req_id == 11, reply
    assert len(reply.events) == 1 and isinstance(reply.events[0], Rejected), reply
    assert reply.events[0].reason == reason, reply
    with Journal(live.data_dir / "journal" / "BTCUSDT.lmdb", readonly=True) as journal:
        record = journal.get(reply.seq)
    assert record is not None and record.events == reply.events


def test_a_frame_far_above_the_limit_drops_only_that_connection(live: Daemon, raw: Raw) -> None:
    """Above 4 x max_message_bytes libzmq closes the connection instead of reading the frame
    (docs/protocol.md, Transport); the client reconnects, and must log on again."""
    pid = gateway_pid(live)
    raw.send(b"x" * (4 * MAX_BYTES + 1))
    assert raw.recv_frame(timeout=1.0) is None
    deadline = time.monotonic() + 10
    reply: p.Reply | None = None
    while reply is None and time.monotonic() < deadline:  # ZeroMQ reconnects by itself
        raw.send(enc({"type": "book", "symbol": "BTCUSDT", "req_id": 21}))
        frame = raw.recv_frame(timeout=0.5)
        reply = None if frame is None else p.reply_decoder.decode(frame)
    assert reply == p.Reject(RejectReason.NOT_LOGGED_ON, "log on first", 21)
    assert gateway_pid(live) == pid


def test_integers_beyond_64_bits_cannot_even_be_encoded() -> None:
    """MessagePack has no integer wider than 64 bits: a client cannot send one (and bytes
    claiming one are not MessagePack, covered by the malformed cases above)."""
    with pytest.raises(OverflowError):
        enc(ORDER | {"qty": 2**64})
    with pytest.raises(OverflowError):
        enc(ORDER | {"qty": -(2**63) - 1})


# --- fuzz -------------------------------------------------------------------------------

_SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=40)
    | st.binary(max_size=40)
)  # fmt: skip
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_TAGS = ["logon", "new_order", "order_batch", "cancel", "amend", "mass_cancel", "order_status", "book",
         "ping", "status_request", "ack", "reject", ""]  # fmt: skip
_FIELDS = ["account", "protocol_version", "symbol", "client_order_id", "side", "qty", "price",
           "order_type", "tif", "post_only", "stp", "orders", "order_id", "orig_client_order_id", "depth",
           "req_id"]  # fmt: skip
_FIELD_VALUES = (
    st.sampled_from(["BTCUSDT", "ETHUSDT", "fuzz", ""]) | st.integers(-3, 5)
    | st.integers(-(2**63), 2**64 - 1) | _VALUES
)  # fmt: skip
_MESSAGES = st.one_of(
    _VALUES,
    st.fixed_dictionaries(
        {"type": st.sampled_from(_TAGS) | _SCALARS},
        optional={f: _FIELD_VALUES for f in _FIELDS},
    ),
)

_FUZZ_EXAMPLES = 250
_FUZZ_BUDGET_S = 12.0


def _expected_req_id(message: Any) -> int | None:
    """The req_id an answer must carry: the map's own if it is a readable int, else 0 (then
    only a Reject may carry it). None: cannot tell (a map that also has non-str keys)."""
    if not isinstance(message, dict):
        return 0
    if not all(isinstance(k, str) for k in message):
        return 0
    req_id = message.get("req_id", 0)
    return req_id if type(req_id) is int else 0


def test_fuzzed_messages_each_get_an_answer_and_the_gateway_survives(live: Daemon, raw: Raw) -> None:
    pid = gateway_pid(live)
    deadline = time.monotonic() + _FUZZ_BUDGET_S
    seen = {"sent": 0}

    @settings(max_examples=_FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(message=_MESSAGES)
    def one(message: Any) -> None:
        if time.monotonic() > deadline:  # bounded by time as well as by count
            return
        if isinstance(message, dict) and "req_id" not in message and all(isinstance(k, str) for k in message):
            message["req_id"] = 1000 + seen["sent"]
        payload = enc(message)
        seen["sent"] += 1
        raw.send(payload)
        want = _expected_req_id(message)
        until = time.monotonic() + 5
        while True:  # replies to earlier fuzz (a late Ack, an exec report) may come first
            left = until - time.monotonic()
            assert left > 0, f"no answer to {payload[:100]!r}"
            reply = raw.reply(timeout=left)
            if reply.req_id == want and (want != 0 or isinstance(reply, p.Reject)):
                break
        if isinstance(reply, p.Reject):
            assert reply.text and len(enc(reply)) <= MAX_REJECT_BYTES

    one()
    assert seen["sent"] >= 50, "the fuzz budget ran out before it tried anything much"
    raw.send(enc({"type": "logon", "account": "fuzz", "req_id": 1}))  # the fuzz may have logged on as another
    assert raw.reply(timeout=5) is not None
    assert gateway_pid(live) == pid


def test_seeded_random_bytes_each_get_a_malformed_reject(live: Daemon) -> None:
    rng = random.Random(20261122)
    valid = enc(ORDER)
    payloads: list[bytes] = []
    for i in range(3000):
        if i % 2:
            payloads.append(rng.randbytes(rng.randrange(0, 200)))
        else:  # a valid order with a few bytes flipped and cut short: near misses
            mutated = bytearray(valid[: rng.randrange(1, len(valid))])
            for _ in range(rng.randrange(1, 4)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            payloads.append(bytes(mutated))
    r = Raw(live.endpoint)
    try:
        r.logon("bytes")
        for payload in payloads:
            r.send(payload)
        r.send(enc({"type": "ping", "req_id": 424242}))
        replies: list[p.Reply] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(replies) < 2 * len(payloads):
            reply = r.reply(timeout=max(0.1, deadline - time.monotonic()))
            if reply == p.Pong(424242):
                break
            replies.append(reply)
        rejects = [x for x in replies if isinstance(x, p.Reject)]
        # A mutation can still be valid MessagePack with a readable req_id: any reject is fine,
        # but each payload gets exactly one answer, and it is a reject (none is a valid order).
        assert len(rejects) == len(payloads) == len(replies)
        assert {x.code for x in rejects} <= {MALFORMED, RejectReason.NOT_LOGGED_ON}
        assert all(x.text for x in rejects)
    finally:
        r.close()


# --- a flood while another client trades ------------------------------------------------


class Trader(threading.Thread):
    """A well-behaved client placing orders on both instruments until told to stop."""

    def __init__(self, d: Daemon, max_orders: int = 400) -> None:
        super().__init__(name="trader", daemon=True)
        self.d = d
        self.max_orders = max_orders
        self.stop = threading.Event()
        self.acked: list[p.Ack] = []
        self.failures: list[str] = []

    def run(self) -> None:
        try:
            with Client(self.d.endpoint, timeout=15) as client:
                client.logon("steady")
                for i in range(self.max_orders):
                    if self.stop.is_set():
                        break
                    symbol = ("BTCUSDT", "ETHUSDT")[i % 2]
                    reply = client.new_order(symbol, "buy", qty_units=1, price_units=100 + i % 7,
                                             client_order_id=f"steady-{i}")  # fmt: skip
                    if isinstance(reply, p.Ack) and isinstance(reply.events[0], Accepted):
                        self.acked.append(reply)
                    else:
                        self.failures.append(repr(reply))
        except Exception as exc:  # the test asserts on it
            self.failures.append(repr(exc))


def test_a_flood_of_garbage_leaves_others_trading_and_memory_bounded(live: Daemon) -> None:
    pid = gateway_pid(live)
    before = rss_kib(pid)
    trader = Trader(live)
    reader = Raw(live.endpoint)
    mute = Raw(live.endpoint, rcvhwm=1)  # never reads: its replies pile up towards it
    trader.start()
    try:
        reader.logon("flood-reader")
        mute.send(enc({"type": "logon", "account": "flood-mute", "req_id": 1}))
        garbage = [b"\xc1", enc({"type": "nope"}), enc(ORDER | {"qty": "x"}), enc([1, 2]), b""]
        n = 5000
        deadline = time.monotonic() + 15
        for i in range(n):
            mute.send(garbage[i % len(garbage)])
            if i % 20 == 0:  # and, the expensive kind, big requests whose reply could echo them
                mute.send(enc(ORDER | {"symbol": HUGE}))
            if time.monotonic() > deadline:
                break
        for i in range(n):
            reader.send(garbage[i % len(garbage)])
            if time.monotonic() > deadline:
                break
        sent = i + 1
        codes: list[int] = []
        while len(codes) < sent and time.monotonic() < deadline + 10:
            reply = reader.reply(timeout=max(0.1, deadline + 10 - time.monotonic()))
            assert isinstance(reply, p.Reject), reply
            codes.append(reply.code)
        assert codes == [MALFORMED] * sent
        time.sleep(0.5)  # what the gateway queued towards the mute client is there now
        grown = rss_kib(pid) - before
        assert grown < 64 * 1024, f"gateway RSS grew by {grown} KiB"
    finally:
        trader.stop.set()
        trader.join(timeout=30)
        reader.close()
        mute.close()
    assert not trader.failures, trader.failures[:3]
    assert len(trader.acked) >= 20
    assert gateway_pid(live) == pid, "the gateway was restarted"
