'use strict';
// The benchmark server, JS side of the pair (crates/cli/examples/bench_server.rs is the
// Rust side, with the same application logic). socketcluster-server 20.0.1.
//
//   node bench_server.js --port PORT --auth-key KEY [--host 127.0.0.1]
//
// * procedure `echo`: answers with the request data;
// * procedure `login`: setAuthToken({username: data.username}), then an empty
//   acknowledgement;
// * tokens in #handshake are verified with the same key (HS256, the JS default);
// * clients may publish; pingInterval 8000 ms, pingTimeout 30000 ms (the defaults);
// * no socketChannelLimit (the default).
//
// Prints `listening addr=HOST:PORT` on stderr once listening; SIGTERM/SIGINT exit.

const http = require('http');
const socketClusterServer = require('socketcluster-server');

function parseArgs(argv) {
  const args = {port: 8000, host: '127.0.0.1', authKey: null};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--port') args.port = Number(next());
    else if (a === '--host') args.host = next();
    else if (a === '--auth-key') args.authKey = next();
    else throw new Error(`unknown argument ${a}`);
  }
  if (!args.authKey) throw new Error('--auth-key is required');
  return args;
}

const args = parseArgs(process.argv.slice(2));

const httpServer = http.createServer((req, res) => {
  res.writeHead(501);
  res.end('Not Implemented');
});
const agServer = socketClusterServer.attach(httpServer, {
  authKey: args.authKey,
  pingInterval: 8000,
  pingTimeout: 30000,
  allowClientPublish: true
});

function serveSocket(socket) {
  (async () => {
    for await (const req of socket.procedure('echo')) {
      req.end(req.data);
    }
  })();
  (async () => {
    for await (const req of socket.procedure('login')) {
      try {
        const data = req.data || {};
        await socket.setAuthToken({username: data.username});
        req.end();
      } catch (err) {
        req.error(err);
      }
    }
  })();
}

(async () => {
  for await (const {socket} of agServer.listener('connection')) {
    serveSocket(socket);
  }
})();

(async () => {
  for await (const {error} of agServer.listener('error')) {
    process.stderr.write(`error ${error && error.message}\n`);
  }
})();

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}

httpServer.listen(args.port, args.host, () => {
  const addr = httpServer.address();
  process.stderr.write(`listening addr=${addr.address}:${addr.port}\n`);
});
