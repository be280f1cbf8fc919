"""The internal link between the gateway and the matchers (version 1).

Not a public protocol: both ends ship together. Compact `array_like` structs, many
commands per ZeroMQ frame (packing is what makes ipc cheap: one send per batch, not per
order). Each frame is one `ToMatcher` or one `ToGateway` message.

`conn` is the client's ZeroMQ routing id at the gateway, carried through so the gateway
can answer the right connection without keeping per-request state.
"""

from __future__ import annotations

import msgspec

from engine.messages import Command, Event

LINK_VERSION = 1

_LINK = {"array_like": True, "gc": False}


class Envelope(msgspec.Struct, **_LINK):
    conn: bytes
    req_id: int
    command: Command  # stamped by the gateway: seq (gateway sequence) and ts (unix ns)


class CommandBatch(msgspec.Struct, tag=1, **_LINK):
    items: list[Envelope]


class StatusQuery(msgspec.Struct, tag=2, **_LINK):
    conn: bytes
    req_id: int
    account: str
    order_id: int = 0
    orig_client_order_id: str = ""


class BookQuery(msgspec.Struct, tag=3, **_LINK):
    conn: bytes
    req_id: int
    depth: int


class AdminQuery(msgspec.Struct, tag=4, **_LINK):
    """The admin endpoint's `clob status`: this matcher's counters (never touches the book)."""

    conn: bytes  # the admin connection's routing id
    req_id: int  # the gateway's token for the pending status request
    # `clob replay --compare-live`: the state hash (a full checkpoint encode: about 70 ms
    # per 100k orders, so only on request) and the top `depth` levels, all at `seq`.
    state_hash: bool = False
    depth: int = 0


ToMatcher = CommandBatch | StatusQuery | BookQuery | AdminQuery


class Outcome(msgspec.Struct, **_LINK):
    """What one command caused, after the commit that made it durable as `seq`."""

    conn: bytes
    req_id: int
    account: str
    client_order_id: str
    seq: int
    events: list[Event]
    duplicate: bool = False  # a resent client_order_id, answered from the journal


class Refusal(msgspec.Struct, **_LINK):
    """A command that was NOT journaled (e.g. the commit failed): nothing happened."""

    conn: bytes
    req_id: int
    client_order_id: str
    code: int
    text: str


class OutcomeBatch(msgspec.Struct, tag=11, **_LINK):
    symbol: str
    outcomes: list[Outcome]
    refusals: list[Refusal]


class StatusAnswer(msgspec.Struct, tag=12, **_LINK):
    symbol: str
    conn: bytes
    req_id: int
    found: bool
    order_id: int = 0
    client_order_id: str = ""
    side: int = 0
    price: int = 0
    qty: int = 0
    remaining: int = 0


class BookAnswer(msgspec.Struct, tag=13, **_LINK):
    symbol: str
    conn: bytes
    req_id: int
    seq: int
    bids: list[tuple[int, int]]
    asks: list[tuple[int, int]]


class MatcherReady(msgspec.Struct, tag=14, **_LINK):
    """Sent once a matcher has rebuilt its book and takes orders."""

    symbol: str
    seq: int
    pid: int


class AdminAnswer(msgspec.Struct, tag=15, **_LINK):
    symbol: str
    conn: bytes
    req_id: int
    seq: int  # the journal's last seq
    pid: int
    resting_orders: int
    best_bid: int | None  # price units; None: that side is empty
    best_ask: int | None
    batches: int  # group commits since start
    commands: int  # journaled commands since start
    last_batch: int  # commands in the latest group commit
    commit_p50_us: float  # journal commit latency over the last commits (<= 1024)
    commit_p99_us: float
    state_hash: str = ""  # only when asked for
    bids: list[tuple[int, int]] = msgspec.field(default_factory=list)  # (price, qty) units
    asks: list[tuple[int, int]] = msgspec.field(default_factory=list)


ToGateway = OutcomeBatch | StatusAnswer | BookAnswer | MatcherReady | AdminAnswer

encoder = msgspec.msgpack.Encoder()
to_matcher = msgspec.msgpack.Decoder(ToMatcher)
to_gateway = msgspec.msgpack.Decoder(ToGateway)
