//! The load generator's floor for the light-rate fan-out: S subscriber sockets and one
//! publisher speaking just enough of the SocketCluster wire format, with no WebSocket
//! library, no client state machine and no per-message allocation on the receive path
//! (one read into a fixed buffer, frames parsed in place, the timestamp read from the
//! bytes). `bench/compare` runs it next to `socketcluster bench fanout --mode light` to
//! show how much of the publish-to-receive latency is the load generator's.
//!
//! ```text
//! target/release/examples/raw_subscribers --port 8000 --subscribers 100 --rate 100 \
//!     --duration 5 --warmup 1 [--server-pid PID]
//! ```
//!
//! Prints one JSON object: `{"metrics": {"light_p50_ms": ..., "light_p99_ms": ...,
//! "light_latency_samples": ..., "light_client_cpu_s": ..., "light_server_cpu_s": ...}}`.
//! Publications are `{"t":<µs>,"p":"xx…"}` like `socketcluster bench fanout`'s; frames
//! to the server are masked with a zero key (valid per RFC 6455, and the payload stays
//! readable in captures).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Flags.
#[derive(Debug, Parser)]
struct Args {
    /// Server port on 127.0.0.1.
    #[arg(long)]
    port: u16,
    /// WebSocket path.
    #[arg(long, default_value = "/socketcluster/")]
    path: String,
    /// Subscriber sockets.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Publications per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds published before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    payload_size: usize,
    /// Server PID, to report its CPU seconds during the measured part.
    #[arg(long)]
    server_pid: Option<u32>,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A masked (zero key) text frame.
fn client_frame(text: &str) -> Vec<u8> {
    let p = text.as_bytes();
    let mut out = Vec::with_capacity(p.len() + 14);
    out.push(0x81);
    match p.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(p);
    out
}

/// Calls `f` with the payload of every complete (unmasked, server-sent) frame at the
/// start of `buf`; returns the bytes consumed.
fn parse_frames(buf: &[u8], mut f: impl FnMut(&[u8])) -> Result<usize, Error> {
    let mut at = 0;
    loop {
        let b = &buf[at..];
        if b.len() < 2 {
            return Ok(at);
        }
        if b[1] & 0x80 != 0 {
            return Err("masked frame from the server".into());
        }
        let (len, head) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (usize::try_from(u64::from_be_bytes(n))?, 10)
            }
            126 | 127 => return Ok(at),
            n => (usize::from(n), 2),
        };
        if b.len() < head + len {
            return Ok(at);
        }
        f(&b[head..head + len]);
        at += head + len;
    }
}

/// The microseconds after `"t":` in a publication.
fn timestamp(p: &[u8]) -> Option<u64> {
    let i = p.windows(4).position(|w| w == b"\"t\":")? + 4;
    let digits = p[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&p[i..i + digits]).ok()?.parse().ok()
}

/// Connects, upgrades, sends `#handshake` and waits for its reply; returns the stream
/// and the bytes read past the reply.
async fn open(args: &Args) -> Result<(TcpStream, Vec<u8>), Error> {
    let mut s = TcpStream::connect(("127.0.0.1", args.port)).await?;
    s.set_nodelay(true)?;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        args.path, args.port
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    let rest = loop {
        if s.read_buf(&mut buf).await? == 0 {
            return Err("closed during the upgrade".into());
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                return Err(format!("upgrade refused: {}", String::from_utf8_lossy(&buf)).into());
            }
            break buf.split_off(i + 4);
        }
    };
    s.write_all(&client_frame(
        r##"{"event":"#handshake","data":{},"cid":1}"##,
    ))
    .await?;
    let rest = wait_reply(&mut s, rest, b"{\"rid\":1").await?;
    Ok((s, rest))
}

/// Reads until a frame starting with `prefix` arrives; returns what follows it.
async fn wait_reply(s: &mut TcpStream, mut buf: Vec<u8>, prefix: &[u8]) -> Result<Vec<u8>, Error> {
    loop {
        let mut found = false;
        let used = parse_frames(&buf, |p| found |= p.starts_with(prefix))?;
        buf.drain(..used);
        if found {
            return Ok(buf);
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Err("closed while waiting for a reply".into());
        }
    }
}

async fn subscriber(
    mut s: TcpStream,
    rest: Vec<u8>,
    epoch: Instant,
    measuring: Arc<AtomicBool>,
    latencies: Arc<Mutex<Vec<u64>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut have = rest.len();
    buf[..have].copy_from_slice(&rest);
    let mut local = Vec::new();
    loop {
        let n = match s.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        have += n;
        let now = epoch.elapsed().as_micros() as u64;
        let m = measuring.load(Ordering::Relaxed);
        let Ok(used) = parse_frames(&buf[..have], |p| {
            if m && let Some(t) = timestamp(p) {
                local.push(now.saturating_sub(t));
            }
        }) else {
            return;
        };
        buf.copy_within(used..have, 0);
        have -= used;
        if have == buf.len() {
            return; // a frame larger than the buffer: not a bench publication
        }
        if !local.is_empty() {
            latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .append(&mut local);
        }
    }
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ
}

async fn run(args: Args) -> Result<(), Error> {
    let channel = format!("bench/raw-subscribers/{}", std::process::id());
    let epoch = Instant::now();
    let measuring = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
    for _ in 0..args.subscribers {
        let (mut s, rest) = open(&args).await?;
        let sub = format!(r##"{{"event":"#subscribe","data":{{"channel":"{channel}"}},"cid":2}}"##);
        s.write_all(&client_frame(&sub)).await?;
        let rest = wait_reply(&mut s, rest, b"{\"rid\":2").await?;
        tokio::spawn(subscriber(
            s,
            rest,
            epoch,
            measuring.clone(),
            latencies.clone(),
        ));
    }
    let (publisher, _) = open(&args).await?;
    let (mut reader, mut writer) = publisher.into_split();
    // Drain whatever the server sends the publisher (pings).
    tokio::spawn(async move {
        let mut b = vec![0u8; 4096];
        while matches!(reader.read(&mut b).await, Ok(n) if n > 0) {}
    });
    let head_len = format!("{{\"t\":{},\"p\":", u64::MAX).len();
    let pad = "x".repeat(args.payload_size.saturating_sub(head_len + 3));
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let start = tokio::time::Instant::now();
    let measure_at = start + Duration::from_secs_f64(args.warmup);
    let end = measure_at + Duration::from_secs_f64(args.duration);
    let pid = args.server_pid.map(|p| p.to_string());
    let mut usage = None;
    let mut k = 0u32;
    while tokio::time::Instant::now() < end {
        if usage.is_none() && tokio::time::Instant::now() >= measure_at {
            measuring.store(true, Ordering::Relaxed);
            usage = Some((cpu_seconds("self"), pid.as_deref().and_then(cpu_seconds)));
        }
        let t = epoch.elapsed().as_micros();
        let data = format!(r#"{{"t":{t},"p":"{pad}"}}"#);
        let msg =
            format!(r##"{{"event":"#publish","data":{{"channel":"{channel}","data":{data}}}}}"##);
        writer.write_all(&client_frame(&msg)).await?;
        k += 1;
        tokio::time::sleep_until(start + period * k).await;
    }
    measuring.store(false, Ordering::Relaxed);
    let after = (cpu_seconds("self"), pid.as_deref().and_then(cpu_seconds));
    // Let the last publications arrive (they are not measured).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut v = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
    if v.is_empty() {
        return Err("no publication received".into());
    }
    v.sort_unstable();
    let q = |x: f64| v[((v.len() - 1) as f64 * x).round() as usize] as f64 / 1000.0;
    let diff = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => serde_json::json!(b - a),
        _ => serde_json::Value::Null,
    };
    let (before_self, before_server) = usage.unwrap_or((None, None));
    let out = serde_json::json!({
        "scenario": "raw-subscribers",
        "metrics": {
            "light_p50_ms": q(0.5),
            "light_p99_ms": q(0.99),
            "light_latency_samples": v.len(),
            "light_client_cpu_s": diff(before_self, after.0),
            "light_server_cpu_s": diff(before_server, after.1),
        }
    });
    println!("{out}");
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raw_subscribers: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raw_subscribers: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
