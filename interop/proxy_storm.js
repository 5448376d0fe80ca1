// Reconnect storm against `serve --proxy-subscribe`: N sockets subscribe to room/0..9,
// all reconnect at once, and resubscribe. Prints one JSON line per phase.
// Usage: node proxy_storm.js URL N
const {create} = require('socketcluster-client');
const [url, n] = [process.argv[2], Number(process.argv[3] || 100)];
const {hostname, port, pathname} = new URL(url);

function allSubscribed(sockets) {
  return sockets.every((s) => s.subscriptions(false).length === 10);
}
function progress(sockets) {
  const open = sockets.filter((s) => s.state === 'open').length;
  const subs = sockets.reduce((n, s) => n + s.subscriptions(false).length, 0);
  return `${open} open, ${subs} subscriptions`;
}
function waitUntil(pred, what, ms = 200000) {
  const deadline = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const t = setInterval(() => {
      if (pred()) { clearInterval(t); resolve(); }
      else if (Date.now() > deadline) { clearInterval(t); reject(new Error(`timed out: ${what}`)); }
    }, 20);
  });
}

(async () => {
  const sockets = [];
  for (let i = 0; i < n; i++) {
    const s = create({hostname, port: Number(port), path: pathname, autoReconnectOptions: {initialDelay: 100, randomness: 100}});
    for (let c = 0; c < 10; c++) s.subscribe(`room/${c}`);
    sockets.push(s);
  }
  let t0 = Date.now();
  await waitUntil(() => allSubscribed(sockets), 'first subscriptions')
    .catch((e) => { throw new Error(`${e.message} (${progress(sockets)})`); });
  console.log(JSON.stringify({phase: 'subscribed', sockets: n, ms: Date.now() - t0}));
  t0 = Date.now();
  for (const s of sockets) s.reconnect(4000, 'storm'); // all at once; channels go pending
  await waitUntil(() => sockets.every((s) => s.state === 'open') && allSubscribed(sockets), 'resubscriptions')
    .catch((e) => { throw new Error(`${e.message} (${progress(sockets)})`); });
  console.log(JSON.stringify({phase: 'resubscribed', sockets: n, ms: Date.now() - t0}));
  for (const s of sockets) s.disconnect();
  process.exit(0);
})().catch((e) => { console.log(JSON.stringify({phase: 'error', message: e.message})); process.exit(1); });
