"""The admin endpoint: a second ROUTER on `ipc://<run_dir>/admin.sock`, local only.

Never tcp: the socket file is created mode 0600 (owner only), so only the daemon's user on
this machine can ask. Not part of the client protocol (docs/protocol.md): a `StatusRequest`
sent to the trading endpoint is an unknown message type there and gets `MALFORMED_MESSAGE`.

One request, one reply, each a msgpack map tagged by `"type"` like the client protocol:
`StatusRequest` -> `StatusReply`. The gateway asks every ready matcher (`link.AdminQuery`),
and answers once all did or after `ANSWER_TIMEOUT_S`; a matcher that did not answer is listed
with `answered = false`. Checkpoint ages and the supervisor's children table are not here:
`clob status` reads them itself (`<data_dir>/checkpoints.lmdb` read-only, and
`<run_dir>/children.json`), so a status request never costs the order path an LMDB read.
"""

from __future__ import annotations

import msgspec

_MSG = {"tag_field": "type", "forbid_unknown_fields": True, "omit_defaults": False}
_PART = {"forbid_unknown_fields": True, "omit_defaults": False}

ANSWER_TIMEOUT_S = 1.0  # how long the gateway waits for the matchers' AdminAnswers


class StatusRequest(msgspec.Struct, tag="status_request", **_MSG):
    req_id: int = 0
    # For `clob replay --compare-live`: each matcher's state hash and top `depth` levels,
    # taken at its `seq`. The hash encodes the whole book (about 70 ms per 100,000 orders), so
    # that matcher pauses for it: an operator's request, never `clob status --watch`'s.
    state_hash: bool = False
    depth: int = 0


class InstrumentStatus(msgspec.Struct, **_PART):
    symbol: str
    price_decimals: int
    qty_decimals: int
    # The gateway's view of the route to the matcher.
    ready: bool
    inflight: int
    # From the matcher (zeros / None when `answered` is false).
    answered: bool = False
    matcher_pid: int = 0
    seq: int = 0  # the journal's last seq
    resting_orders: int = 0
    best_bid: int | None = None  # price units
    best_ask: int | None = None
    batches: int = 0
    commands: int = 0
    last_batch: int = 0
    commit_p50_us: float = 0.0
    commit_p99_us: float = 0.0
    state_hash: str = ""  # only when requested
    bids: list[tuple[int, int]] = msgspec.field(default_factory=list)  # (price, qty) units
    asks: list[tuple[int, int]] = msgspec.field(default_factory=list)


class StatusReply(msgspec.Struct, tag="status_reply", **_MSG):
    req_id: int
    gateway_pid: int
    sessions: int
    instruments: list[InstrumentStatus]


encoder = msgspec.msgpack.Encoder()
request_decoder = msgspec.msgpack.Decoder(StatusRequest)
reply_decoder = msgspec.msgpack.Decoder(StatusReply)
