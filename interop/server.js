'use strict';
// A configurable real JS SocketCluster server for the Rust interop tests.
//
//   node server.js '<json options>'        (or '@/path/to/options.json')
//
// Options (all optional):
//   version            "20" (socketcluster-server 20.0.1, default) or "14" (14.7.2)
//   port               0 = OS-chosen; always bound on 127.0.0.1
//   privatePattern     glob ("private/*") or array of globs: SUBSCRIBE / PUBLISH_IN by an
//                      unauthenticated socket on a matching channel is blocked with
//                      UnauthorizedSubscribeError / UnauthorizedPublishError ("rejected" line)
//   publisher          {"channel": "...", "intervalMs": N}: publishes {"seq": n} through
//                      server.exchange every N ms, n = startSeq, startSeq+1, ... ("published")
//   startSeq           first seq of the publisher (default 1)
//   handshakeMiddleware  "block4501" | "block4008" | "blockSilent" | "blockWS" |
//                      "delay:<ms>" | "blockStatus:<code>"
//   authenticateBlock  array of usernames whose tokens the AUTHENTICATE middleware rejects
//                      with {name:"AuthenticateMiddlewareError", message:"No <username>"}
//   logMessages        print every inbound raw message as a "message" line
//   everything else    passed verbatim to the server constructor (authKey, pingInterval,
//                      pingTimeout, pingTimeoutDisabled, protocolVersion, handshakeTimeout,
//                      ackTimeout, socketChannelLimit, allowClientPublish, origins, path,
//                      batchOnHandshake, authDefaultExpiry, strictHandshake, maxPayload, ...)
//
// stdout: one JSON object per line, always with "event" and "t" (ms). stdin: JSON command
// lines {"id": n, "cmd": "...", ...}, each answered by {"event":"reply","id":n,"ok":bool,...}.
// See interop/README.md for the full list.

const http = require('http');
const {plain, errorInfo, out, exitAfterFlush, readJsonArg, globMatcher, makeError} = require('./common');

process.on('uncaughtException', (err) => {
  out({event: 'fatal', error: errorInfo(err)});
  exitAfterFlush(1);
});
process.on('unhandledRejection', (err) => {
  out({event: 'unhandledRejection', error: errorInfo(err)});
});

const HARNESS_KEYS = new Set([
  'version', 'port', 'privatePattern', 'publisher', 'startSeq', 'handshakeMiddleware',
  'authenticateBlock', 'logMessages'
]);

const options = readJsonArg(process.argv[2]) || {};
const version = String(options.version == null ? '20' : options.version);
if (version !== '20' && version !== '14') {
  throw makeError({name: 'HarnessError', message: `unknown version ${version}`});
}
const isV14 = version === '14';

const serverOptions = {};
for (let [key, value] of Object.entries(options)) {
  // The v20 constructor uses Object.assign, so an explicit null/undefined would replace a
  // default; leave such keys out.
  if (!HARNESS_KEYS.has(key) && value != null) serverOptions[key] = value;
}

const scServer = require(isV14 ? 'socketcluster-server-v14' : 'socketcluster-server');

const httpServer = http.createServer((req, res) => {
  res.writeHead(501);
  res.end('Not Implemented');
});
const server = scServer.attach(httpServer, serverOptions);

const sockets = new Map(); // id -> socket (every socket that reached the WebSocket stage)
let pingingStopped = false;
const isPrivate = globMatcher(options.privatePattern);
const authenticateBlock = new Set(options.authenticateBlock || []);

function socketById(id) {
  let socket = sockets.get(id);
  if (!socket) throw makeError({name: 'HarnessError', message: `no socket with id ${id}`});
  return socket;
}

// The sockets a command targets: the given one, or every open socket.
function targets(id) {
  if (id != null) return [socketById(id)];
  return Array.from(sockets.values()).filter((s) => s.state === 'open');
}

function isAuthenticated(socket) {
  return socket.authState === 'authenticated';
}

function stopSocketPinging(socket) {
  clearInterval(socket._pingIntervalTicker);
  socket._pingIntervalTicker = null;
}

// ---------------------------------------------------------------------------------------
// Version-neutral socket operations

function sockInvoke(socket, procedure, data) {
  if (!isV14) return socket.invoke(procedure, data);
  return new Promise((resolve, reject) => {
    socket.emit(procedure, data, (err, result) => (err ? reject(err) : resolve(result)));
  });
}

function sockTransmit(socket, event, data) {
  if (isV14) {
    socket.emit(event, data);
  } else {
    socket.transmit(event, data);
  }
}

function sockSetAuthToken(socket, claims, tokenOptions) {
  if (isV14) {
    socket.setAuthToken(claims, tokenOptions);
    return;
  }
  socket.setAuthToken(claims, tokenOptions).catch((err) => {
    out({event: 'harnessError', op: 'setAuthToken', socket: socket.id, error: errorInfo(err)});
  });
}

function sockDeauthenticate(socket) {
  if (isV14) {
    socket.deauthenticate();
    return;
  }
  socket.deauthenticate().catch((err) => {
    out({event: 'harnessError', op: 'deauthenticate', socket: socket.id, error: errorInfo(err)});
  });
}

function sockKickOut(socket, channel, message) {
  if (isV14) {
    socket.kickOut(channel, message);
    return;
  }
  Promise.resolve(socket.kickOut(channel, message)).catch((err) => {
    out({event: 'harnessError', op: 'kickOut', socket: socket.id, error: errorInfo(err)});
  });
}

function exchangePublish(channel, data) {
  if (!isV14) return server.exchange.invokePublish(channel, data);
  return new Promise((resolve, reject) => {
    server.exchange.publish(channel, data, (err) => (err ? reject(err) : resolve()));
  });
}

// ---------------------------------------------------------------------------------------
// Procedures every socket answers

function procedures(socket) {
  return {
    echo: (data) => data,
    error: () => {
      throw makeError({name: 'CustomError', message: 'it failed', extra: 42});
    },
    // Same as `error`, for v14 peers, which treat the name "error" as a local event.
    fail: () => {
      throw makeError({name: 'CustomError', message: 'it failed', extra: 42});
    },
    neverAnswer: () => new Promise(() => {}),
    delayedEcho: (data) => new Promise((resolve) => {
      setTimeout(() => resolve(data && data.data), (data && data.ms) || 0);
    }),
    login: (data) => {
      data = data || {};
      let claims = Object.assign({username: data.username}, data.claims || {});
      let tokenOptions = data.expiresIn != null ? {expiresIn: data.expiresIn} : undefined;
      sockSetAuthToken(socket, claims, tokenOptions);
      return 'ok';
    },
    logout: () => {
      sockDeauthenticate(socket);
      return undefined;
    },
    whoami: () => ({
      authState: socket.authState,
      authToken: socket.authToken == null ? null : socket.authToken
    }),
    serverInvoke: async (data) => sockInvoke(socket, data.procedure, data.data),
    serverTransmit: (data) => {
      sockTransmit(socket, data.event, data.data);
      return undefined;
    },
    kick: (data) => {
      data = data || {};
      sockKickOut(socket, data.channel, data.message);
      return undefined;
    },
    disconnectMe: (data) => {
      data = data || {};
      // Answer first: the reply is written before the close frame.
      setImmediate(() => socket.disconnect(data.code, data.reason));
      return undefined;
    },
    setAuthKey: (data) => {
      server.signatureKey = data;
      server.verificationKey = data;
      return undefined;
    }
  };
}

function registerProcedures(socket) {
  let procs = procedures(socket);
  for (let [name, fn] of Object.entries(procs)) {
    if (isV14 && socket._localEvents[name] != null) continue;
    let handle = async (data, respond) => {
      let result;
      try {
        result = await fn(data);
      } catch (err) {
        respond(err);
        return;
      }
      respond(null, result);
    };
    if (isV14) {
      socket.on(name, (data, res) => {
        handle(data, (err, result) => (err ? res(err) : res(null, result)));
      });
    } else {
      (async () => {
        for await (let req of socket.procedure(name)) {
          handle(req.data, (err, result) => (err ? req.error(err) : req.end(result)));
        }
      })();
    }
  }
}

// ---------------------------------------------------------------------------------------
// Middleware

function privateRejection(kind, socket, channel) {
  let name = kind === 'subscribe' ? 'UnauthorizedSubscribeError' : 'UnauthorizedPublishError';
  let err = makeError({
    name,
    message: `Unauthenticated socket cannot ${kind} on private channel ${channel}`
  });
  out({event: 'rejected', socket: socket.id, kind, channel, error: errorInfo(err)});
  return err;
}

function handshakeBehaviour() {
  let spec = options.handshakeMiddleware;
  if (!spec) return null;
  let [name, arg] = String(spec).split(':');
  switch (name) {
    case 'block4501':
      return {sc: () => makeError({
        name: 'InvalidAuthQueryHandshakeError',
        message: 'AG handshake failed because of invalid query auth parameters',
        statusCode: 4501
      })};
    case 'block4008':
    case 'blockLazy':
      return {sc: () => makeError({
        name: 'TooLazyHandshakeError',
        message: 'AG handshake failed because the server was too lazy'
      })};
    case 'blockStatus':
      return {sc: () => makeError({
        name: 'HandshakeBlockedError',
        message: `Handshake blocked with ${arg}`,
        statusCode: Number(arg)
      })};
    case 'blockSilent':
      return {sc: () => null};
    case 'blockWS':
      return {ws: () => new Error('Go away')};
    case 'delay':
      return {delayMs: Number(arg) || 0};
    default:
      throw makeError({name: 'HarnessError', message: `unknown handshakeMiddleware ${spec}`});
  }
}

function authenticateRejection(authToken) {
  let username = authToken && authToken.username;
  if (username != null && authenticateBlock.has(username)) {
    return makeError({name: 'AuthenticateMiddlewareError', message: `No ${username}`});
  }
  return null;
}

function installMiddlewareV20() {
  let behaviour = handshakeBehaviour();
  if (behaviour) {
    server.setMiddleware(server.MIDDLEWARE_HANDSHAKE, async (stream) => {
      for await (let action of stream) {
        if (action.type === action.HANDSHAKE_WS && behaviour.ws) {
          action.block(behaviour.ws());
        } else if (action.type === action.HANDSHAKE_SC && behaviour.sc) {
          let err = behaviour.sc();
          if (err) action.block(err); else action.block();
        } else if (action.type === action.HANDSHAKE_SC && behaviour.delayMs) {
          setTimeout(() => action.allow(), behaviour.delayMs);
        } else {
          action.allow();
        }
      }
    });
  }
  if (options.logMessages) {
    server.setMiddleware(server.MIDDLEWARE_INBOUND_RAW, async (stream) => {
      for await (let action of stream) {
        out({event: 'message', socket: action.socket.id, message: action.data});
        action.allow();
      }
    });
  }
  server.setMiddleware(server.MIDDLEWARE_INBOUND, async (stream) => {
    for await (let action of stream) {
      let socket = action.socket;
      if (action.type === action.TRANSMIT) {
        out({event: 'transmit', socket: socket.id, name: action.receiver, data: action.data});
        action.allow();
      } else if (action.type === action.SUBSCRIBE && isPrivate && isPrivate(action.channel) &&
          !isAuthenticated(socket)) {
        action.block(privateRejection('subscribe', socket, action.channel));
      } else if (action.type === action.PUBLISH_IN && isPrivate && isPrivate(action.channel) &&
          !isAuthenticated(socket)) {
        action.block(privateRejection('publish', socket, action.channel));
      } else if (action.type === action.AUTHENTICATE && authenticateRejection(action.authToken)) {
        action.block(authenticateRejection(action.authToken));
      } else {
        action.allow();
      }
    }
  });
}

function installMiddlewareV14() {
  let behaviour = handshakeBehaviour();
  if (behaviour) {
    if (behaviour.ws) {
      server.addMiddleware(server.MIDDLEWARE_HANDSHAKE_WS, (req, next) => next(behaviour.ws()));
    }
    if (behaviour.sc) {
      server.addMiddleware(server.MIDDLEWARE_HANDSHAKE_SC, (req, next) => {
        let err = behaviour.sc();
        next(err || true);
      });
    }
    if (behaviour.delayMs) {
      server.addMiddleware(server.MIDDLEWARE_HANDSHAKE_SC, (req, next) => {
        setTimeout(() => next(), behaviour.delayMs);
      });
    }
  }
  if (isPrivate) {
    server.addMiddleware(server.MIDDLEWARE_SUBSCRIBE, (req, next) => {
      if (isPrivate(req.channel) && !isAuthenticated(req.socket)) {
        next(privateRejection('subscribe', req.socket, req.channel));
      } else {
        next();
      }
    });
    server.addMiddleware(server.MIDDLEWARE_PUBLISH_IN, (req, next) => {
      if (isPrivate(req.channel) && !isAuthenticated(req.socket)) {
        next(privateRejection('publish', req.socket, req.channel));
      } else {
        next();
      }
    });
  }
  if (authenticateBlock.size) {
    server.addMiddleware(server.MIDDLEWARE_AUTHENTICATE, (req, next) => {
      let err = authenticateRejection(req.authToken);
      if (err) next(err); else next();
    });
  }
}

// v14 has no TRANSMIT middleware action: log transmitted (cid-less) events from the raw
// message stream instead, skipping the reserved events the server consumes itself.
const V14_CONSUMED = new Set([
  '#handshake', '#authenticate', '#removeAuthToken', '#subscribe', '#unsubscribe', '#publish'
]);

function logV14Transmits(socket, message) {
  if (options.logMessages) {
    out({event: 'message', socket: socket.id, message});
  }
  let obj;
  try {
    obj = JSON.parse(message.toString());
  } catch (e) {
    return;
  }
  let packets = Array.isArray(obj) ? obj : [obj];
  for (let p of packets) {
    if (p && typeof p.event === 'string' && typeof p.cid !== 'number' &&
        !V14_CONSUMED.has(p.event)) {
      out({event: 'transmit', socket: socket.id, name: p.event, data: p.data});
    }
  }
}

// ---------------------------------------------------------------------------------------
// Server events

function onHandshake(socket) {
  sockets.set(socket.id, socket);
  if (pingingStopped) stopSocketPinging(socket);
  out({event: 'handshake', socket: socket.id});
  registerProcedures(socket);
  if (isV14) {
    socket.on('message', (message) => logV14Transmits(socket, message));
  }
}

function onClosed(socket) {
  // Keep closed sockets briefly addressable for late commands; drop them afterwards.
  setTimeout(() => {
    if (sockets.get(socket.id) === socket && socket.state === 'closed') sockets.delete(socket.id);
  }, 1000);
}

function connectionLine(socket, status) {
  let line = {
    event: 'connection',
    socket: socket.id,
    isAuthenticated: !!status.isAuthenticated,
    pingTimeout: status.pingTimeout
  };
  if (status.authError) line.authError = errorInfo(status.authError);
  out(line);
}

function listenV20() {
  let on = (name, fn) => {
    (async () => {
      for await (let data of server.listener(name)) {
        try {
          fn(data);
        } catch (err) {
          out({event: 'harnessError', op: name, error: errorInfo(err)});
        }
      }
    })();
  };
  on('handshake', ({socket}) => onHandshake(socket));
  on('connection', (status) => connectionLine(status.socket, status));
  on('connectionAbort', ({socket, code, reason}) => {
    out({event: 'connectionAbort', socket: socket.id, code, reason});
  });
  on('disconnection', ({socket, code, reason}) => {
    out({event: 'disconnection', socket: socket.id, code, reason});
  });
  on('closure', ({socket, code, reason}) => {
    out({event: 'closure', socket: socket.id, code, reason});
    onClosed(socket);
  });
  on('subscription', ({socket, channel, subscriptionOptions}) => {
    out({event: 'subscription', socket: socket.id, channel, subscriptionOptions});
  });
  on('unsubscription', ({socket, channel}) => {
    out({event: 'unsubscription', socket: socket.id, channel});
  });
  on('authentication', ({socket, authToken}) => {
    out({event: 'authentication', socket: socket.id, authToken});
  });
  on('authenticationStateChange', ({socket, oldAuthState, newAuthState}) => {
    out({event: 'authenticationStateChange', socket: socket.id, oldAuthState, newAuthState});
  });
  on('deauthentication', ({socket, oldAuthToken}) => {
    out({event: 'deauthentication', socket: socket.id, oldAuthToken});
  });
  on('badSocketAuthToken', ({socket, authError, signedAuthToken}) => {
    out({event: 'badSocketAuthToken', socket: socket.id, error: errorInfo(authError), signedAuthToken});
  });
  on('warning', ({warning}) => {
    let info = errorInfo(warning);
    out({event: 'warning', name: info.name, message: info.message, error: info});
  });
  on('error', ({error}) => {
    let info = errorInfo(error);
    out({event: 'error', name: info.name, message: info.message, error: info});
  });
}

function listenV14() {
  server.on('handshake', (socket) => onHandshake(socket));
  server.on('connection', (socket, status) => connectionLine(socket, status || {}));
  server.on('connectionAbort', (socket, code, reason) => {
    out({event: 'connectionAbort', socket: socket.id, code, reason});
  });
  server.on('disconnection', (socket, code, reason) => {
    out({event: 'disconnection', socket: socket.id, code, reason});
  });
  server.on('closure', (socket, code, reason) => {
    out({event: 'closure', socket: socket.id, code, reason});
    onClosed(socket);
  });
  server.on('subscription', (socket, channel, subscriptionOptions) => {
    out({event: 'subscription', socket: socket.id, channel, subscriptionOptions});
  });
  server.on('unsubscription', (socket, channel) => {
    out({event: 'unsubscription', socket: socket.id, channel});
  });
  server.on('authentication', (socket, authToken) => {
    out({event: 'authentication', socket: socket.id, authToken});
  });
  server.on('authenticationStateChange', (socket, data) => {
    out({event: 'authenticationStateChange', socket: socket.id,
      oldAuthState: data && data.oldState, newAuthState: data && data.newState});
  });
  server.on('deauthentication', (socket, oldAuthToken) => {
    out({event: 'deauthentication', socket: socket.id, oldAuthToken});
  });
  server.on('badSocketAuthToken', (socket, status) => {
    out({event: 'badSocketAuthToken', socket: socket.id, error: errorInfo(status.authError),
      signedAuthToken: status.signedAuthToken});
  });
  server.on('warning', (warning) => {
    let info = errorInfo(warning);
    out({event: 'warning', name: info.name, message: info.message, error: info});
  });
  server.on('error', (error) => {
    let info = errorInfo(error);
    out({event: 'error', name: info.name, message: info.message, error: info});
  });
}

// ---------------------------------------------------------------------------------------
// Control commands (stdin)

const exchangeWatched = new Set();

const commands = {
  async publish(cmd) {
    await exchangePublish(cmd.channel, cmd.data);
    return {};
  },
  kick(cmd) {
    let list = targets(cmd.socket);
    for (let socket of list) sockKickOut(socket, cmd.channel, cmd.message);
    return {sockets: list.map((s) => s.id)};
  },
  disconnect(cmd) {
    let list = targets(cmd.socket);
    for (let socket of list) socket.disconnect(cmd.code, cmd.reason);
    return {sockets: list.map((s) => s.id)};
  },
  terminate(cmd) {
    let list = targets(cmd.socket);
    for (let socket of list) socket.terminate();
    return {sockets: list.map((s) => s.id)};
  },
  setAuthToken(cmd) {
    let list = targets(cmd.socket);
    for (let socket of list) sockSetAuthToken(socket, cmd.claims || {}, cmd.options);
    return {sockets: list.map((s) => s.id)};
  },
  deauthenticate(cmd) {
    let list = targets(cmd.socket);
    for (let socket of list) sockDeauthenticate(socket);
    return {sockets: list.map((s) => s.id)};
  },
  setAuthKey(cmd) {
    server.signatureKey = cmd.key;
    server.verificationKey = cmd.key;
    return {};
  },
  async invoke(cmd) {
    let data = await sockInvoke(socketById(cmd.socket), cmd.procedure, cmd.data);
    return {data};
  },
  transmit(cmd) {
    let list = targets(cmd.socket);
    for (let socket of list) sockTransmit(socket, cmd.event, cmd.data);
    return {sockets: list.map((s) => s.id)};
  },
  stopPinging() {
    pingingStopped = true;
    for (let socket of sockets.values()) stopSocketPinging(socket);
    return {};
  },
  watch(cmd) {
    // Server-side exchange subscription: every publication prints an "exchangePublish" line.
    if (exchangeWatched.has(cmd.channel)) return {};
    exchangeWatched.add(cmd.channel);
    if (isV14) {
      server.exchange.subscribe(cmd.channel).watch((data) => {
        out({event: 'exchangePublish', channel: cmd.channel, data});
      });
    } else {
      (async () => {
        for await (let data of server.exchange.subscribe(cmd.channel)) {
          out({event: 'exchangePublish', channel: cmd.channel, data});
        }
      })();
    }
    return {};
  },
  clients() {
    let clients = Array.from(sockets.values()).filter((s) => s.state === 'open').map((s) => ({
      id: s.id,
      authState: s.authState,
      authToken: s.authToken == null ? null : s.authToken,
      channels: s.subscriptions()
    }));
    return {clients};
  },
  close() {
    setImmediate(() => shutdown(0));
    return {};
  }
};

async function runCommand(line) {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (err) {
    out({event: 'reply', id: null, ok: false, error: {name: 'HarnessError', message: `bad command line: ${line}`}});
    return;
  }
  let id = cmd.id == null ? null : cmd.id;
  let handler = Object.prototype.hasOwnProperty.call(commands, cmd.cmd) ? commands[cmd.cmd] : null;
  if (!handler) {
    out({event: 'reply', id, ok: false, error: {name: 'HarnessError', message: `unknown command ${cmd.cmd}`}});
    return;
  }
  try {
    let result = await handler(cmd);
    out(Object.assign({event: 'reply', id, ok: true}, result || {}));
  } catch (err) {
    out({event: 'reply', id, ok: false, error: errorInfo(err)});
  }
}

function readCommands() {
  let buffer = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => {
    buffer += chunk;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      let line = buffer.slice(0, nl).trim();
      buffer = buffer.slice(nl + 1);
      if (line) runCommand(line);
    }
  });
  process.stdin.on('end', () => shutdown(0));
  process.stdin.on('error', () => shutdown(0));
}

// ---------------------------------------------------------------------------------------
// Publisher

function startPublisher() {
  let p = options.publisher;
  if (!p || !p.channel) return;
  let seq = options.startSeq == null ? 1 : Number(options.startSeq);
  setInterval(() => {
    let n = seq++;
    exchangePublish(p.channel, {seq: n}).then(
      () => out({event: 'published', channel: p.channel, seq: n}),
      (err) => out({event: 'harnessError', op: 'publisher', error: errorInfo(err)})
    );
  }, p.intervalMs || 100);
}

// ---------------------------------------------------------------------------------------

let shuttingDown = false;
function shutdown(code) {
  if (shuttingDown) return;
  shuttingDown = true;
  for (let socket of sockets.values()) {
    try {
      socket.terminate();
    } catch (e) {
      // already gone
    }
  }
  try {
    httpServer.close();
  } catch (e) {
    // not listening
  }
  out({event: 'exit', code});
  exitAfterFlush(code);
}

process.on('SIGTERM', () => shutdown(0));
process.on('SIGINT', () => shutdown(0));

httpServer.on('error', (err) => {
  out({event: 'listenError', code: err.code, error: errorInfo(err)});
  exitAfterFlush(3);
});

if (isV14) {
  installMiddlewareV14();
  listenV14();
} else {
  installMiddlewareV20();
  listenV20();
}

async function main() {
  if (!server.isReady) {
    await new Promise((resolve) => {
      if (isV14) {
        server.once('ready', resolve);
      } else {
        server.listener('ready').once().then(resolve);
      }
    });
  }
  httpServer.listen(options.port || 0, '127.0.0.1', () => {
    out({event: 'listening', port: httpServer.address().port, version});
    readCommands();
    startPublisher();
  });
}

main().catch((err) => {
  out({event: 'fatal', error: errorInfo(err)});
  exitAfterFlush(1);
});
