'use strict';
// JS load generator for the client-side comparison with `socketcluster bench rpc`:
// the same RPC workload driven by socketcluster-client 20.0.2.
//
//   node bench_client.js --url ws://127.0.0.1:PORT/socketcluster/ \
//       [--mode pipelined|sequential] [--in-flight 100] [--duration 5] [--warmup 1] \
//       [--payload-size 64] [--procedure echo]
//
// Prints one JSON object on stdout:
//   {"scenario":"rpc-js-client","params":{...},"metrics":{"invokes_per_s":..,
//    "p50_ms":..,"p99_ms":..,"client_cpu_s":..,"per_client_cpu_s":..,"errors":..}}
// client_cpu_s is process.cpuUsage() (user + system, all threads) over the measured part.

const socketClusterClient = require('socketcluster-client');

function parseArgs(argv) {
  const args = {
    url: 'ws://127.0.0.1:8000/socketcluster/',
    mode: 'pipelined',
    inFlight: 100,
    duration: 5,
    warmup: 1,
    payloadSize: 64,
    procedure: 'echo'
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === '--url') args.url = next();
    else if (a === '--mode') args.mode = next();
    else if (a === '--in-flight') args.inFlight = Number(next());
    else if (a === '--duration') args.duration = Number(next());
    else if (a === '--warmup') args.warmup = Number(next());
    else if (a === '--payload-size') args.payloadSize = Number(next());
    else if (a === '--procedure') args.procedure = next();
    else throw new Error(`unknown argument ${a}`);
  }
  if (args.mode !== 'pipelined' && args.mode !== 'sequential') {
    throw new Error(`--mode must be pipelined or sequential`);
  }
  if (args.mode === 'sequential') args.inFlight = 1;
  return args;
}

// Log-linear histogram in microseconds, like the Rust bench (64 sub-buckets per power
// of two); here simply a sorted sample array is precise enough.
function quantile(sorted, q) {
  if (sorted.length === 0) return 0;
  const rank = Math.max(1, Math.ceil(q * sorted.length));
  return sorted[rank - 1];
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const u = new URL(args.url);
  const socket = socketClusterClient.create({
    hostname: u.hostname,
    port: Number(u.port) || (u.protocol === 'wss:' ? 443 : 80),
    path: u.pathname && u.pathname !== '/' ? u.pathname : '/socketcluster/',
    secure: u.protocol === 'wss:',
    autoReconnect: false
  });
  await socket.listener('connect').once();
  // A JSON string of exactly payloadSize bytes once encoded, as in the Rust bench.
  const data = 'x'.repeat(Math.max(0, args.payloadSize - 2));
  await socket.invoke(args.procedure, data);

  const now = () => Number(process.hrtime.bigint() / 1000n); // µs
  const start = now();
  const measureStart = start + args.warmup * 1e6;
  const end = measureStart + args.duration * 1e6;
  let completed = 0;
  let errors = 0;
  const latencies = [];
  let cpuAtStart = null;
  let cpuAtEnd = null;
  const startTimer = setTimeout(() => {
    cpuAtStart = process.cpuUsage();
  }, args.warmup * 1000);
  const endTimer = setTimeout(() => {
    cpuAtEnd = process.cpuUsage(cpuAtStart || undefined);
  }, (args.warmup + args.duration) * 1000);

  async function loop() {
    for (;;) {
      const t0 = now();
      if (t0 >= end) return;
      try {
        await socket.invoke(args.procedure, data);
        if (t0 >= measureStart) {
          completed++;
          latencies.push(now() - t0);
        }
      } catch (err) {
        errors++;
      }
    }
  }
  const loops = [];
  for (let i = 0; i < args.inFlight; i++) loops.push(loop());
  await Promise.all(loops);
  clearTimeout(startTimer);
  clearTimeout(endTimer);
  if (!cpuAtEnd) cpuAtEnd = process.cpuUsage(cpuAtStart || undefined);
  const cpu = (cpuAtEnd.user + cpuAtEnd.system) / 1e6;
  latencies.sort((a, b) => a - b);
  const result = {
    scenario: 'rpc-js-client',
    params: {
      url: args.url,
      mode: args.mode,
      in_flight: args.inFlight,
      duration_s: args.duration,
      warmup_s: args.warmup,
      payload_size: args.payloadSize,
      procedure: args.procedure
    },
    metrics: {
      invokes_per_s: completed / args.duration,
      p50_ms: quantile(latencies, 0.5) / 1000,
      p99_ms: quantile(latencies, 0.99) / 1000,
      client_cpu_s: cpu,
      per_client_cpu_s: cpu > 0 ? completed / cpu : null,
      errors
    }
  };
  process.stdout.write(JSON.stringify(result) + '\n');
  socket.disconnect();
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`bench_client: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
