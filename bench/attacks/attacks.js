'use strict';
// Hostile-client attacks against the JS reference server (socketcluster-server 20.0.1,
// default options) and against `socketcluster serve` (default options), side by side.
// See bench/attacks/README.md; the driver is bench/attacks/run.
//
//   node attacks.js run --ours PATH [--only id,id] [--servers js,ours,...] [--out FILE.json]
//       For every attack and every server configuration: start a fresh server, measure
//       its idle RSS and fds, run the attack in a child process (its own event loop),
//       poll the server's VmRSS every 50 ms and its fds every 250 ms, probe it with a
//       normal client once a second during the attack and once after it, stop it.
//       Prints a markdown table and writes every measurement to the JSON file.
//   node attacks.js attack NAME PORT 'JSON options'
//       One attacker (used by `run`): prints `MARK name` lines when the server should be
//       measured, and one JSON result line at the end.
//
// Every byte goes over 127.0.0.1; attackers use raw TCP sockets and write their own
// WebSocket frames (masked with the all-zero key), so nothing a library does hides
// what the server does. The normal client (probe) connects from 127.0.0.2, so that the
// per-IP limits applied to the attacker's 127.0.0.1 do not apply to it.

const net = require('net');
const fs = require('fs');
const os = require('os');
const path = require('path');
const {spawn} = require('child_process');

const MiB = 1 << 20;
const now = () => Number(process.hrtime.bigint() / 1000000n);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------
// Raw WebSocket client pieces
// ---------------------------------------------------------------------------------------

function upgradeRequest(port) {
  return `GET /socketcluster/ HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\n` +
    'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' +
    'Sec-WebSocket-Version: 13\r\n\r\n';
}

// A client frame header for `len` payload bytes, FIN set, masked with key 0 (so the
// payload goes out unchanged).
function frameHeader(opcode, len) {
  let h;
  if (len < 126) {
    h = Buffer.alloc(6);
    h[1] = 0x80 | len;
  } else if (len <= 0xffff) {
    h = Buffer.alloc(8);
    h[1] = 0x80 | 126;
    h.writeUInt16BE(len, 2);
  } else {
    h = Buffer.alloc(14);
    h[1] = 0x80 | 127;
    h.writeBigUInt64BE(BigInt(len), 2);
  }
  h[0] = 0x80 | opcode;
  return h; // the last 4 bytes (the mask key) are 0
}

function textFrame(text) {
  const p = Buffer.from(text);
  return Buffer.concat([frameHeader(1, p.length), p]);
}

const CLOSE_FRAME = Buffer.concat([frameHeader(8, 2), Buffer.from([0x03, 0xe8])]);

// A connection: HTTP head, then server frames. `c.onText(text)` is called for every
// text message; pings ("" in protocol version 2) are answered unless `autoPong` is false.
class Conn {
  constructor(sock, {autoPong = true} = {}) {
    this.sock = sock;
    this.autoPong = autoPong;
    this.buf = Buffer.alloc(0);
    this.inHead = true;
    this.status = null; // HTTP status of the answer to the upgrade request
    this.httpAnswer = null; // first bytes of a non-101 answer
    this.close = null; // {code, reason, t}
    this.ended = null; // t of 'end'
    this.closedAt = null; // t of 'close'
    this.error = null; // {code, t}
    this.bytesIn = 0;
    this.texts = 0;
    this.onText = null;
    this.onHead = null;
    this.onGone = null;
    sock.on('data', (d) => this._data(d));
    sock.on('end', () => { this.ended = now(); });
    sock.on('error', (e) => { if (!this.error) this.error = {code: e.code || e.message, t: now()}; });
    sock.on('close', () => {
      this.closedAt = now();
      if (this.onGone) this.onGone();
    });
  }

  get gone() { return this.closedAt != null; }

  _data(d) {
    this.bytesIn += d.length;
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    if (this.inHead) {
      const i = this.buf.indexOf('\r\n\r\n');
      if (i < 0) {
        if (this.buf.length > 64 * 1024) this.sock.destroy();
        return;
      }
      const head = this.buf.subarray(0, i).toString('latin1');
      this.status = Number(head.split(' ')[1]);
      this.buf = this.buf.subarray(i + 4);
      this.inHead = false;
      if (this.status !== 101) {
        this.httpAnswer = head.split('\r\n')[0] + ' ' + this.buf.toString('latin1').slice(0, 80);
      }
      if (this.onHead) this.onHead(this.status);
      if (this.status !== 101) return;
    }
    this._frames();
  }

  _frames() {
    let off = 0;
    const b = this.buf;
    while (b.length - off >= 2) {
      const op = b[off] & 0x0f;
      let len = b[off + 1] & 0x7f;
      let p = off + 2;
      if (len === 126) {
        if (b.length - off < 4) break;
        len = b.readUInt16BE(off + 2);
        p = off + 4;
      } else if (len === 127) {
        if (b.length - off < 10) break;
        len = Number(b.readBigUInt64BE(off + 2));
        p = off + 10;
      }
      if (b.length < p + len) break;
      const payload = b.subarray(p, p + len);
      off = p + len;
      if (op === 8) {
        if (!this.close) {
          this.close = {
            code: payload.length >= 2 ? payload.readUInt16BE(0) : 1005,
            reason: payload.length > 2 ? payload.subarray(2).toString() : '',
            t: now()
          };
        }
      } else if (op === 1) {
        this.texts++;
        const text = payload.toString();
        if (text === '' && this.autoPong && !this.sock.destroyed) {
          this.sock.write(textFrame(''));
        } else if (this.onText) {
          this.onText(text);
        }
      }
    }
    this.buf = off === b.length ? Buffer.alloc(0) : b.subarray(off);
  }

  send(text) {
    if (!this.sock.destroyed) return this.sock.write(textFrame(text));
    return false;
  }

  shutdown() {
    if (!this.sock.destroyed) {
      this.sock.write(CLOSE_FRAME);
      this.sock.end();
      setTimeout(() => this.sock.destroy(), 1000).unref();
    }
  }
}

// `allowHalfOpen`: keep writing after the server's FIN (Node's default ends our side and
// makes further writes fail with EPIPE at once, which would hide what the server does).
function connectTcp(port, localAddress, allowHalfOpen = false) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({host: '127.0.0.1', port, localAddress, allowHalfOpen});
    sock.setNoDelay(true);
    const onErr = (e) => reject(e);
    sock.once('error', onErr);
    sock.once('connect', () => {
      sock.removeListener('error', onErr);
      resolve(sock);
    });
  });
}

// Upgrade and SocketCluster handshake. Resolves with the Conn (rejects with a message
// saying what went wrong).
async function openSc(port, {localAddress, autoPong = true, timeoutMs = 10000, allowHalfOpen = false} = {}) {
  const sock = await connectTcp(port, localAddress, allowHalfOpen);
  const c = new Conn(sock, {autoPong});
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error('timeout'));
    }, timeoutMs);
    c.onGone = () => {
      clearTimeout(timer);
      reject(new Error(c.status && c.status !== 101 ? `HTTP ${c.status}` :
        c.close ? `close ${c.close.code}` : (c.error ? c.error.code : 'closed')));
    };
    c.onHead = (status) => {
      if (status !== 101) {
        clearTimeout(timer);
        sock.destroy();
        reject(new Error(`HTTP ${status}`));
        return;
      }
      c.send('{"event":"#handshake","data":{"authToken":null},"cid":1}');
    };
    c.onText = (text) => {
      let m;
      try { m = JSON.parse(text); } catch (e) { return; }
      if (m && m.rid === 1) {
        clearTimeout(timer);
        c.onText = null;
        c.onGone = null;
        if (m.error) reject(new Error(`handshake error ${JSON.stringify(m.error)}`));
        else resolve(c);
      }
    };
    sock.write(upgradeRequest(port));
  });
}

// Invoke-style requests on a Conn: `c.rpc(event, data)` resolves with the reply message.
function withRpc(c, firstCid = 2) {
  let cid = firstCid;
  const pending = new Map();
  const other = [];
  c.onText = (text) => {
    let m;
    try { m = JSON.parse(text); } catch (e) { return; }
    if (m && typeof m.rid === 'number' && pending.has(m.rid)) {
      const p = pending.get(m.rid);
      pending.delete(m.rid);
      p(m);
    } else if (c.onOther) {
      c.onOther(m);
    } else {
      other.push(m);
    }
  };
  c.rpc = (event, data) => new Promise((resolve) => {
    const id = cid++;
    pending.set(id, resolve);
    c.send(JSON.stringify({event, data, cid: id}));
  });
  c.pending = pending;
  return c;
}

// ---------------------------------------------------------------------------------------
// The normal client: connect + handshake + subscribe + publish + receive, from 127.0.0.2
// ---------------------------------------------------------------------------------------

let probeSeq = 0;
async function probe(port, timeoutMs = 5000) {
  const t0 = now();
  const channel = `probe-${process.pid}-${probeSeq++}`;
  let c;
  const step = {stage: 'connect'};
  const run = (async () => {
    c = withRpc(await openSc(port, {localAddress: '127.0.0.2', timeoutMs}));
    step.stage = 'subscribe';
    const s = await c.rpc('#subscribe', {channel});
    if (s.error) throw new Error(`subscribe error ${s.error.name}`);
    step.stage = 'publish';
    const got = new Promise((resolve) => {
      c.onOther = (m) => {
        if (m && m.event === '#publish' && m.data && m.data.channel === channel) resolve();
      };
    });
    const p = await c.rpc('#publish', {channel, data: 'hello'});
    if (p.error) throw new Error(`publish error ${p.error.name}`);
    step.stage = 'receive';
    await got;
  })();
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timeout at ${step.stage}`)), timeoutMs);
  });
  try {
    await Promise.race([run, timeout]);
    return {ok: true, ms: now() - t0};
  } catch (e) {
    return {ok: false, ms: now() - t0, error: e.message};
  } finally {
    clearTimeout(timer);
    run.catch(() => {});
    if (c) c.shutdown();
  }
}

// ---------------------------------------------------------------------------------------
// Attacks (each run in its own process by `attack`)
// ---------------------------------------------------------------------------------------

function mark(name) {
  process.stdout.write(`MARK ${name}\n`);
}

// Counts of values: {a: 3, b: 1}
function tally(list) {
  const t = {};
  for (const v of list) t[v] = (t[v] || 0) + 1;
  return t;
}

// Wait for 'drain' (or 'close') of `sock`, at most `ms`; no listener is left behind.
function waitDrain(sock, ms) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      sock.removeListener('drain', done);
      sock.removeListener('close', done);
      resolve();
    };
    const timer = setTimeout(done, Math.max(1, ms));
    sock.once('drain', done);
    sock.once('close', done);
  });
}

// Wait until `pred()` or `ms` passed.
async function until(pred, ms, step = 20) {
  const end = now() + ms;
  while (!pred() && now() < end) await sleep(step);
  return pred();
}

const ATTACKS = {};

// One text message `[0,0,...]` (or `[{},{},...]`) just under 8 MiB after the handshake,
// from `sockets` sockets at once; then a #subscribe on the same socket, to see whether
// (and when) the server gets past the batch.
ATTACKS.batch = async (port, {sockets = 1, element = '0'}) => {
  const size = 8 * MiB - 16;
  const n = Math.floor((size - 2) / (element.length + 1));
  const text = '[' + new Array(n).fill(element).join(',') + ']';
  const frame = Buffer.concat([frameHeader(1, text.length), Buffer.from(text)]);
  const conns = [];
  for (let i = 0; i < sockets; i++) conns.push(withRpc(await openSc(port)));
  const t0 = now();
  const results = await Promise.all(conns.map(async (c, i) => {
    c.sock.write(frame);
    let answered = null;
    c.rpc('#subscribe', {channel: `after-batch-${i}`}).then((m) => {
      answered = {t: now(), error: m.error ? m.error.name : null};
    });
    await until(() => answered || c.close || c.gone, 25000);
    const r = {
      bytes: text.length,
      elements: n,
      close: c.close ? {code: c.close.code, reason: c.close.reason, ms: c.close.t - t0} : null,
      gone: c.gone,
      error: c.error && c.error.code,
      nextRequestAnsweredMs: answered ? answered.t - t0 : null
    };
    return r;
  }));
  mark('end');
  await sleep(300);
  for (const c of conns) c.shutdown();
  return {sockets: results};
};

// A frame over the max payload, written completely before the attacker looks at what it
// got (it reads all along into a buffer, like the kernel would, but only looks at the end).
ATTACKS.oversized = async (port, {size, sockets = 1}) => {
  if (sockets > 1) {
    const all = await Promise.all(Array.from({length: sockets}, () => oversizedOne(port, size, false)));
    mark('end');
    return {sockets: all};
  }
  return oversizedOne(port, size, true);
};

async function oversizedOne(port, size, marks) {
  const c = withRpc(await openSc(port, {allowHalfOpen: true}));
  const chunk = Buffer.alloc(64 * 1024, 'x');
  const t0 = now();
  let written = 0;
  let writeError = null;
  c.sock.on('error', (e) => { if (!writeError) writeError = {code: e.code, afterBytes: written}; });
  const writeAll = async () => {
    if (!c.sock.write(frameHeader(1, size))) await waitDrain(c.sock, 30000);
    while (written < size && !c.sock.destroyed) {
      const n = Math.min(chunk.length, size - written);
      const ok = c.sock.write(n === chunk.length ? chunk : chunk.subarray(0, n));
      written += n;
      if (!ok) await waitDrain(c.sock, 30000);
    }
  };
  await Promise.race([writeAll(), sleep(25000)]);
  const tWritten = now() - t0;
  const serverEndedBeforeAllWritten = c.ended != null;
  // A request after the big message: answered if the server kept the socket.
  let answered = null;
  if (!c.sock.destroyed) {
    c.rpc('#subscribe', {channel: 'after-big'}).then((m) => { answered = {t: now(), error: m.error ? m.error.name : null}; });
  }
  await until(() => answered || c.gone || c.ended != null, 10000);
  if (marks) mark('end');
  if (c.ended != null) c.sock.end();
  // bytes the kernel took (frame header included), not just what was queued in Node
  const kernelTook = c.sock.bytesWritten;
  const r = {
    size,
    written: Math.min(written, kernelTook),
    wroteAll: kernelTook >= size && !writeError,
    writeMs: tWritten,
    writeError: writeError || (c.error && {code: c.error.code}),
    serverEndedBeforeAllWritten,
    close: c.close ? {code: c.close.code, reason: c.close.reason, ms: c.close.t - t0} : null,
    gone: c.gone,
    serverEnded: c.ended != null,
    nextRequestAnsweredMs: answered ? answered.t - t0 : null
  };
  c.shutdown();
  return r;
}

// `conns` connections that send the HTTP upgrade request one byte per second.
ATTACKS.slowloris = async (port, {conns = 500, durationS = 20, markAtS = [5, 10, 15, 20]}) => {
  const req = Buffer.from(upgradeRequest(port));
  const list = [];
  const t0 = now();
  for (let i = 0; i < conns; i++) {
    try {
      const sock = await connectTcp(port);
      const c = new Conn(sock);
      c.pos = 0;
      list.push(c);
    } catch (e) {
      list.push({gone: true, error: {code: e.code}, connectFailed: true});
    }
  }
  const openMs = now() - t0;
  const openAt = {};
  for (let s = 0; s < durationS; s++) {
    for (const c of list) {
      if (!c.gone && !c.connectFailed && c.pos < req.length) c.sock.write(req.subarray(c.pos, ++c.pos));
    }
    await sleep(1000);
    const t = s + 1;
    if (markAtS.includes(t)) {
      mark(`t${t}`);
      openAt[`t${t}`] = list.filter((c) => !c.gone).length;
    }
  }
  const closed = list.filter((c) => c.gone && !c.connectFailed);
  const firstClose = closed.length ? Math.min(...closed.map((c) => c.closedAt)) - t0 : null;
  const r = {
    conns,
    openMs,
    connectFailed: list.filter((c) => c.connectFailed).length,
    stillOpen: openAt,
    closedByServer: closed.length,
    firstCloseMs: firstClose,
    answers: tally(closed.map((c) => c.status ? `HTTP ${c.status}` : (c.error ? c.error.code : 'FIN'))),
    bytesSentPerConn: list.reduce((m, c) => Math.max(m, c.pos || 0), 0)
  };
  for (const c of list) if (c.sock) c.sock.destroy();
  return r;
};

// A subscriber that never reads, on a channel another client publishes 1 KiB messages to
// as fast as the acknowledgements allow (`window` publishes in flight).
ATTACKS.writeonly = async (port, {durationS = 15, size = 1024, window = 16}) => {
  const reader = withRpc(await openSc(port, {autoPong: false}));
  const s = await reader.rpc('#subscribe', {channel: 'busy'});
  if (s.error) throw new Error('subscribe failed');
  let received = 0;
  reader.onOther = (m) => { if (m && m.event === '#publish') received++; };
  reader.sock.pause(); // never read again (until the end)
  const pub = withRpc(await openSc(port));
  const data = 'p'.repeat(size);
  let acked = 0;
  let failed = 0;
  const t0 = now();
  const end = t0 + durationS * 1000;
  let pubGone = false;
  pub.sock.on('close', () => { pubGone = true; });
  const lane = async () => {
    while (now() < end && !pubGone) {
      const m = await Promise.race([pub.rpc('#publish', {channel: 'busy', data}), sleep(10000).then(() => ({error: {name: 'timeout'}}))]);
      if (m.error) failed++; else acked++;
    }
  };
  await Promise.all(Array.from({length: window}, lane));
  const elapsed = now() - t0;
  mark('end');
  // Now read what the server still has for the reader, for at most 5 s.
  const tRead = now();
  reader.sock.resume();
  await until(() => reader.gone, 5000);
  const r = {
    durationMs: elapsed,
    published: acked,
    publishFailed: failed,
    publishPerS: Math.round(acked / (elapsed / 1000)),
    publisherGone: pubGone,
    readerReceived: received,
    readerGone: reader.gone,
    readerGoneAfterReadingMs: reader.gone ? reader.closedAt - tRead : null,
    readerClose: reader.close ? {code: reader.close.code, reason: reader.close.reason} : null,
    readerError: reader.error && reader.error.code,
    readerEnded: reader.ended != null
  };
  reader.sock.destroy();
  pub.shutdown();
  return r;
};

// One socket subscribing to `channels` distinct channels (`window` requests in flight).
ATTACKS.subscribe = async (port, {channels = 100000, window = 1000}) => {
  const c = withRpc(await openSc(port));
  let ok = 0;
  let failed = 0;
  const errors = [];
  let next = 0;
  const t0 = now();
  const deadline = t0 + 25000;
  const lane = async () => {
    while (next < channels && !c.gone && now() < deadline) {
      const i = next++;
      const m = await Promise.race([c.rpc('#subscribe', {channel: `flood-${i}`}), sleep(10000).then(() => ({error: {name: 'timeout'}}))]);
      if (m.error) {
        failed++;
        if (errors.length < 3) errors.push(`${m.error.name}: ${String(m.error.message).slice(0, 80)}`);
      } else {
        ok++;
      }
    }
  };
  await Promise.all(Array.from({length: window}, lane));
  const ms = now() - t0;
  mark('end');
  await sleep(200);
  const r = {
    channels,
    ok,
    failed,
    firstErrors: errors,
    ms,
    socketGone: c.gone,
    close: c.close ? {code: c.close.code, reason: c.close.reason} : null
  };
  c.shutdown();
  return r;
};

// One socket sending small messages as fast as its TCP connection takes them.
ATTACKS.flood = async (port, {durationS = 10, kind = 'event'}) => {
  const c = withRpc(await openSc(port));
  const one = textFrame(kind === 'ping' ? '' : '{"event":"flood","data":1}');
  const per = Math.floor(64 * 1024 / one.length);
  const chunk = Buffer.concat(new Array(per).fill(one));
  let sent = 0;
  const t0 = now();
  const end = t0 + durationS * 1000;
  while (now() < end && !c.sock.destroyed) {
    const ok = c.sock.write(chunk);
    sent += per;
    if (!ok) {
      await waitDrain(c.sock, end - now());
    }
  }
  const ms = now() - t0;
  mark('end');
  const r = {
    kind,
    sent,
    perS: Math.round(sent / (ms / 1000)),
    socketGone: c.gone,
    close: c.close ? {code: c.close.code, reason: c.close.reason} : null,
    error: c.error && c.error.code
  };
  c.sock.destroy();
  return r;
};

// `conns` connections (upgrade + handshake) from 127.0.0.1 as fast as possible, at most
// `concurrency` of them being set up at a time; all kept open until the end.
ATTACKS.connflood = async (port, {conns = 5000, concurrency = 500}) => {
  const outcomes = [];
  const held = [];
  let next = 0;
  const t0 = now();
  const lane = async () => {
    while (next < conns) {
      next++;
      try {
        const c = await openSc(port, {timeoutMs: 10000});
        held.push(c);
        outcomes.push('handshake ok');
      } catch (e) {
        outcomes.push(e.code || e.message);
      }
    }
  };
  await Promise.all(Array.from({length: concurrency}, lane));
  const ms = now() - t0;
  await sleep(1000);
  mark('held');
  const r = {
    conns,
    ms,
    outcomes: tally(outcomes),
    stillOpenAfter1s: held.filter((c) => !c.gone).length
  };
  for (const c of held) c.sock.destroy();
  return r;
};

// A POST with a chunked body that never ends: `fast` (64 KiB chunks as fast as they are
// taken) or `trickle` (a 1-byte chunk every 100 ms).
ATTACKS.chunked = async (port, {path: p = '/socketcluster/', key = null, mode = 'trickle', durationS = 20}) => {
  const sock = await connectTcp(port);
  const c = new Conn(sock);
  let written = 0;
  let headAt = null;
  const t0 = now();
  c.onHead = () => { headAt = now(); };
  const head = `POST ${p} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n` +
    (key ? `Authorization: Bearer ${key}\r\n` : '') +
    'Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n';
  sock.write(head + '10\r\n{"channel":"x","\r\n');
  const end = t0 + durationS * 1000;
  const big = Buffer.concat([Buffer.from('10000\r\n'), Buffer.alloc(0x10000, 'x'), Buffer.from('\r\n')]);
  const small = Buffer.from('1\r\nx\r\n');
  while (now() < end && !sock.destroyed && !c.gone) {
    if (mode === 'fast') {
      const ok = sock.write(big);
      written += 0x10000;
      if (!ok) await waitDrain(sock, end - now());
    } else {
      sock.write(small);
      written += 1;
      await sleep(100);
    }
  }
  mark('end');
  const r = {
    path: p,
    mode,
    // what the kernel took (not what was queued in Node), chunk framing included
    bodyBytesWritten: Math.max(0, sock.bytesWritten - head.length),
    answer: c.status ? `HTTP ${c.status}` : null,
    answerMs: headAt ? headAt - t0 : null,
    connectionClosedMs: c.gone ? c.closedAt - t0 : null,
    error: c.error && c.error.code
  };
  sock.destroy();
  return r;
};

async function attackMain(name, port, opts) {
  const f = ATTACKS[name];
  if (!f) throw new Error(`unknown attack ${name}`);
  const r = await f(port, opts);
  process.stdout.write(JSON.stringify({result: r}) + '\n');
  // Give stdout a moment, then leave even if sockets linger.
  setTimeout(() => process.exit(0), 100);
}

// ---------------------------------------------------------------------------------------
// The orchestrator
// ---------------------------------------------------------------------------------------

function procStatus(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = /VmRSS:\s+(\d+) kB/.exec(s);
    return m ? Number(m[1]) * 1024 : null;
  } catch (e) {
    return null;
  }
}

function fdCount(pid) {
  try {
    return fs.readdirSync(`/proc/${pid}/fd`).length;
  } catch (e) {
    return null;
  }
}

const RSS_CAP = 2 * 1024 * MiB;

// The server configurations.
function serverSpecs(oursBin) {
  return {
    js: {label: 'JS server 20.0.1', cmd: process.execPath, args: [path.join(__dirname, 'js_server.js'), '--port', '0']},
    ours: {label: 'ours', cmd: oursBin, args: ['serve', '--host', '127.0.0.1', '--port', '0']},
    ours_perip: {label: 'ours --per-ip-limits-on-loopback', cmd: oursBin, args: ['serve', '--host', '127.0.0.1', '--port', '0', '--per-ip-limits-on-loopback']},
    ours_api: {label: 'ours --http-api-key K', cmd: oursBin, args: ['serve', '--host', '127.0.0.1', '--port', '0', '--http-api-key', 'K']}
  };
}

async function startServer(spec, logFile) {
  const log = fs.openSync(logFile, 'w');
  const child = spawn(spec.cmd, spec.args, {stdio: ['ignore', log, log]});
  fs.closeSync(log);
  const deadline = now() + 15000;
  while (now() < deadline) {
    const text = fs.readFileSync(logFile, 'utf8');
    const m = /listening.*?addr=127\.0\.0\.1:(\d+)/.exec(text.replace(/\x1b\[[0-9;]*m/g, ''));
    if (m) return {child, port: Number(m[1])};
    if (child.exitCode != null) break;
    await sleep(50);
  }
  child.kill('SIGKILL');
  throw new Error(`server did not start: ${fs.readFileSync(logFile, 'utf8').slice(0, 500)}`);
}

async function stopServer(child) {
  if (child.exitCode != null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  if (await Promise.race([exited.then(() => true), sleep(5000).then(() => false)])) return;
  child.kill('SIGKILL');
  await exited;
}

async function runOne(attack, serverKey, spec, tmp) {
  const logFile = path.join(tmp, `${attack.id}-${serverKey}.log`);
  const {child, port} = await startServer(spec, logFile);
  const pid = child.pid;
  await sleep(300);
  const warm = await probe(port); // also warms up the code paths
  await sleep(300);
  const idle = {rss: procStatus(pid), fds: fdCount(pid)};
  const m = {peakRss: idle.rss, peakFds: idle.fds, capped: false, marks: {}};
  let attacker = null;
  const rssTimer = setInterval(() => {
    const r = procStatus(pid);
    if (r != null && r > m.peakRss) m.peakRss = r;
    if (r != null && r > RSS_CAP && !m.capped) {
      m.capped = true;
      if (attacker) attacker.kill('SIGKILL');
    }
  }, 50);
  const fdTimer = setInterval(() => {
    const f = fdCount(pid);
    if (f != null && f > m.peakFds) m.peakFds = f;
  }, 250);
  // the attack, in its own process
  const t0 = now();
  attacker = spawn(process.execPath, [__filename, 'attack', attack.attack, String(port), JSON.stringify(attack.opts || {})],
    {stdio: ['ignore', 'pipe', 'pipe']});
  let out = '';
  let err = '';
  let result = null;
  attacker.stdout.on('data', (d) => {
    out += d;
    let i;
    while ((i = out.indexOf('\n')) >= 0) {
      const line = out.slice(0, i);
      out = out.slice(i + 1);
      if (line.startsWith('MARK ')) {
        m.marks[line.slice(5)] = {rss: procStatus(pid), fds: fdCount(pid), atMs: now() - t0};
      } else if (line.startsWith('{')) {
        try { result = JSON.parse(line).result; } catch (e) { /* ignore */ }
      }
    }
  });
  attacker.stderr.on('data', (d) => { err += d; });
  const attackerDone = new Promise((r) => attacker.once('exit', r));
  const timeLimit = (attack.limitS || 45) * 1000;
  let timedOut = false;
  const killer = setTimeout(() => { timedOut = true; attacker.kill('SIGKILL'); }, timeLimit);
  // probes during the attack, one a second
  const during = [];
  let attacking = true;
  attackerDone.then(() => { attacking = false; });
  await sleep(500);
  while (attacking) {
    const started = now();
    const p = await probe(port);
    if (attacking) during.push(p);
    const wait = 1000 - (now() - started);
    if (wait > 0 && attacking) await Promise.race([sleep(wait), attackerDone]);
  }
  await attackerDone;
  clearTimeout(killer);
  const attackMs = now() - t0;
  await sleep(1000);
  const serverAlive = child.exitCode == null;
  const after = serverAlive ? await probe(port) : {ok: false, error: 'server exited'};
  const end = {rss: procStatus(pid), fds: fdCount(pid)};
  clearInterval(rssTimer);
  clearInterval(fdTimer);
  const exitCode = child.exitCode;
  await stopServer(child);
  return {
    server: serverKey,
    port,
    warmProbe: warm,
    idle,
    peakRss: m.peakRss,
    peakFds: m.peakFds,
    rssCapped: m.capped,
    marks: m.marks,
    end,
    attackMs,
    timedOut,
    attackerError: result ? null : err.slice(-600),
    result,
    during,
    after,
    serverExitedDuringRun: !serverAlive ? exitCode : null
  };
}

// What the table shows.
const mb = (b) => (b == null ? '?' : `${Math.round(b / MiB)} MB`);

function probeText(r) {
  const d = r.during;
  const ok = d.filter((p) => p.ok);
  let s = '';
  if (d.length) {
    const ms = ok.map((p) => p.ms).sort((a, b) => a - b);
    s += `normal client during: ${ok.length}/${d.length} ok`;
    if (ms.length) s += ` (median ${ms[Math.floor(ms.length / 2)]} ms, max ${ms[ms.length - 1]} ms)`;
    const errs = d.filter((p) => !p.ok).map((p) => p.error);
    if (errs.length) s += ` [${Object.entries(tally(errs)).map(([k, v]) => `${v}× ${k}`).join(', ')}]`;
    s += '; ';
  }
  s += r.after.ok ? `after: ok ${r.after.ms} ms` : `after: FAILED (${r.after.error})`;
  return s;
}

function rssText(r) {
  return `peak RSS ${r.rssCapped ? '>2 GB (attack stopped)' : mb(r.peakRss)} (idle ${mb(r.idle.rss)})`;
}

function closeText(cl) {
  if (!cl) return null;
  return `close ${cl.code}${cl.reason ? ` "${cl.reason}"` : ''}`;
}

const SUMMARY = {
  batch: (r) => {
    const socks = r.result.sockets;
    const outcome = Object.entries(tally(socks.map((s) => {
      if (s.close) return `${closeText(s.close)} after ${(s.close.ms / 1000).toFixed(1)} s`;
      if (s.nextRequestAnsweredMs != null) return `no close, next request answered after ${(s.nextRequestAnsweredMs / 1000).toFixed(1)} s`;
      if (s.gone) return `dropped (${s.error || 'FIN'})`;
      return 'no answer within 25 s';
    }))).map(([k, v]) => (socks.length > 1 ? `${v}× ${k}` : k)).join('; ');
    return `${outcome}; ${rssText(r)}`;
  },
  oversized: (r) => {
    if (r.result.sockets) {
      const socks = r.result.sockets;
      const ws = socks.filter((x) => !x.wroteAll).map((x) => x.written / MiB);
      const range = ws.length ? `${Math.min(...ws).toFixed(1)}–${Math.max(...ws).toFixed(1)}` : '';
      const outcome = Object.entries(tally(socks.map((x) => oversizedOutcome({...x, written: NaN}))))
        .map(([k, v]) => `${v}× ${k.replace('NaN', range)}`).join('; ');
      return `${outcome}; ${rssText(r)}`;
    }
    return `${oversizedOutcome(r.result)}; ${rssText(r)}`;
  }
};

function oversizedOutcome(x) {
  const parts = [];
  parts.push(x.wroteAll ? `attacker wrote all ${Math.round(x.size / MiB)} MiB` :
    `attacker's write failed after ${(x.written / MiB).toFixed(1)} MiB (${x.writeError ? x.writeError.code : 'closed'})`);
  if (x.close) parts.push(`received ${closeText(x.close)}`);
  else if (x.nextRequestAnsweredMs != null) parts.push('no close: message accepted, socket stays open (next request answered)');
  else parts.push('no close frame received');
  return parts.join('; ');
}

Object.assign(SUMMARY, {
  slowloris: (r) => {
    const x = r.result;
    const f = (k) => (r.marks[k] ? r.marks[k].fds - r.idle.fds : '?');
    const parts = [`server fds above idle: ${f('t5')} at 5 s, ${f('t10')} at 10 s, ${f('t15')} at 15 s, ${f('t20')} at 20 s`];
    if (x.closedByServer) {
      parts.push(`${x.closedByServer}/${x.conns} closed by the server (first after ${(x.firstCloseMs / 1000).toFixed(1)} s: ` +
        Object.entries(x.answers).map(([k, v]) => `${v}× ${k}`).join(', ') + ')');
    } else {
      parts.push(`none closed by the server in ${Object.keys(x.stillOpen).length ? '20' : '?'} s`);
    }
    parts.push(rssText(r));
    return parts.join('; ');
  },
  writeonly: (r) => {
    const x = r.result;
    const parts = [`${x.published} publishes acked (${x.publishPerS}/s)`];
    if (x.readerGone) {
      parts.push(`reader dropped (${x.readerClose ? closeText(x.readerClose) : 'no close frame'}${x.readerError ? `, ${x.readerError}` : ''}) after it had received ${x.readerReceived}`);
    } else {
      parts.push(`reader NOT dropped (read ${x.readerReceived} publications in the 5 s after it resumed reading)`);
    }
    parts.push(rssText(r));
    return parts.join('; ');
  },
  subscribe: (r) => {
    const x = r.result;
    const parts = [`${x.ok} subscribed, ${x.failed} refused${x.firstErrors.length ? ` (${x.firstErrors[0]})` : ''} in ${(x.ms / 1000).toFixed(1)} s`];
    if (x.socketGone) parts.push(`socket closed ${closeText(x.close) || ''}`);
    parts.push(rssText(r));
    if (r.marks.end) parts.push(`RSS with them held ${mb(r.marks.end.rss)}`);
    return parts.join('; ');
  },
  flood: (r) => {
    const x = r.result;
    const parts = [`${x.sent.toLocaleString('en-US')} messages taken (${x.perS.toLocaleString('en-US')}/s)`];
    if (x.socketGone) parts.push(`socket closed (${closeText(x.close) || x.error || 'FIN'})`);
    parts.push(rssText(r));
    return parts.join('; ');
  },
  connflood: (r) => {
    const x = r.result;
    const o = Object.entries(x.outcomes).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${v} ${k}`).join(', ');
    const held = r.marks.held;
    return `${o} in ${(x.ms / 1000).toFixed(1)} s; ${held ? `server fds ${held.fds} while held` : ''}; ${rssText(r)}`;
  },
  chunked: (r) => {
    const x = r.result;
    const parts = [];
    parts.push(x.answer ? `${x.answer} after ${(x.answerMs / 1000).toFixed(1)} s` : 'no answer');
    parts.push(x.connectionClosedMs != null ? `connection closed after ${(x.connectionClosedMs / 1000).toFixed(1)} s` :
      'connection still open at 20 s');
    parts.push(`${x.bodyBytesWritten >= MiB ? `${(x.bodyBytesWritten / MiB).toFixed(1)} MiB` : `${x.bodyBytesWritten} B`} of body sent`);
    if (x.error) parts.push(`attacker's write failed: ${x.error}`);
    parts.push(rssText(r));
    return parts.join('; ');
  }
});

function cell(attack, r) {
  if (!r) return 'n/a';
  if (r.error) return `harness error: ${r.error}`;
  if (!r.result) return `attacker failed${r.rssCapped ? ' (RSS over 2 GB, stopped)' : ''}: ${(r.attackerError || '').split('\n').filter(Boolean).slice(-1)[0] || 'no result'}; ${rssText(r)}`;
  let s = SUMMARY[attack.attack](r);
  if (r.serverExitedDuringRun != null) s += `; SERVER EXITED (${r.serverExitedDuringRun})`;
  return `${s}; ${probeText(r)}`;
}

// The attacks, in table order. `servers`: the configurations each runs against; the row's
// "ours" cell shows them in order.
const PLAN = [
  {id: 'batch1', attack: 'batch', opts: {sockets: 1}, servers: ['js', 'ours'],
    title: 'batch amplification: `[0,0,…]` just under 8 MiB, 1 socket'},
  {id: 'batch3', attack: 'batch', opts: {sockets: 3}, servers: ['js', 'ours'],
    title: 'batch amplification: `[0,0,…]` just under 8 MiB, 3 sockets at once'},
  {id: 'batchobj', attack: 'batch', opts: {sockets: 1, element: '{}'}, servers: ['js', 'ours'],
    title: 'batch amplification: `[{},{},…]` just under 8 MiB, 1 socket'},
  {id: 'over12', attack: 'oversized', opts: {size: 12 * MiB}, servers: ['js', 'ours'],
    title: 'oversized message: one 12 MiB frame, written completely before reading'},
  {id: 'over101', attack: 'oversized', opts: {size: 101 * MiB}, servers: ['js', 'ours'],
    title: 'oversized message: one 101 MiB frame (over the JS limit too), written completely before reading'},
  {id: 'big99x3', attack: 'oversized', opts: {size: 99 * MiB, sockets: 3}, servers: ['js', 'ours'],
    title: 'large messages: a 99 MiB frame (under the JS limit) from 3 sockets at once'},
  {id: 'slowloris', attack: 'slowloris', opts: {conns: 500, durationS: 20}, servers: ['js', 'ours', 'ours_perip'],
    title: 'slowloris: 500 connections sending the upgrade request 1 byte/s for 20 s'},
  {id: 'writeonly', attack: 'writeonly', opts: {durationS: 15, size: 1024, window: 16}, servers: ['js', 'ours'],
    title: 'never-reading subscriber, 1 KiB publications (16 in flight) for 15 s'},
  {id: 'subscribe', attack: 'subscribe', opts: {channels: 100000, window: 1000}, servers: ['js', 'ours'],
    title: 'subscribe flood: 100,000 distinct channels on one socket (1000 in flight)'},
  {id: 'flood', attack: 'flood', opts: {durationS: 10, kind: 'event'}, servers: ['js', 'ours'],
    title: 'message flood: `{"event":"flood","data":1}` as fast as TCP takes it, 10 s'},
  {id: 'pingflood', attack: 'flood', opts: {durationS: 10, kind: 'ping'}, servers: ['js', 'ours'],
    title: 'ping flood: empty text messages (pongs) as fast as TCP takes them, 10 s'},
  {id: 'connflood', attack: 'connflood', opts: {conns: 5000, concurrency: 500}, servers: ['js', 'ours', 'ours_perip'],
    title: 'connection flood: 5000 upgrades + handshakes from 127.0.0.1, 500 at a time, all held'},
  {id: 'chunkws', attack: 'chunked', opts: {path: '/socketcluster/', mode: 'trickle', durationS: 20}, servers: ['js', 'ours'],
    title: 'never-ending chunked POST to the WebSocket path, 1 byte per 100 ms, 20 s'},
  {id: 'chunkwsfast', attack: 'chunked', opts: {path: '/socketcluster/', mode: 'fast', durationS: 20}, servers: ['js', 'ours'],
    title: 'never-ending chunked POST to the WebSocket path, as fast as taken, 20 s'},
  {id: 'chunkapi', attack: 'chunked', opts: {path: '/api/publish', key: 'K', mode: 'trickle', durationS: 20}, servers: ['ours_api'],
    title: 'never-ending chunked `POST /api/publish` (ours with `--http-api-key K`), 1 byte per 100 ms, 20 s'},
  {id: 'chunkapifast', attack: 'chunked', opts: {path: '/api/publish', key: 'K', mode: 'fast', durationS: 20}, servers: ['ours_api'],
    title: 'never-ending chunked `POST /api/publish` (ours with `--http-api-key K`), as fast as taken, 20 s'}
];

function table(results, specs) {
  const lines = ['| attack | JS server 20.0.1 | ours |', '|---|---|---|'];
  for (const a of PLAN) {
    const rs = results[a.id];
    if (!rs) continue;
    const js = a.servers.includes('js') ? cell(a, rs.js) : 'n/a (no HTTP API)';
    const ours = a.servers.filter((k) => k !== 'js').map((k) => {
      const txt = cell(a, rs[k]);
      return a.servers.filter((x) => x !== 'js').length > 1 || k !== 'ours' ? `**${specs[k].label}**: ${txt}` : txt;
    }).join('<br>');
    lines.push(`| ${a.title} | ${js.replace(/\|/g, '\\|')} | ${ours.replace(/\|/g, '\\|')} |`);
  }
  return lines.join('\n');
}

async function runMain(argv) {
  let oursBin = null;
  let only = null;
  let outFile = null;
  let servers = null;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--ours') oursBin = argv[++i];
    else if (argv[i] === '--only') only = argv[++i].split(',');
    else if (argv[i] === '--out') outFile = argv[++i];
    else if (argv[i] === '--servers') servers = argv[++i].split(',');
    else throw new Error(`unknown argument ${argv[i]}`);
  }
  if (!oursBin) throw new Error('--ours PATH is required');
  const specs = serverSpecs(path.resolve(oursBin));
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'sc-attacks-'));
  const results = {};
  const started = new Date().toISOString();
  for (const a of PLAN) {
    if (only && !only.includes(a.id)) continue;
    results[a.id] = {};
    for (const s of a.servers) {
      if (servers && !servers.includes(s)) continue;
      process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${a.id} vs ${s} ... `);
      let r;
      try {
        r = await runOne(a, s, specs[s], tmp);
      } catch (e) {
        r = {error: e.message};
      }
      results[a.id][s] = r;
      process.stderr.write(`${cell(a, r)}\n`);
    }
  }
  const doc = {
    started,
    finished: new Date().toISOString(),
    node: process.version,
    cpus: os.cpus().length,
    loadavg: os.loadavg(),
    ours: oursBin,
    logs: tmp,
    results
  };
  if (outFile) fs.writeFileSync(outFile, JSON.stringify(doc, null, 1));
  process.stdout.write(table(results, specs) + '\n');
}

const [mode, ...rest] = process.argv.slice(2);
if (mode === 'attack') {
  attackMain(rest[0], Number(rest[1]), JSON.parse(rest[2] || '{}')).catch((e) => {
    process.stderr.write(`${e.stack}\n`);
    process.exit(1);
  });
} else if (mode === 'run') {
  runMain(rest).catch((e) => {
    process.stderr.write(`${e.stack}\n`);
    process.exit(1);
  });
} else if (mode === 'probe') {
  probe(Number(rest[0])).then((r) => console.log(JSON.stringify(r)));
} else {
  process.stderr.write('usage: node attacks.js run --ours PATH [--only ids] [--out FILE] | attack NAME PORT JSON\n');
  process.exit(2);
}
