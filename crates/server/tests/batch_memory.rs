//! Batch amplification (issue: one 8 MiB JSON array of tiny elements cost ~490 MB): a
//! batch over `max_batch_items` closes the socket with 1009, and whatever the input, the
//! server's memory stays within a small multiple of the max payload.
//!
//! Its own test binary with a single test, so that the process's peak RSS (`VmHWM`,
//! which only grows) measures this test alone, independent of timing.

mod common;

use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Peak resident set size of this process, in bytes.
fn peak_rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kb: usize = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmHWM value");
    kb * 1024
}

#[tokio::test]
async fn a_batch_of_millions_of_tiny_elements_is_refused_within_bounded_memory() {
    let max_payload = 8 << 20;
    let server = start(config()).await;
    let mut control = open(&server).await;
    // `[0,0,...,0]`: about 4 million elements, just under the max payload.
    let elements = (max_payload - 16) / 2;
    let mut text = String::with_capacity(elements * 2 + 2);
    text.push('[');
    for i in 0..elements {
        if i > 0 {
            text.push(',');
        }
        text.push('0');
    }
    text.push(']');
    assert!(text.len() < max_payload);
    let text = Utf8Bytes::from(text);
    let baseline = peak_rss();
    for _ in 0..3 {
        let mut bad = open(&server).await;
        futures_util::SinkExt::send(&mut bad.ws, Message::Text(text.clone()))
            .await
            .expect("send");
        assert_eq!(
            bad.closed().await,
            (1009, "Batch exceeds 4096 items".to_owned())
        );
    }
    let grown = peak_rss().saturating_sub(baseline);
    // Client and server copies of one 8 MiB frame at a time; decoded, each element
    // cost more than 100 bytes (about 490 MB per frame).
    assert!(
        grown < 8 * max_payload,
        "peak RSS grew by {} MiB",
        grown >> 20
    );
    assert_eq!(
        control.invoke("echo", json!("fine"), 2).await["data"],
        "fine"
    );
}
