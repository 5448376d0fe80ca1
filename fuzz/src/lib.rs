//! Checks shared by the fuzz targets and the stable replay test
//! (`crates/server/tests/fuzz_replay.rs` replays the same seeds through the server
//! crate directly).

use socketcluster_rs_server::ws_internals::read_frames;

/// Maximum message size for [`check_ws_frames`]: small, so that the limit is reached.
pub const MAX: usize = 4096;

/// Input layout: byte 0 = how many input bytes arrive with the request head, bytes
/// 1..4 = read sizes (0: unlimited), then the client's bytes.
pub fn check_ws_frames(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let leftover = usize::from(data[0]);
    let chunks: Vec<usize> = data[1..4]
        .iter()
        .map(|&c| if c == 0 { usize::MAX } else { usize::from(c) })
        .collect();
    let input = &data[4..];
    let split = read_frames(input, leftover, &chunks, MAX);
    let whole = read_frames(input, 0, &[], MAX);
    assert_eq!(split, whole, "the result depends on how the bytes arrive");
}
