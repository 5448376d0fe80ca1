'use strict';
// The JS reference for `bench/proxy`: socketcluster-server 20.0.1 whose `echo` procedure
// does what `serve --proxy-rpc` does, in the application: POST the same JSON request
// (HMAC-signed) to the backend over a keep-alive agent and answer with its `data`.
//
//   node proxy_js_server.js --port PORT --backend URL [--secret S]
//
// Prints `listening addr=HOST:PORT` on stderr once listening.
const http = require('http');
const crypto = require('crypto');
const socketClusterServer = require('socketcluster-server');

const args = {port: 8000, backend: null, secret: 'bench'};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].slice(2)] = process.argv[i + 1];
const backend = new URL(args.backend);
const agent = new http.Agent({keepAlive: true, maxSockets: 256});

function post(body) {
  return new Promise((resolve, reject) => {
    const ts = String(Date.now());
    const sig = 'sha256=' + crypto.createHmac('sha256', args.secret).update(ts + '.' + body).digest('hex');
    const req = http.request({
      agent, method: 'POST', hostname: backend.hostname, port: backend.port, path: backend.pathname,
      timeout: 1000,
      headers: {'content-type': 'application/json', 'content-length': Buffer.byteLength(body),
        'x-socketcluster-timestamp': ts, 'x-socketcluster-signature': sig}
    }, (res) => {
      let data = '';
      res.on('data', (c) => { data += c; });
      res.on('end', () => { try { resolve(JSON.parse(data)); } catch (e) { reject(e); } });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(body);
  });
}

const httpServer = http.createServer();
const agServer = socketClusterServer.attach(httpServer, {authKey: 'bench-key'});
(async () => {
  for await (const {socket} of agServer.listener('connection')) {
    (async () => {
      for await (const req of socket.procedure('echo')) {
        const body = JSON.stringify({v: 1, hook: 'rpc', procedure: 'echo', data: req.data,
          socket: {id: socket.id, remoteAddress: socket.remoteAddress, authToken: socket.authToken, headers: {}}});
        post(body).then((a) => (a.error ? req.error(Object.assign(new Error(a.error.message), a.error)) : req.end(a.data)),
          (e) => req.error(e));
      }
    })();
  }
})();
httpServer.listen(Number(args.port), '127.0.0.1', () => {
  const a = httpServer.address();
  process.stderr.write(`listening addr=${a.address}:${a.port}\n`);
});
