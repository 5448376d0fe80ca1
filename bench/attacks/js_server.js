'use strict';
// The JS reference server for bench/attacks: socketcluster-server 20.0.1 (from
// interop/node_modules, pinned by interop/package-lock.json) with its DEFAULT options,
// attached to a plain Node http server that answers every non-upgrade request with 501
// (like interop/bench_server.js). Nothing is consumed but the socket streams a normal
// application would have; no limits are added.
//
//   node js_server.js [--port PORT]     (always 127.0.0.1; 0 = OS-chosen)
//
// Prints `listening addr=127.0.0.1:PORT` on stderr once listening; SIGTERM/SIGINT exit.

const path = require('path');
const http = require('http');
const modules = path.join(__dirname, '..', '..', 'interop', 'node_modules');
const socketClusterServer = require(path.join(modules, 'socketcluster-server'));

let port = 0;
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === '--port') port = Number(argv[++i]);
  else throw new Error(`unknown argument ${argv[i]}`);
}

const httpServer = http.createServer((req, res) => {
  res.writeHead(501);
  res.end('Not Implemented');
});
const agServer = socketClusterServer.attach(httpServer, {});

// Drain the server-level error stream like an application would (an unconsumed stream
// simply drops its events, so this changes nothing but makes the behaviour explicit).
(async () => {
  // eslint-disable-next-line no-unused-vars
  for await (const _ of agServer.listener('error')) { /* ignored */ }
})();

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}

httpServer.listen(port, '127.0.0.1', () => {
  const a = httpServer.address();
  process.stderr.write(`listening addr=${a.address}:${a.port}\n`);
});
