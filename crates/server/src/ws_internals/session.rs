//! A whole socket session driven from bytes: the real [`Server`] serves an in-memory
//! connection ([`Server::serve_connection`] over a tokio duplex pipe) whose client
//! side sends an upgrade request and then the frames the input describes.

use std::cell::RefCell;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Request, Server, ServerConfig};

/// Separates the client messages of a session input (never valid inside UTF-8 text).
pub const SEPARATOR: u8 = 0xFF;
/// A segment starting with this byte is written as raw bytes (any frames, possibly
/// invalid), the rest as one masked text frame.
pub const RAW: u8 = 0xFE;
/// Replaced, in text segments, by a token the server signed (so that seeds can
/// authenticate).
pub const TOKEN_PLACEHOLDER: &str = "$TOKEN";

/// How long (in paused time) a session may take before it counts as hung: the server
/// must close every connection, at the latest at its handshake or ping timeout (the
/// client never answers pings).
const DEADLINE: Duration = Duration::from_secs(600);

/// What the client side of [`run_session`] received.
#[derive(Debug, Default, Clone)]
pub struct SessionOutcome {
    /// Every byte the server sent (the HTTP response, then frames).
    pub received: Vec<u8>,
}

thread_local! {
    static RUNTIME: RefCell<Option<(tokio::runtime::Runtime, Server, String)>> = const { RefCell::new(None) };
}

/// One masked client frame (mask fixed: the server must not care).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
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
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// The bytes the client sends for `input`: the upgrade request, the segments (split at
/// [`SEPARATOR`]; see [`RAW`] and [`TOKEN_PLACEHOLDER`]).
pub fn client_bytes(input: &[u8], token: &str) -> Vec<u8> {
    let mut out = b"GET /socketcluster/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec();
    for seg in input.split(|b| *b == SEPARATOR) {
        match seg.split_first() {
            Some((&RAW, raw)) => out.extend_from_slice(raw),
            _ => {
                let text = String::from_utf8_lossy(seg).replace(TOKEN_PLACEHOLDER, token);
                out.extend(client_frame(0x1, text.as_bytes()));
            }
        }
    }
    out
}

/// Runs one session (see the module docs) on this thread's runtime and server (made
/// at the first call: default configuration, an `echo` procedure). The runtime's time
/// is paused: once every task waits, it jumps to the next timer (handshake timeout,
/// ping timeout), so that a session ends quickly and the same way every time. Panics
/// if the server never closes the connection.
pub fn run_session(input: &[u8]) -> SessionOutcome {
    RUNTIME.with(|cell| {
        let mut slot = cell.borrow_mut();
        let (rt, server, token) = slot.get_or_insert_with(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .expect("runtime");
            let server = rt.block_on(async {
                let server = Server::new(ServerConfig::default()).expect("server");
                server.procedure("echo", |req: Request| async move {
                    let data: serde_json::Value = req.data().unwrap_or_default();
                    req.respond(&data);
                });
                server
            });
            let token = server
                .sign_token(
                    &serde_json::json!({"user": "fuzz"}),
                    &crate::auth::SignOptions::default(),
                )
                .expect("token");
            (rt, server, token)
        });
        let bytes = client_bytes(input, token);
        rt.block_on(async {
            let (mut client, conn) = tokio::io::duplex(64 * 1024);
            server.serve_connection(conn, None, false);
            let mut received = Vec::new();
            let session = async {
                let (mut rd, mut wr) = tokio::io::split(&mut client);
                let write = async {
                    // The server may close first (an invalid frame): write errors end it.
                    // The write side stays open (EOF would end the socket before it
                    // answers what it read): the session ends when the server closes.
                    let _ = wr.write_all(&bytes).await;
                };
                let read = async {
                    let _ = rd.read_to_end(&mut received).await;
                };
                tokio::join!(write, read);
            };
            if tokio::time::timeout(DEADLINE, session).await.is_err() {
                panic!("the server did not close the session");
            }
            SessionOutcome { received }
        })
    })
}
