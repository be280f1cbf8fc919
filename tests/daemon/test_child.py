"""daemon.child.end_context: a process's last ZeroMQ call is bounded in time."""

from __future__ import annotations

import time

import zmq

from daemon.child import end_context


def test_a_context_with_nothing_queued_ends_at_once() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind_to_random_port("tcp://127.0.0.1")
    assert end_context(ctx, 0, 5.0)
    assert ctx.closed and router.closed


def test_a_term_that_would_block_for_good_is_given_up_after_the_bound() -> None:
    # A message queued for a peer that never comes, on a socket that lingers forever: by
    # the zmq_ctx_term contract, term waits for good. The caller waits only `within_s`.
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.linger = -1
    push.connect("tcp://127.0.0.1:9")  # discard port: nothing listens on loopback
    push.send(b"never delivered")
    started = time.monotonic()
    assert not end_context(ctx, None, 0.3)
    assert time.monotonic() - started < 3.0  # a liveness bound, not a speed test


def test_linger_given_overrides_each_sockets_own() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.linger = -1
    push.connect("tcp://127.0.0.1:9")
    push.send(b"dropped at close")
    assert end_context(ctx, 0, 5.0)
