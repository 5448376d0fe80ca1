//! Fuzz the server's WebSocket framing and message assembly (crates/server/src/ws):
//! client bytes after the upgrade, delivered in reads of fuzzer-chosen sizes and partly
//! as bytes read together with the request head. Whatever the split, the messages, the
//! close and the error must be the same as when everything arrives in one read
//! (`ws_internals::check_ws_frames`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| socketcluster_rs_server::ws_internals::check_ws_frames(data));
