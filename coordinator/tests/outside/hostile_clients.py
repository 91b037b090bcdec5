#!/usr/bin/env python3
"""Hostile QUIC clients against a Cohort coordinator, written with aioquic (not this project's
code), for issue 14's outside-client test.

Opens N connections at once, each misbehaving one way (by index modulo the kinds below), and
waits until the coordinator has closed every one of them. Prints one JSON object: how many
connections of each kind were opened, refused or closed, the longest lifetime of a connection
(from the moment this script created it, which on a busy machine can be long before its first
packet leaves, to the moment the client saw it closed), the longest time a connection stayed open
after its handshake (`max_open_s`: until the coordinator's CONNECTION_CLOSE arrived, not until
aioquic's draining period ended), and the attack's total time.

Kinds:
  garbage      random bytes on the session stream
  prefix       a length prefix of 4 GiB - 1, then silence
  amplify      a Hello of ~7,000 empty strings (under the pre-login frame limit), then silence;
               the client never reads
  stream_flood 64 bidirectional streams opened at once, each with a byte on it
  idle         handshake, then nothing at all
  login        Hello and a LoginStart (a valid OPAQUE request, given in hex), never finished;
               then a CheckIn every second (non-auth messages), forever
  wrong_alpn   offers ALPN "h3" instead of "cohort/1"

Usage: hostile_clients.py HOST PORT N LOGIN_REQUEST_HEX [TIMEOUT_S [SOURCE,SOURCE,...]]
(connections are spread over the source addresses, default 127.0.0.1)
"""

import asyncio
import contextlib
import json
import os
import socket
import ssl
import struct
import sys
import time

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted

VERSION = 1
KINDS = ["garbage", "prefix", "amplify", "stream_flood", "idle", "login", "wrong_alpn"]


def text(s):
    b = s.encode()
    assert len(b) < 24
    return bytes([0x60 + len(b)]) + b


def frame(body):
    payload = struct.pack(">H", VERSION) + body
    return struct.pack(">I", len(payload)) + payload


def hello(backends=0):
    caps = (
        b"\xa3"
        + text("max_frame_len") + b"\x00"
        + text("secagg_suites") + b"\x80"
        + text("backends") + b"\x9a" + struct.pack(">I", backends) + b"\x60" * backends
    )
    inner = b"\xa3" + text("protocol_version") + b"\x01" + text("software") + text("x")
    inner += text("capabilities") + caps
    return frame(b"\xa1" + text("Hello") + inner)


def login_start(request):
    assert len(request) < 256
    req = b"\x58" + bytes([len(request)]) + request
    ls = b"\xa2" + text("username") + text("victim") + text("request") + req
    return frame(b"\xa1" + text("Auth") + b"\xa1" + text("LoginStart") + ls)


def check_in():
    ci = (
        b"\xa3" + text("task") + b"\xf6"
        + text("device") + b"\xa3" + text("charging") + b"\xf4" + text("unmetered") + b"\xf4"
        + text("idle") + b"\xf4"
        + text("num_examples") + b"\x01"
    )
    return frame(b"\xa1" + text("CheckIn") + ci)


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.closed = asyncio.get_running_loop().create_future()

    def datagram_received(self, data, addr):
        super().datagram_received(data, addr)
        # The coordinator closed the connection when its CONNECTION_CLOSE arrives. aioquic
        # reports `ConnectionTerminated` only after its draining period (three probe timeouts,
        # seconds on a loaded machine), which is the client's time, not the coordinator's.
        close = self._quic._close_event
        if close is not None and not self.closed.done():
            self.closed.set_result(close.error_code)

    def quic_event_received(self, event):
        # Received stream data is dropped unread: these clients never read what they are sent.
        if isinstance(event, ConnectionTerminated) and not self.closed.done():
            self.closed.set_result(event.error_code)


@contextlib.asynccontextmanager
async def connect_from(source, host, port, config):
    """aioquic's `connect`, from the IPv4 address `source` (aioquic's own binds the wildcard):
    the attack comes from several loopback addresses, so that the coordinator's per-address cap
    (512 connections not logged in) does not refuse most of it before its handshake."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((source, 0))
    except BaseException:
        sock.close()
        raise
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: Client(QuicConnection(configuration=config)), sock=sock
    )
    try:
        protocol.connect((host, port))
        await protocol.wait_connected()
        yield protocol
    finally:
        protocol.close()
        await protocol.wait_closed()
        transport.close()


def ended(stats, kind, began):
    """Records that a connection of `kind` attempted at `began` is over."""
    life = time.monotonic() - began
    stats["max_lifetime_s"] = max(stats["max_lifetime_s"], life)
    stats[kind]["max_lifetime_s"] = max(stats[kind].get("max_lifetime_s", 0.0), life)


async def one(source, host, port, kind, request, stats, started, timeout):
    began = time.monotonic()
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=["h3"] if kind == "wrong_alpn" else ["cohort/1"],
        verify_mode=ssl.CERT_NONE,
        idle_timeout=120.0,
        server_name="localhost",
    )
    try:
        async with connect_from(source, host, port, config) as client:
            stats[kind]["connected"] += 1
            connected = time.monotonic()
            quic = client._quic
            if kind == "garbage":
                sid = quic.get_next_available_stream_id()
                quic.send_stream_data(sid, os.urandom(4096))
            elif kind == "prefix":
                sid = quic.get_next_available_stream_id()
                quic.send_stream_data(sid, b"\xff\xff\xff\xff" + b"\x00\x01")
            elif kind == "amplify":
                sid = quic.get_next_available_stream_id()
                quic.send_stream_data(sid, hello(7000))
            elif kind == "stream_flood":
                for _ in range(64):
                    try:
                        sid = quic.get_next_available_stream_id()
                        quic.send_stream_data(sid, b"\x00")
                    except Exception:
                        stats[kind]["streams_refused"] += 1
                        break
            elif kind == "login":
                sid = quic.get_next_available_stream_id()
                quic.send_stream_data(sid, hello() + login_start(request))
            client.transmit()
            deadline = time.monotonic() + timeout
            while not client.closed.done() and time.monotonic() < deadline:
                if kind == "login":
                    quic.send_stream_data(sid, check_in())
                    client.transmit()
                try:
                    await asyncio.wait_for(asyncio.shield(client.closed), 1.0)
                except asyncio.TimeoutError:
                    pass
            if client.closed.done():
                stats[kind]["closed"] += 1
                ended(stats, kind, began)
                open_s = time.monotonic() - connected
                stats["max_open_s"] = max(stats["max_open_s"], open_s)
                stats[kind]["max_open_s"] = max(stats[kind].get("max_open_s", 0.0), open_s)
            else:
                stats[kind]["still_open"] += 1
    except Exception as e:  # refused, handshake failures (wrong ALPN), timeouts
        stats[kind]["refused"] += 1
        stats[kind].setdefault("errors", {})
        name = type(e).__name__
        stats[kind]["errors"][name] = stats[kind]["errors"].get(name, 0) + 1
        ended(stats, kind, began)


async def main():
    host, port, n, request = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 60.0
    sources = sys.argv[6].split(",") if len(sys.argv) > 6 else ["127.0.0.1"]
    request = bytes.fromhex(request)
    stats = {
        k: {"opened": 0, "connected": 0, "closed": 0, "refused": 0, "still_open": 0,
            "streams_refused": 0}
        for k in KINDS
    }
    stats["max_lifetime_s"] = 0.0
    stats["max_open_s"] = 0.0
    started = time.monotonic()
    tasks = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        stats[kind]["opened"] += 1
        source = sources[i % len(sources)]
        tasks.append(
            asyncio.create_task(one(source, host, port, kind, request, stats, started, timeout))
        )
    await asyncio.gather(*tasks)
    stats["total_s"] = time.monotonic() - started
    stats["still_open"] = sum(stats[k]["still_open"] for k in KINDS)
    print(json.dumps(stats))


if __name__ == "__main__":
    asyncio.run(main())
