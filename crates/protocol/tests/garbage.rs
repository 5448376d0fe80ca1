//! Hostile input on stable: arbitrary strings and bytes never panic the decoder, and the
//! bytes it allocates stay proportional to the input. (The cargo-fuzz target in `fuzz/`
//! explores the same function with coverage guidance.)
//!
//! This test binary installs a counting allocator, so it holds a single `#[test]`.

use std::alloc::System;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use socketcluster_rs_protocol::{ProtocolVersion, Role, codec};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn decode_all_ways(text: &str) {
    for role in [Role::Client, Role::Server] {
        for v in [ProtocolVersion::V1, ProtocolVersion::V2] {
            let _ = codec::decode(text, role, v);
        }
    }
}

/// Allocation allowed for one decode of `len` bytes.
fn budget(len: usize) -> usize {
    16 * len + 8 * 1024
}

fn check(text: &str) -> Result<(), TestCaseError> {
    let region = Region::new(GLOBAL);
    let frame = codec::decode(text, Role::Server, ProtocolVersion::V2);
    let allocated = region.change().bytes_allocated;
    drop(frame);
    prop_assert!(
        allocated <= budget(text.len()),
        "{} bytes allocated for {} input bytes",
        allocated,
        text.len()
    );
    decode_all_ways(text);
    Ok(())
}

/// Strings that look like packets: fragments of real frames glued together.
fn packetish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(",".to_owned()),
        Just(":".to_owned()),
        Just("\"event\"".to_owned()),
        Just("\"#handshake\"".to_owned()),
        Just("\"cid\"".to_owned()),
        Just("\"rid\"".to_owned()),
        Just("\"data\"".to_owned()),
        Just("\"error\"".to_owned()),
        Just("null".to_owned()),
        Just("1e400".to_owned()),
        Just("-0".to_owned()),
        Just("12345678901234567890".to_owned()),
        Just("\"\\ud800\"".to_owned()),
        any::<String>(),
        (0u32..100).prop_map(|n| n.to_string()),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

#[test]
fn garbage_never_panics_and_allocation_is_bounded() {
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        ..Config::default()
    });
    runner
        .run(&any::<String>(), |s| check(&s))
        .expect("arbitrary strings");
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..512), |b| {
            check(&String::from_utf8_lossy(&b))
        })
        .expect("arbitrary bytes");
    runner
        .run(&packetish(), |s| check(&s))
        .expect("packet-like strings");

    // Hand-picked nasty inputs.
    let deep_array = "[".repeat(200_000);
    let deep_packet = format!(
        "{{\"event\":\"x\",\"data\":{}{}}}",
        "{\"a\":".repeat(50_000),
        "}".repeat(50_000)
    );
    let wide_batch = format!("[{}]", vec!["{\"event\":\"e\"}"; 20_000].join(","));
    let long_string = format!("{{\"event\":\"{}\"}}", "x".repeat(1 << 20));
    for text in [&deep_array, &deep_packet, &wide_batch, &long_string] {
        check(text).unwrap();
    }
}
