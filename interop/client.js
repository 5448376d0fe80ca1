'use strict';
// A scripted real JS SocketCluster client for the Rust interop tests.
//
//   node client.js '<json scenario>'     (or '@/path/to/scenario.json', or the scenario on
//                                          stdin when no argument is given)
//
// Scenario: {
//   "url": "ws://127.0.0.1:PORT/socketcluster/",   parsed into hostname/port/path/secure/query
//   "version": "20" (socketcluster-client 20.0.2, default) | "14" (14.3.2),
//   "options": {...},                 passed to create() (override what the url gave)
//   "authToken": "<jwt>",             stored in the client's auth engine before connecting
//   "steps": [{"op": ..., ...}],      run sequentially
//   "timeoutMs": 20000,               overall deadline -> {"event":"fatal"}, exit 1
//   "interactive": false,             after the steps, read more steps as JSON lines from
//                                     stdin until it closes (or {"op":"end"})
//   "logMessages": false,             also record the client's "message" events
//   "disconnectAtEnd": true           disconnect() (code 1000) before exiting
// }
//
// stdout lines (all with "t" ms):
//   {"event":"client","name":<client event>,"data":<payload>}   in true emission order
//   {"event":"publish","channel":..,"data":..}                  data on a subscribed channel
//   {"event":"received","name":..,"data":..}                    transmit to a `receiver`
//   {"event":"invoked","name":..,"data":..}                     invoke of a `procedure`
//   {"event":"step","i":n,"op":..,"ok":bool,"result"|"error":{name,message,...}}
//   {"event":"log","data":..}                                   from `js` steps
//   {"event":"done"} then exit 0; {"event":"fatal","error":..} then exit 1.
// See interop/README.md for the ops.

const {plain, errorInfo, out, exitAfterFlush, readJsonArg, makeError} = require('./common');

const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor;

// Client event names (v20 payload shapes; v14 arguments are converted to the same shapes).
const CLIENT_EVENTS = [
  'connecting', 'connect', 'connectAbort', 'disconnect', 'close', 'error', 'authStateChange',
  'authenticate', 'deauthenticate', 'removeAuthToken', 'subscribe', 'subscribeFail',
  'subscribeRequest', 'unsubscribe', 'subscribeStateChange', 'kickOut', 'raw', 'message'
];

function fatal(err) {
  out({event: 'fatal', error: errorInfo(err)});
  exitAfterFlush(1);
}

async function readStdinAll() {
  let chunks = [];
  for await (let chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function loadScenario() {
  let arg = process.argv[2];
  if (arg != null && arg !== '') return readJsonArg(arg);
  return JSON.parse(await readStdinAll());
}

function connectOptions(scenario) {
  let opts = {};
  if (scenario.url) {
    let url = new URL(scenario.url);
    let secure = url.protocol === 'wss:' || url.protocol === 'https:';
    opts.hostname = url.hostname;
    opts.port = url.port ? Number(url.port) : (secure ? 443 : 80);
    opts.path = url.pathname || '/';
    opts.secure = secure;
    if (url.search && url.search.length > 1) opts.query = url.search.slice(1);
  }
  return Object.assign(opts, scenario.options || {});
}

// ---------------------------------------------------------------------------------------
// Event recording with waiters

const eventCounts = new Map();
const publishCounts = new Map();
const waiters = [];

function notifyWaiters() {
  for (let i = waiters.length - 1; i >= 0; i--) {
    let w = waiters[i];
    if (w.check()) {
      waiters.splice(i, 1);
      clearTimeout(w.timer);
      w.resolve();
    }
  }
}

function waitFor(check, timeoutMs, what) {
  if (check()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    let w = {check, resolve};
    w.timer = setTimeout(() => {
      let i = waiters.indexOf(w);
      if (i >= 0) waiters.splice(i, 1);
      reject(makeError({name: 'TimeoutError', message: `timed out after ${timeoutMs} ms waiting for ${what}`}));
    }, timeoutMs);
    waiters.push(w);
  });
}

let logMessages = false;

function recordClientEvent(name, data) {
  if (name === 'message' && !logMessages) return;
  eventCounts.set(name, (eventCounts.get(name) || 0) + 1);
  out({event: 'client', name, data: data === undefined ? null : data});
  notifyWaiters();
}

function recordPublication(channel, data) {
  publishCounts.set(channel, (publishCounts.get(channel) || 0) + 1);
  out({event: 'publish', channel, data});
  notifyWaiters();
}

// ---------------------------------------------------------------------------------------
// Version adapters. Each exposes the same operations on top of the v20 (promise/iterator)
// or v14 (callback/emitter) API.

function v20Adapter(socket) {
  // Record in emission order by wrapping emit: separate async listeners would reorder events
  // of different names (docs/PROTOCOL.md 6.4).
  let originalEmit = socket.emit;
  socket.emit = function (name, data) {
    try {
      recordClientEvent(name, data);
    } catch (err) {
      out({event: 'harnessError', op: 'record', error: errorInfo(err)});
    }
    return originalEmit.call(this, name, data);
  };
  let watched = new Set();
  return {
    storeToken: (token) => socket.auth.saveToken(socket.authTokenName, token, {}),
    connect: (options) => socket.connect(options),
    disconnect: (code, reason) => socket.disconnect(code, reason),
    invoke: (procedure, data, ackTimeout) => socket.invoke(
      procedure, data, ackTimeout != null ? {ackTimeout} : undefined
    ),
    transmit: (event, data) => socket.transmit(event, data),
    subscribe(channel, options) {
      let ch = socket.subscribe(channel, options || undefined);
      if (!watched.has(channel)) {
        watched.add(channel);
        (async () => {
          for await (let data of ch) recordPublication(channel, data);
        })();
      }
    },
    unsubscribe: (channel) => socket.unsubscribe(channel),
    invokePublish: (channel, data) => socket.invokePublish(channel, data),
    transmitPublish: (channel, data) => socket.transmitPublish(channel, data),
    authenticate: (token) => socket.authenticate(token),
    deauthenticate: () => socket.deauthenticate(),
    processPendingSubscriptions: () => socket.processPendingSubscriptions(),
    send: (raw) => socket.send(raw),
    receiver(name) {
      (async () => {
        for await (let data of socket.receiver(name)) out({event: 'received', name, data});
      })();
    },
    procedure(name, answer) {
      (async () => {
        for await (let req of socket.procedure(name)) {
          out({event: 'invoked', name, data: req.data});
          let result = answer(req.data);
          if (result.error) req.error(result.error); else req.end(result.data);
        }
      })();
    },
    underlyingWs: () => socket.transport && socket.transport.socket
  };
}

function v14Adapter(socket) {
  let on = (name, convert) => socket.on(name, (...args) => recordClientEvent(name, convert(...args)));
  on('connecting', () => ({}));
  on('connect', (status) => status);
  on('connectAbort', (code, reason) => ({code, reason}));
  on('disconnect', (code, reason) => ({code, reason}));
  on('close', (code, reason) => ({code, reason}));
  on('error', (error) => ({error}));
  on('authStateChange', (d) => ({
    oldAuthState: d.oldState, newAuthState: d.newState,
    signedAuthToken: d.signedAuthToken, authToken: d.authToken
  }));
  on('authenticate', (signedAuthToken) => ({signedAuthToken}));
  on('deauthenticate', (oldSignedAuthToken) => ({oldSignedAuthToken}));
  on('removeAuthToken', (oldAuthToken) => ({oldAuthToken}));
  on('subscribe', (channel, subscriptionOptions) => ({channel, subscriptionOptions}));
  on('subscribeFail', (error, channel, subscriptionOptions) => ({error, channel, subscriptionOptions}));
  on('subscribeRequest', (channel, subscriptionOptions) => ({channel, subscriptionOptions}));
  on('unsubscribe', (channel) => ({channel}));
  on('subscribeStateChange', (d) => ({
    channel: d.channel, oldChannelState: d.oldState, newChannelState: d.newState,
    subscriptionOptions: d.subscriptionOptions
  }));
  on('kickOut', (message, channel) => ({channel, message}));
  on('raw', (message) => ({message}));
  on('message', (message) => ({message}));

  // v14 sockets treat these names as local events: emit() would never reach the server.
  let rejectLocalEvent = (name) => {
    if (socket._localEvents && socket._localEvents[name] != null) {
      throw makeError({name: 'HarnessError', message: `"${name}" is a local event name on a v14 client`});
    }
  };
  let cb = (fn) => new Promise((resolve, reject) => {
    fn((err, result) => (err ? reject(err) : resolve(result)));
  });
  let watched = new Set();
  return {
    storeToken: (token) => cb((done) => socket.auth.saveToken(socket.authTokenName, token, {}, done)),
    connect: (options) => socket.connect(options),
    disconnect: (code, reason) => socket.disconnect(code, reason),
    invoke: (procedure, data) => {
      rejectLocalEvent(procedure);
      return cb((done) => socket.emit(procedure, data, done));
    },
    transmit: (event, data) => {
      rejectLocalEvent(event);
      socket.emit(event, data);
    },
    subscribe(channel, options) {
      socket.subscribe(channel, options || undefined);
      if (!watched.has(channel)) {
        watched.add(channel);
        socket.watch(channel, (data) => recordPublication(channel, data));
      }
    },
    unsubscribe: (channel) => socket.unsubscribe(channel),
    invokePublish: (channel, data) => cb((done) => socket.publish(channel, data, done)),
    transmitPublish: (channel, data) => socket.publish(channel, data),
    authenticate: (token) => cb((done) => socket.authenticate(token, done)),
    deauthenticate: () => cb((done) => socket.deauthenticate(done)),
    processPendingSubscriptions: () => socket.processPendingSubscriptions(),
    send: (raw) => socket.send(raw),
    receiver(name) {
      socket.on(name, (data) => out({event: 'received', name, data}));
    },
    procedure(name, answer) {
      socket.on(name, (data, res) => {
        out({event: 'invoked', name, data});
        let result = answer(data);
        if (!res) return;
        if (result.error) res(result.error); else res(null, result.data);
      });
    },
    underlyingWs: () => socket.transport && socket.transport.socket
  };
}

function socketState(socket) {
  return {
    state: socket.state,
    authState: socket.authState,
    signedAuthToken: socket.signedAuthToken == null ? null : socket.signedAuthToken,
    authToken: socket.authToken == null ? null : socket.authToken,
    id: socket.id == null ? null : socket.id,
    pingTimeout: socket.pingTimeout,
    pendingReconnect: socket.pendingReconnect,
    pendingReconnectTimeout: socket.pendingReconnectTimeout,
    connectAttempts: socket.connectAttempts
  };
}

// ---------------------------------------------------------------------------------------
// Steps

function stepOps(socket, api, scenario) {
  const ctx = {scenario, eventCounts, publishCounts, waitFor, plain, makeError, api};
  return {
    connect: (s) => {
      api.connect(s.options);
    },
    disconnect: (s) => {
      api.disconnect(s.code, s.reason);
    },
    invoke: (s) => api.invoke(s.procedure, s.data, s.ackTimeout),
    transmit: async (s) => {
      await api.transmit(s.event, s.data);
    },
    subscribe: async (s) => {
      api.subscribe(s.channel, s.options);
      if (s.wait) {
        let before = eventCounts.get('subscribe') || 0;
        await waitFor(() => socket.isSubscribed(s.channel) ||
          (eventCounts.get('subscribe') || 0) > before, s.timeoutMs || 10000,
        `subscription to ${s.channel}`);
      }
    },
    unsubscribe: (s) => {
      api.unsubscribe(s.channel);
    },
    publish: async (s) => {
      await api.invokePublish(s.channel, s.data);
    },
    transmitPublish: async (s) => {
      await api.transmitPublish(s.channel, s.data);
    },
    authenticate: (s) => api.authenticate(s.token),
    deauthenticate: async () => {
      await api.deauthenticate();
    },
    processPendingSubscriptions: () => {
      api.processPendingSubscriptions();
    },
    waitEvent: async (s) => {
      let count = s.count == null ? 1 : s.count;
      await waitFor(() => (eventCounts.get(s.name) || 0) >= count, s.timeoutMs || 10000,
        `${count} client event(s) ${s.name}`);
      return eventCounts.get(s.name) || 0;
    },
    waitPublish: async (s) => {
      let count = s.count == null ? 1 : s.count;
      await waitFor(() => (publishCounts.get(s.channel) || 0) >= count, s.timeoutMs || 10000,
        `${count} publication(s) on ${s.channel}`);
      return publishCounts.get(s.channel) || 0;
    },
    sleep: (s) => new Promise((resolve) => setTimeout(resolve, s.ms || 0)),
    procedure: (s) => {
      api.procedure(s.name, () => (s.error ? {error: makeError(s.error)} : {data: s.answer}));
    },
    receiver: (s) => {
      api.receiver(s.name);
    },
    send: (s) => {
      api.send(s.raw);
    },
    state: () => socketState(socket),
    js: async (s) => {
      let fn = new AsyncFunction('socket', 'log', 'ctx', s.code);
      return fn(socket, (data) => out({event: 'log', data}), ctx);
    }
  };
}

async function runStep(ops, step, i) {
  let op = step && step.op;
  let handler = op && Object.prototype.hasOwnProperty.call(ops, op) ? ops[op] : null;
  if (!handler) {
    out({event: 'step', i, op, ok: false, error: {name: 'HarnessError', message: `unknown op ${op}`}});
    return;
  }
  try {
    let result = await handler(step);
    let line = {event: 'step', i, op, ok: true};
    line.result = result === undefined ? null : result;
    out(line);
  } catch (err) {
    out({event: 'step', i, op, ok: false, error: errorInfo(err)});
  }
}

async function* stdinLines() {
  let buffer = '';
  process.stdin.setEncoding('utf8');
  for await (let chunk of process.stdin) {
    buffer += chunk;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      let line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line) yield line;
    }
  }
  if (buffer.trim()) yield buffer.trim();
}

async function finish(socket, api, scenario) {
  if (scenario.disconnectAtEnd !== false && socket.state !== 'closed') {
    let ws = api.underlyingWs();
    let closed = new Promise((resolve) => {
      if (!ws || typeof ws.once !== 'function') {
        resolve();
        return;
      }
      ws.once('close', resolve);
      // generous: on a loaded machine the close handshake can take a while, and
      // exiting first makes the server see 1006 instead of 1000
      setTimeout(resolve, 5000);
    });
    socket.disconnect();
    await closed;
  }
  out({event: 'done'});
  exitAfterFlush(0);
}

async function main() {
  let scenario = await loadScenario();
  let version = String(scenario.version == null ? '20' : scenario.version);
  if (version !== '20' && version !== '14') {
    throw makeError({name: 'HarnessError', message: `unknown version ${version}`});
  }
  logMessages = !!scenario.logMessages;
  let timeoutMs = scenario.timeoutMs == null ? 20000 : scenario.timeoutMs;
  setTimeout(() => {
    fatal(makeError({name: 'TimeoutError', message: `scenario did not finish within ${timeoutMs} ms`}));
  }, timeoutMs).unref();

  let options = connectOptions(scenario);
  let autoConnect = options.autoConnect !== false;
  options.autoConnect = false;

  let socket;
  let api;
  if (version === '14') {
    options.multiplex = false;
    socket = require('socketcluster-client-v14').create(options);
    api = v14Adapter(socket);
  } else {
    socket = require('socketcluster-client').create(options);
    api = v20Adapter(socket);
  }

  if (scenario.authToken != null) {
    await api.storeToken(scenario.authToken);
  }
  if (autoConnect) api.connect();

  let ops = stepOps(socket, api, scenario);
  let steps = scenario.steps || [];
  let i = 0;
  for (; i < steps.length; i++) {
    await runStep(ops, steps[i], i);
  }
  if (scenario.interactive) {
    for await (let line of stdinLines()) {
      let step;
      try {
        step = JSON.parse(line);
      } catch (err) {
        out({event: 'step', i, op: null, ok: false, error: {name: 'HarnessError', message: `bad step line: ${line}`}});
        i++;
        continue;
      }
      if (step.op === 'end') break;
      await runStep(ops, step, i);
      i++;
    }
  }
  await finish(socket, api, scenario);
}

process.on('uncaughtException', fatal);
process.on('unhandledRejection', (err) => {
  out({event: 'unhandledRejection', error: errorInfo(err)});
});

main().catch(fatal);
