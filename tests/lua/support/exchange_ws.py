"""exchange_ws.py -- a mock of Binance spot's and Bybit v5's public market
streams and the REST endpoints a stream collector needs, on one port.

Debian's python3-websockets (10.4) speaks WebSocket; run it with
/usr/bin/python3. It binds 127.0.0.1 on a free port, writes "<pid> <port>"
to --portfile once it listens, and exits by itself after --lifetime seconds.

    exchange_ws.py --portfile F [--levels N] [--seed S] [--lifetime S]

Each exchange's documented protocol:

Binance spot (wss://stream.binance.com:9443)
    /ws, /ws/<stream>[/<stream>...]   raw streams: events as they are
    /stream[?streams=<s1>/<s2>]       combined: {"stream": name, "data": event}
    {"method": "SUBSCRIBE" | "UNSUBSCRIBE", "params": [...], "id": n} ->
    {"result": null, "id": n}; {"method": "LIST_SUBSCRIPTIONS", "id": n} ->
    {"result": [...], "id": n}; a bad request -> {"error": {"code", "msg"},
    "id": n}. Streams <symbol>@trade and <symbol>@depth[@100ms] (lower case):
      trade        {"e":"trade","E","s","t","p","q","T","m","M"}
      depthUpdate  {"e":"depthUpdate","E","s","U","u","b":[[p,q]],"a":[[p,q]]}
    REST GET /api/v3/depth?symbol=&limit= {lastUpdateId, bids, asks};
    /api/v3/trades?symbol=&limit= (the newest, oldest first);
    /api/v3/historicalTrades?symbol=&limit=&fromId= {id, price, qty,
    quoteQty, time, isBuyerMaker, isBestMatch}; an unknown symbol -> 400
    {"code": -1121, "msg": "Invalid symbol."}.
Bybit v5 (wss://stream.bybit.com)
    /v5/public/spot | linear | inverse
    {"op": "subscribe" | "unsubscribe", "args": [...], "req_id": r} ->
    {"success": true, "ret_msg": "", "conn_id", "req_id": r, "op"} (false
    and "error:..." for a topic it does not have or one already
    subscribed); {"op": "ping", "req_id"} -> {"success": true, "ret_msg":
    "pong", "conn_id", "req_id", "op": "ping"}. Topics:
      orderbook.50.SYM  a "snapshot" right after the subscribe, then
                        "delta"s: {"topic","type","ts","data":{"s","b","a",
                        "u","seq"},"cts"}; u advances by one a message
      publicTrade.SYM   {"topic","type":"snapshot","ts","data":[{"T","s","S",
                        "v","p","L","i","BT"}]}
    REST GET /v5/market/recent-trade?category=&symbol=&limit= (spot 1-60,
    default 60; others 1-1000, default 500; newest first) and
    /v5/market/orderbook?category=&symbol=&limit=.

Markets: BTCUSDT and ETHUSDT on Binance spot and on Bybit spot and
linear; each a true book of about --levels levels a side (at most 50 on
Bybit: its orderbook.50 view is then the whole book) and a list of trades.
Every diff is applied to the truth, which is kept for each update id.

Control (GET, JSON answers; ex = binance | bybit, category for bybit:
spot | linear, default linear):
    /control/step?ex=&symbol=&diffs=N&trades=M&drop=i,j&dup=1
        N diffs then M trades, sent to every subscriber; diffs number i, j
        (1-based) are applied to the truth but not sent; dup=1 sends every
        trade twice. -> {id, trade_id, sent, dropped}
    /control/disconnect?ex=&mode=abort|close&code=&trades=N&symbol=
        ends every connection of ex (abort: no close frame, like a reset),
        then makes N trades of symbol while no one is subscribed. -> {closed}
    /control/config?ex=&symbol=&snapshot_lag=K
        the REST depth snapshot answers the truth as of K diffs ago
    /control/book?ex=&symbol=&id=  the true book at update id (404: unknown)
    /control/trades?ex=&symbol=    every trade made, oldest first
    /control/state                 connects, subscriptions, requests served
    /control/flood?ex=&symbol=&kind=trades|depth&bytes=B|messages=N&per=P
        as fast as the sockets take them (raw frames, pre-built): trades P
        a message (Bybit publicTrade; Binance sends one a message), or
        diffs (applied to the truth, no history kept). Answers when all are
        written. -> {messages, bytes, trades, id}
"""
import argparse
import asyncio
import http
import json
import os
import random
import struct
import sys
import time
import urllib.parse
import uuid

import websockets

SYMBOLS = ("BTCUSDT", "ETHUSDT")
MIDS = {"BTCUSDT": 3000000, "ETHUSDT": 200000}  # in ticks of 0.01
HISTORY_MAX = 50000


def now_ms():
    return int(time.time() * 1000)


def text_frame(payload):
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    return head + payload


class Market:
    """One symbol of one exchange (and category): the true book, its
    history by update id, and the trades."""

    def __init__(self, ex, category, symbol, levels, rng):
        self.ex, self.category, self.symbol = ex, category, symbol
        self.rng = rng
        self.levels = min(levels, 50) if ex == "bybit" else levels
        self.mid = MIDS[symbol]
        self.bids, self.asks = {}, {}
        for i in range(1, self.levels + 1):
            self.bids[self.mid - i] = self.size()
            self.asks[self.mid + i] = self.size()
        self.id = 1000 if ex == "bybit" else 7000000000
        self.seq = 50000000
        self.history = {}
        self.order = []
        self.keep()
        self.trades = []
        self.trade_base = 3000000000 if ex == "binance" else 2100000000000000000
        self.snapshot_lag = 0

    # exact text: Binance writes 8 decimals, Bybit the instrument's
    def price_text(self, ticks):
        s = "%d.%02d" % (ticks // 100, ticks % 100)
        return s + "000000" if self.ex == "binance" else s

    def size_text(self, milli):
        s = "%d.%03d" % (milli // 1000, milli % 1000)
        return s + "00000" if self.ex == "binance" else s

    def size(self):
        return self.rng.randint(1, 50000)

    def zero(self):
        return "0.00000000" if self.ex == "binance" else "0"

    def sides(self, depth=None):
        b = sorted(self.bids, reverse=True)[:depth]
        a = sorted(self.asks)[:depth]
        return ([[self.price_text(p), self.size_text(self.bids[p])] for p in b],
                [[self.price_text(p), self.size_text(self.asks[p])] for p in a])

    def keep(self, history=True):
        if not history:
            return
        self.history[self.id] = self.sides()
        self.order.append(self.id)
        if len(self.order) > HISTORY_MAX:
            self.history.pop(self.order.pop(0), None)

    def side_changes(self, book, sign):
        out, seen = [], set()
        rng = self.rng
        for _ in range(rng.randint(1, 4)):
            r = rng.random()
            n = len(book)
            if (r < 0.3 and n > self.levels * 0.8) or n > self.levels * 1.2 or (self.ex == "bybit" and n >= 50):
                p = rng.choice(list(book))
                if p in seen:
                    continue
                del book[p]
                out.append([p, None])
            elif r < 0.4:
                p = self.mid + sign * rng.randint(2 * self.levels + 1, 3 * self.levels)
                if p in seen or p in book:
                    continue
                out.append([p, None])  # removing a level the book never had: normal
            elif r < 0.75 and n > 0:
                p = rng.choice(list(book))
                if p in seen:
                    continue
                book[p] = self.size()
                out.append([p, book[p]])
            else:
                p = self.mid + sign * rng.randint(1, 2 * self.levels)
                if p in seen:
                    continue
                book[p] = self.size()
                out.append([p, book[p]])
            seen.add(p)
        return [[self.price_text(p), self.size_text(q) if q is not None else self.zero()] for p, q in out]

    def diff(self, history=True):
        """The next diff, applied to the truth -> (first, last, bids, asks)."""
        b = self.side_changes(self.bids, -1)
        a = self.side_changes(self.asks, 1)
        first = self.id + 1
        self.id += 1 if self.ex == "bybit" else self.rng.randint(1, 5)
        self.seq += self.rng.randint(1, 9)
        self.keep(history)
        return first, self.id, b, a

    def trade(self):
        n = len(self.trades) + 1
        t = {"id": self.trade_base + n, "ts": now_ms(),
             "price": self.price_text(self.mid + self.rng.randint(-3, 3)),
             "size": self.size_text(self.rng.randint(1, 9999)),
             "buyer_maker": self.rng.random() < 0.5}
        self.trades.append(t)
        return t

    def snapshot_id(self):
        if self.snapshot_lag and len(self.order) > self.snapshot_lag:
            return self.order[-1 - self.snapshot_lag]
        return self.id


# --- the wire formats -------------------------------------------------------

def binance_depth(m, first, last, b, a):
    return "%s@depth@100ms" % m.symbol.lower(), {
        "e": "depthUpdate", "E": now_ms(), "s": m.symbol, "U": first, "u": last, "b": b, "a": a}


def binance_trade(m, t):
    return "%s@trade" % m.symbol.lower(), {
        "e": "trade", "E": now_ms(), "s": m.symbol, "t": t["id"], "p": t["price"], "q": t["size"],
        "T": t["ts"], "m": t["buyer_maker"], "M": True}


def bybit_book(m, kind, b, a):
    ts = now_ms()
    return "orderbook.50.%s" % m.symbol, {
        "topic": "orderbook.50.%s" % m.symbol, "type": kind, "ts": ts,
        "data": {"s": m.symbol, "b": b, "a": a, "u": m.id, "seq": m.seq}, "cts": ts - 3}


def bybit_trade_item(m, t):
    return {"T": t["ts"], "s": m.symbol, "S": "Sell" if t["buyer_maker"] else "Buy", "v": t["size"],
            "p": t["price"], "L": "ZeroPlusTick", "i": str(t["id"]), "BT": False}


def bybit_trades(m, ts):
    return "publicTrade.%s" % m.symbol, {
        "topic": "publicTrade.%s" % m.symbol, "type": "snapshot", "ts": now_ms(),
        "data": [bybit_trade_item(m, t) for t in ts]}


# --- the server -------------------------------------------------------------

class Conn:
    def __init__(self, ws, ex, category, combined):
        self.ws, self.ex, self.category, self.combined = ws, ex, category, combined
        self.subs = set()
        self.id = str(uuid.uuid4())


class Mock:
    def __init__(self, levels, seed):
        rng = random.Random(seed)
        self.markets = {}
        for sym in SYMBOLS:
            self.markets[("binance", "spot", sym)] = Market("binance", "spot", sym, levels, rng)
            for cat in ("spot", "linear"):
                self.markets[("bybit", cat, sym)] = Market("bybit", cat, sym, levels, rng)
        self.conns = set()
        self.counts = {"connects": {"binance": 0, "bybit": 0}, "subscribes": {"binance": 0, "bybit": 0},
                       "pings": 0, "depth": 0, "trades": 0, "recent_trade": 0, "historical": 0}

    def market(self, ex, symbol, category=None):
        if ex == "binance":
            category = "spot"
        return self.markets.get((ex, category or "linear", (symbol or "").upper()))

    # what a subscriber of topic gets, written as the exchange does
    def wire(self, c, topic, payload):
        if c.ex == "binance" and c.combined:
            return json.dumps({"stream": topic, "data": payload})
        return json.dumps(payload)

    def subscribers(self, m, topic):
        return [c for c in list(self.conns)
                if c.ex == m.ex and (c.ex == "binance" or c.category == m.category) and topic in c.subs]

    async def publish(self, m, topic, payload):
        n = 0
        for c in self.subscribers(m, topic):
            try:
                await c.ws.send(self.wire(c, topic, payload))
                n += 1
            except websockets.ConnectionClosed:
                pass
        return n

    # --- WebSocket ---------------------------------------------------------

    async def handler(self, ws, path=None):
        path = ws.path
        u = urllib.parse.urlparse(path)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(u.query).items()}
        if u.path == "/ws" or u.path.startswith("/ws/") or u.path == "/stream":
            c = Conn(ws, "binance", "spot", u.path == "/stream")
            names = u.path[4:].split("/") if u.path.startswith("/ws/") else q.get("streams", "").split("/")
            for s in names:
                if s:
                    c.subs.add(self.binance_stream(s))
            serve = self.binance_conn
        elif u.path.startswith("/v5/public/") and u.path[11:] in ("spot", "linear", "inverse"):
            c = Conn(ws, "bybit", u.path[11:], False)
            serve = self.bybit_conn
        else:
            await ws.close(code=1008, reason="no such stream")
            return
        self.counts["connects"][c.ex] += 1
        self.conns.add(c)
        try:
            await serve(c)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.conns.discard(c)

    @staticmethod
    def binance_stream(name):
        # <symbol>@depth and @depth@1000ms are the same events here as @depth@100ms
        n = name.lower()
        if n.endswith("@depth") or n.endswith("@depth@1000ms"):
            n = n.split("@")[0] + "@depth@100ms"
        return n

    def binance_valid(self, name):
        sym, _, kind = name.partition("@")
        return kind in ("trade", "depth@100ms") and self.market("binance", sym) is not None

    async def binance_conn(self, c):
        async for raw in c.ws:
            try:
                m = json.loads(raw)
            except ValueError:
                await c.ws.send(json.dumps({"error": {"code": 3, "msg": "Invalid JSON"}, "id": None}))
                continue
            rid = m.get("id") if isinstance(m, dict) else None
            method = m.get("method") if isinstance(m, dict) else None
            params = m.get("params", []) if isinstance(m, dict) else None
            if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
                names = [self.binance_stream(p) for p in params] if isinstance(params, list) else None
                if names is None or not all(isinstance(p, str) and self.binance_valid(p) for p in names):
                    await c.ws.send(json.dumps({"error": {"code": 2, "msg": "Invalid request: invalid stream name"},
                                                "id": rid}))
                    continue
                if method == "SUBSCRIBE":
                    self.counts["subscribes"]["binance"] += 1
                    c.subs.update(names)
                else:
                    c.subs.difference_update(names)
                await c.ws.send(json.dumps({"result": None, "id": rid}))
            elif method == "LIST_SUBSCRIPTIONS":
                await c.ws.send(json.dumps({"result": sorted(c.subs), "id": rid}))
            else:
                await c.ws.send(json.dumps({"error": {"code": 0, "msg": "Unknown property"}, "id": rid}))

    def bybit_topic(self, category, t):
        parts = t.split(".") if isinstance(t, str) else []
        if len(parts) == 3 and parts[0] == "orderbook" and parts[1] in ("50", "200", "500"):
            m = self.market("bybit", parts[2], category)
            return m and ("orderbook.50." + m.symbol, m)
        if len(parts) == 2 and parts[0] == "publicTrade":
            m = self.market("bybit", parts[1], category)
            return m and (t, m)
        return None

    async def bybit_conn(self, c):
        async for raw in c.ws:
            try:
                m = json.loads(raw)
                op = m.get("op")
            except (ValueError, AttributeError):
                await c.ws.send(json.dumps({"success": False, "ret_msg": "error:request not json",
                                            "conn_id": c.id, "op": ""}))
                continue
            rid = m.get("req_id", "")
            reply = {"success": True, "ret_msg": "", "conn_id": c.id, "req_id": rid, "op": op}
            if op == "ping":
                self.counts["pings"] += 1
                reply["ret_msg"] = "pong"
                await c.ws.send(json.dumps(reply))
            elif op in ("subscribe", "unsubscribe"):
                args = m.get("args") if isinstance(m.get("args"), list) else []
                found = [(t, self.bybit_topic(c.category, t)) for t in args]
                bad = [t for t, f in found if not f]
                dup = [t for t, f in found if f and op == "subscribe" and f[0] in c.subs]
                if bad or dup or not args or len(args) > 10:
                    reply["success"] = False
                    reply["ret_msg"] = ("error:handler not found,topic:%s" % bad[0] if bad else
                                        "error:already subscribed,topic:%s" % dup[0] if dup else
                                        "error:args size must be in [1, 10]")
                    await c.ws.send(json.dumps(reply))
                    continue
                if op == "unsubscribe":
                    for _, (topic, _) in found:
                        c.subs.discard(topic)
                    await c.ws.send(json.dumps(reply))
                    continue
                self.counts["subscribes"]["bybit"] += 1
                await c.ws.send(json.dumps(reply))
                for _, (topic, mk) in found:
                    c.subs.add(topic)
                    if topic.startswith("orderbook."):
                        b, a = mk.sides()
                        await c.ws.send(json.dumps(bybit_book(mk, "snapshot", b, a)[1]))
            else:
                reply["success"] = False
                reply["ret_msg"] = "error:unknown op %s" % op
                await c.ws.send(json.dumps(reply))

    # --- HTTP: REST and control -------------------------------------------

    async def process_request(self, path, headers):
        u = urllib.parse.urlparse(path)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(u.query).items()}
        if headers.get("Upgrade", "").lower() == "websocket":
            return None
        try:
            if u.path.startswith("/control/"):
                status, body = await self.control(u.path[9:], q)
            elif u.path.startswith("/api/v3/"):
                status, body = self.binance_rest(u.path[8:], q)
            elif u.path.startswith("/v5/market/"):
                status, body = self.bybit_rest(u.path[11:], q)
            else:
                status, body = 404, {"msg": "no route " + u.path}
        except (KeyError, ValueError) as e:
            status, body = 400, {"msg": "bad request: %r" % (e,)}
        data = json.dumps(body).encode()
        return (http.HTTPStatus(status), [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                                          ("Connection", "close")], data)

    def binance_rest(self, name, q):
        m = self.market("binance", q.get("symbol"))
        if m is None:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        if name == "depth":
            limit = int(q.get("limit", "100"))
            if not 1 <= limit <= 5000:
                return 400, {"code": -1100, "msg": "Illegal characters found in parameter 'limit'."}
            self.counts["depth"] += 1
            sid = m.snapshot_id()
            b, a = m.history[sid] if sid in m.history else m.sides()
            return 200, {"lastUpdateId": sid, "bids": b[:limit], "asks": a[:limit]}
        if name in ("trades", "historicalTrades"):
            limit = int(q.get("limit", "500"))
            if not 1 <= limit <= 1000:
                return 400, {"code": -1100, "msg": "Illegal characters found in parameter 'limit'."}
            if name == "historicalTrades" and "fromId" in q:
                self.counts["historical"] += 1
                start = max(0, int(q["fromId"]) - m.trade_base - 1)
                got = m.trades[start:start + limit]
            else:
                self.counts["trades"] += 1
                got = m.trades[-limit:]
            return 200, [{"id": t["id"], "price": t["price"], "qty": t["size"],
                          "quoteQty": "%.8f" % (float(t["price"]) * float(t["size"])), "time": t["ts"],
                          "isBuyerMaker": t["buyer_maker"], "isBestMatch": True} for t in got]
        return 404, {"code": -1, "msg": "no such endpoint"}

    def bybit_rest(self, name, q):
        cat = q.get("category")
        m = self.market("bybit", q.get("symbol"), cat) if cat in ("spot", "linear") else None
        if m is None:
            return 200, {"retCode": 10001, "retMsg": "params error: symbol invalid", "result": {},
                         "retExtInfo": {}, "time": now_ms()}
        if name == "recent-trade":
            hi = 60 if cat == "spot" else 1000
            limit = int(q.get("limit", "60" if cat == "spot" else "500"))
            if not 1 <= limit <= hi:
                return 200, {"retCode": 10001, "retMsg": "params error: limit", "result": {},
                             "retExtInfo": {}, "time": now_ms()}
            self.counts["recent_trade"] += 1
            got = list(reversed(m.trades[-limit:]))
            return 200, {"retCode": 0, "retMsg": "OK", "result": {"category": cat, "list": [
                {"execId": str(t["id"]), "symbol": m.symbol, "price": t["price"], "size": t["size"],
                 "side": "Sell" if t["buyer_maker"] else "Buy", "time": str(t["ts"]), "isBlockTrade": False,
                 "isRPITrade": False} for t in got]}, "retExtInfo": {}, "time": now_ms()}
        if name == "orderbook":
            limit = int(q.get("limit", "25"))
            b, a = m.sides(limit)
            ts = now_ms()
            return 200, {"retCode": 0, "retMsg": "OK", "result": {"s": m.symbol, "b": b, "a": a, "ts": ts,
                                                                  "u": m.id, "seq": m.seq, "cts": ts - 3},
                         "retExtInfo": {}, "time": ts}
        return 404, {"retCode": 10404, "retMsg": "no such endpoint"}

    async def control(self, cmd, q):
        if cmd == "state":
            subs = {}
            for c in self.conns:
                for s in c.subs:
                    key = c.ex + ":" + s
                    subs[key] = subs.get(key, 0) + 1
            return 200, {"connections": {ex: sum(1 for c in self.conns if c.ex == ex) for ex in ("binance", "bybit")},
                         "subscriptions": subs, "counts": self.counts}
        ex = q.get("ex", "binance")
        if cmd == "disconnect":
            closed = 0
            for c in [c for c in self.conns if c.ex == ex]:
                closed += 1
                self.conns.discard(c)
                if q.get("mode", "abort") == "abort":
                    c.ws.transport.abort()
                else:
                    await c.ws.close(code=int(q.get("code", "1001")), reason="going away")
            m = self.market(ex, q.get("symbol", "BTCUSDT"), q.get("category"))
            for _ in range(int(q.get("trades", "0"))):
                m.trade()
            return 200, {"closed": closed}
        m = self.market(ex, q.get("symbol", "BTCUSDT"), q.get("category"))
        if m is None:
            return 404, {"msg": "no such market"}
        if cmd == "step":
            drop = set(int(x) for x in q.get("drop", "").split(",") if x)
            sent, dropped = 0, []
            for i in range(1, int(q.get("diffs", "0")) + 1):
                first, last, b, a = m.diff()
                if i in drop:
                    dropped.append([first, last])
                    continue
                if ex == "binance":
                    sent += await self.publish(m, *binance_depth(m, first, last, b, a))
                else:
                    sent += await self.publish(m, *bybit_book(m, "delta", b, a))
            for _ in range(int(q.get("trades", "0"))):
                t = m.trade()
                for _ in range(2 if q.get("dup") == "1" else 1):
                    if ex == "binance":
                        sent += await self.publish(m, *binance_trade(m, t))
                    else:
                        sent += await self.publish(m, *bybit_trades(m, [t]))
            return 200, {"id": m.id, "trade_id": m.trades[-1]["id"] if m.trades else None, "sent": sent,
                         "dropped": dropped}
        if cmd == "config":
            m.snapshot_lag = int(q.get("snapshot_lag", "0"))
            return 200, {"snapshot_lag": m.snapshot_lag}
        if cmd == "book":
            sid = int(q["id"])
            if sid not in m.history:
                return 404, {"msg": "no book at id %d" % sid}
            b, a = m.history[sid]
            return 200, {"id": sid, "bids": b, "asks": a}
        if cmd == "trades":
            return 200, [{"id": str(t["id"]), "ts": t["ts"], "price": t["price"], "size": t["size"],
                          "side": "sell" if t["buyer_maker"] else "buy"} for t in m.trades]
        if cmd == "flood":
            return 200, await self.flood(m, q)
        return 404, {"msg": "no control " + cmd}

    async def flood(self, m, q):
        kind = q.get("kind", "trades")
        per = int(q.get("per", "1"))
        limit_bytes = int(q.get("bytes", "0"))
        limit_msgs = int(q.get("messages", "0"))
        counted = {"messages": 0, "bytes": 0, "trades": 0}
        topic = ("%s@trade" % m.symbol.lower() if m.ex == "binance" else "publicTrade." + m.symbol) \
            if kind == "trades" else ("%s@depth@100ms" % m.symbol.lower() if m.ex == "binance"
                                      else "orderbook.50." + m.symbol)
        conns = self.subscribers(m, topic)
        if not conns:
            return {"messages": 0, "bytes": 0, "trades": 0, "id": m.id, "connections": 0}

        def payloads():
            while True:
                if limit_msgs and counted["messages"] >= limit_msgs:
                    return
                if limit_bytes and counted["bytes"] >= limit_bytes:
                    return
                if kind == "depth":
                    first, last, b, a = m.diff(history=False)
                    p = binance_depth(m, first, last, b, a)[1] if m.ex == "binance" else \
                        bybit_book(m, "delta", b, a)[1]
                elif m.ex == "binance":
                    p = binance_trade(m, m.trade())[1]
                    counted["trades"] += 1
                else:
                    p = bybit_trades(m, [m.trade() for _ in range(per)])[1]
                    counted["trades"] += per
                frames = [text_frame(self.wire(c, topic, p).encode()) for c in conns]
                counted["messages"] += 1
                counted["bytes"] += len(frames[0]) if frames else 0
                yield frames

        async def write(batch):
            for i, c in enumerate(conns):
                if c.ws.open:
                    c.ws.transport.write(b"".join(f[i] for f in batch))
            for c in conns:
                try:
                    await c.ws.drain()
                except (websockets.ConnectionClosed, ConnectionError):
                    pass  # a reader that went away misses the rest

        if q.get("prebuild") == "1" or not limit_bytes:
            # every frame built first: the readers are what is measured
            every = list(payloads())
            for i in range(0, len(every), 4096):
                await write(every[i:i + 4096])
        else:
            batch, size = [], 0
            for frames in payloads():
                batch.append(frames)
                size += len(frames[0]) if frames else 0
                if size >= 1 << 20:
                    await write(batch)
                    batch, size = [], 0
            if batch:
                await write(batch)
        m.keep()
        return {"messages": counted["messages"], "bytes": counted["bytes"], "trades": counted["trades"],
                "id": m.id, "connections": len(conns)}


def announce(portfile, port):
    tmp = portfile + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d %d\n" % (os.getpid(), port))
    os.rename(tmp, portfile)


async def main(args):
    mock = Mock(args.levels, args.seed)
    server = await websockets.serve(mock.handler, "127.0.0.1", 0, process_request=mock.process_request,
                                    max_size=None, ping_interval=None, compression=None)
    announce(args.portfile, server.sockets[0].getsockname()[1])
    await asyncio.sleep(args.lifetime)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--portfile", required=True)
    p.add_argument("--levels", type=int, default=40)
    p.add_argument("--seed", type=int, default=20)
    p.add_argument("--lifetime", type=float, default=600)
    a = p.parse_args()
    try:
        asyncio.run(main(a))
    except KeyboardInterrupt:
        sys.exit(0)
