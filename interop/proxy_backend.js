// An application backend for `socketcluster serve --proxy-*` (README "Application logic
// in any language"): login, private channels, stamped chat messages. Plain Node, no
// dependencies. Every hook may post to this one URL: the body's `hook` field says which.
const http = require('http');
const crypto = require('crypto');
const SECRET = process.env.PROXY_SECRET || 'change-me';
const stats = {calls: {}, badSignatures: 0};

function signed(req, body) { // HMAC-SHA256 over "<timestamp>.<body>", 60 s window
  const ts = req.headers['x-socketcluster-timestamp'] || '';
  const want = 'sha256=' + crypto.createHmac('sha256', SECRET).update(ts + '.' + body).digest('hex');
  const got = String(req.headers['x-socketcluster-signature'] || '');
  return got.length === want.length && crypto.timingSafeEqual(Buffer.from(got), Buffer.from(want))
    && Math.abs(Date.now() - Number(ts)) < 60000;
}

const hooks = {
  rpc({procedure, data, socket}) {
    if (procedure === 'login') {
      if (!data || data.password !== 'secret') {
        return {error: {name: 'LoginError', message: 'Wrong user name or password', field: 'password'}};
      }
      return {setAuthToken: {claims: {username: data.username}, expiresIn: 3600}, data: 'welcome'};
    }
    if (procedure === 'whoami') return {data: socket.authToken && socket.authToken.username};
    if (procedure === 'slow') return new Promise((r) => setTimeout(() => r({data: 'late'}), 3000));
    return {error: {name: 'UnknownProcedureError', message: `No procedure ${procedure}`}};
  },
  subscribe({channel, socket}) {
    const user = socket.authToken && socket.authToken.username;
    if (channel.startsWith('private/') && channel !== `private/${user}`) {
      return {error: {name: 'ForbiddenError', message: `You may not read ${channel}`}};
    }
    return {allow: true, ttl: 60, cacheScope: channel.startsWith('room/') ? 'channel' : 'token'};
  },
  publish({data, socket}) {
    return {data: {...data, from: socket.authToken ? socket.authToken.username : 'guest'}};
  },
};

http.createServer((req, res) => {
  let body = '';
  req.on('data', (chunk) => { body += chunk; });
  req.on('end', async () => {
    if (req.method === 'GET') return res.end(JSON.stringify(stats)); // test statistics
    if (!signed(req, body)) { stats.badSignatures++; res.writeHead(401); return res.end(); }
    const msg = JSON.parse(body);
    stats.calls[msg.hook] = (stats.calls[msg.hook] || 0) + 1;
    if (msg.procedure === 'garbage') return res.end('<html>not json'); // for the tests
    const answer = await (hooks[msg.hook] || (() => ({})))(msg);
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(answer));
  });
}).listen(Number(process.env.PORT || 3000), '127.0.0.1', function () {
  console.log(JSON.stringify({port: this.address().port}));
});
