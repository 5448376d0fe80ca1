//! Fuzz the server's inbound session logic: the real server serves an in-memory
//! connection receiving an upgrade request and then the input's messages (handshake,
//! auth, subscribe, publish, batches, invalid frames, closes). The server must neither
//! panic nor hang (it must close after the client's close frame).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    socketcluster_rs_server::ws_internals::session::run_session(data);
});
