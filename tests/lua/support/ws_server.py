"""ws_server.py -- a WebSocket peer for sluice.ws's specs and benchmark.

The server is Debian's python3-websockets (10.4), which nobody here wrote;
run it with /usr/bin/python3. It binds 127.0.0.1 on a free port and writes
"<pid> <port>" to --portfile (atomically) once it listens. It exits by
itself after --lifetime seconds, so a spec that dies leaves no server.

    ws_server.py serve --portfile F [--tls CERT KEY] [--lifetime S]
    ws_server.py proxy --portfile F --upstream PORT [--lifetime S]

serve: what a connection gets depends on its path (query included):
    /echo                 every message back, text as text, binary as binary
    /fragment?parts=N     on each message m: m sent back in N fragments
    /close?code=C&reason=R   closes at once with C and R (1000, "" default)
    /ping                 pings the client, then sends "pong <payload>"
    /send?sizes=A,B,...   text messages of those sizes ('x' * size), then idles
    /flood?bytes=N&size=S  N bytes in text messages of S bytes as fast as the
                          client takes them (websockets' send waits for the
                          socket: backpressure), then "done <messages>"
    /bench?n=N&size=S      N JSON text messages of about S bytes written as
                          raw frames, as fast as the socket takes them
    /headers              one message: the request's headers as JSON
    /protocol             one message: the subprotocol chosen ("" if none)
                          (the server speaks "chat" and "superchat")
proxy: forwards to 127.0.0.1:PORT, and injects a fault chosen by the query
parameter fault= of the upgrade request:
    fault=mute     reads the upgrade request and never answers
    fault=reset    after the upgrade, waits for the client's first bytes,
                   then resets the connection (RST, SO_LINGER 0)
    fault=stall    after the upgrade, forwards nothing more either way and
                   keeps both sockets open (a half-open peer)
    fault=garbage  after the upgrade, sends a frame with a reserved opcode
    fault=badlen   after the upgrade, sends a frame header whose 64-bit
                   length has its top bit set
"""
import argparse
import asyncio
import json
import os
import socket
import ssl
import struct
import sys
import urllib.parse

import websockets


def query(path):
    q = urllib.parse.urlparse(path).query
    return {k: v[0] for k, v in urllib.parse.parse_qs(q).items()}


def route(path):
    return urllib.parse.urlparse(path).path


def text_frame(payload):
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    return head + payload


async def handler(ws, path=None):
    path = ws.path
    r, q = route(path), query(path)
    try:
        if r == "/echo":
            async for m in ws:
                await ws.send(m)
        elif r == "/fragment":
            parts = int(q.get("parts", "3"))
            async for m in ws:
                step = max(1, -(-len(m) // parts))
                await ws.send([m[i:i + step] for i in range(0, len(m), step)])
        elif r == "/close":
            await ws.close(code=int(q.get("code", "1000")), reason=q.get("reason", ""))
        elif r == "/ping":
            waiter = await ws.ping(b"hello")
            await asyncio.wait_for(waiter, 10)
            await ws.send("pong hello")
            await ws.wait_closed()
        elif r == "/send":
            for size in q["sizes"].split(","):
                await ws.send("x" * int(size))
            await ws.wait_closed()
        elif r == "/flood":
            total, size = int(q["bytes"]), int(q["size"])
            payload = "y" * size
            sent = 0
            while sent * size < total:
                await ws.send(payload)
                sent += 1
            await ws.send("done %d" % sent)
            await ws.wait_closed()
        elif r == "/bench":
            n, size = int(q["n"]), int(q.get("size", "1024"))
            frames = []
            for i in range(1000):
                body = {"e": "depthUpdate", "E": 1700000000000 + i, "s": "BTCUSDT",
                        "U": i * 10, "u": i * 10 + 9, "b": [], "a": []}
                while len(json.dumps(body)) < size - 40:
                    body["b"].append(["%d.%02d" % (30000 + i % 97, i % 100), "0.%05d" % (i * 7 % 99999)])
                frames.append(text_frame(json.dumps(body).encode()))
            chunk = b"".join(frames)
            left = n
            while left > 0:
                if left >= 1000:
                    ws.transport.write(chunk)
                    left -= 1000
                else:
                    ws.transport.write(b"".join(frames[:left]))
                    left = 0
                await ws.drain()
            await ws.wait_closed()
        elif r == "/headers":
            await ws.send(json.dumps({k.lower(): v for k, v in ws.request_headers.raw_items()}))
            await ws.wait_closed()
        elif r == "/protocol":
            await ws.send(ws.subprotocol or "")
            await ws.wait_closed()
        else:
            await ws.close(code=4404, reason="no route " + r)
    except websockets.ConnectionClosed:
        pass


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except (ConnectionError, OSError):
            pass


async def read_head(reader):
    return await reader.readuntil(b"\r\n\r\n")


def reset(writer):
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def proxy_conn(creader, cwriter, upstream):
    try:
        head = await read_head(creader)
        line = head.split(b"\r\n", 1)[0].decode()
        fault = query(line.split(" ")[1]).get("fault", "")
        if fault == "mute":
            await asyncio.sleep(3600)
        ureader, uwriter = await asyncio.open_connection("127.0.0.1", upstream)
        uwriter.write(head)
        cwriter.write(await read_head(ureader))
        await cwriter.drain()
        if fault == "reset":
            await creader.read(1)
            reset(cwriter)
            uwriter.close()
        elif fault == "stall":
            await asyncio.sleep(3600)
        elif fault in ("garbage", "badlen"):
            cwriter.write(b"\x83\x00" if fault == "garbage" else b"\x81\x7f\x80" + b"\x00" * 7)
            await cwriter.drain()
            while await creader.read(65536):
                pass
            uwriter.close()
        else:
            await asyncio.gather(pipe(creader, uwriter), pipe(ureader, cwriter))
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        pass
    finally:
        cwriter.close()


def announce(portfile, port):
    tmp = portfile + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d %d\n" % (os.getpid(), port))
    os.rename(tmp, portfile)


async def main(args):
    if args.mode == "serve":
        ctx = None
        if args.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(args.tls[0], args.tls[1])
        server = await websockets.serve(handler, "127.0.0.1", 0, ssl=ctx, max_size=None,
                                        subprotocols=["chat", "superchat"], ping_interval=None)
    else:
        server = await asyncio.start_server(
            lambda r, w: proxy_conn(r, w, args.upstream), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    announce(args.portfile, port)
    await asyncio.sleep(args.lifetime)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["serve", "proxy"])
    p.add_argument("--portfile", required=True)
    p.add_argument("--tls", nargs=2)
    p.add_argument("--upstream", type=int)
    p.add_argument("--lifetime", type=float, default=600)
    a = p.parse_args()
    try:
        asyncio.run(main(a))
    except KeyboardInterrupt:
        sys.exit(0)
