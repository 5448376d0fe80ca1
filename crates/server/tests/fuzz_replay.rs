//! The bounded, stable-toolchain run of the fuzz targets (`fuzz/`): every committed
//! seed of `ws_frames` and `session`, then a fixed number of deterministic random
//! mutations of them, through the same checks the fuzz targets run. Needs the
//! `ws-internals` feature:
//! `cargo test -p socketcluster-rs-server --features ws-internals --test fuzz_replay`.

use std::path::PathBuf;

use socketcluster_rs_server::ws_internals::check_ws_frames;
use socketcluster_rs_server::ws_internals::session::run_session;

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus_seed")
        .join(target);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    out.sort();
    assert!(out.len() >= 8, "seed corpus of {target} missing");
    out
}

/// xorshift64*: deterministic, so that a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A few byte-level mutations like libFuzzer's: flip, set, insert, delete, splice.
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0, 0x7f, 0x80, 0xff, 126, 127][rng.below(6)];
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = rng.below(v.len() - i) + 1;
                v.drain(i..i + n.min(8));
            }
            _ if !other.is_empty() => {
                let i = rng.below(v.len() + 1);
                let j = rng.below(other.len());
                let n = rng.below(other.len() - j) + 1;
                v.splice(i..i, other[j..j + n].iter().copied());
            }
            _ => {}
        }
    }
    v
}

#[test]
fn ws_frames_seeds_and_mutations() {
    let seeds = seeds("ws_frames");
    for (_, s) in &seeds {
        check_ws_frames(s);
    }
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..100_000 {
        let a = &seeds[rng.below(seeds.len())].1;
        let b = &seeds[rng.below(seeds.len())].1;
        check_ws_frames(&mutate(&mut rng, a, b));
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn session_seeds_and_mutations() {
    let seeds = seeds("session");
    for (name, s) in &seeds {
        let out = run_session(s).received;
        assert!(out.starts_with(b"HTTP/1.1 101"), "{name}: no upgrade");
        // Seeds whose outcome is known: the server really ran the session.
        let expect: &[&[u8]] = match name.as_str() {
            "handshake" => &[b"\"rid\":1"],
            "handshake_token" => &[b"\"isAuthenticated\":true", b"\"rid\":2,\"data\":{\"x\":1}"],
            "batch" => &[b"\"rid\":5,\"data\":[1,2]"],
            // The close code and reason are echoed.
            "close_reason" => &[b"\x88\x05\x0f\xa0bye"],
            // A frame with a reserved bit: close 1002.
            "protocol_error" => &[b"\x88\x02\x03\xea"],
            _ => &[],
        };
        for e in expect {
            assert!(
                contains(&out, e),
                "{name}: {:?} not in {:?}",
                String::from_utf8_lossy(e),
                String::from_utf8_lossy(&out)
            );
        }
    }
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..5_000 {
        let a = &seeds[rng.below(seeds.len())].1;
        let b = &seeds[rng.below(seeds.len())].1;
        run_session(&mutate(&mut rng, a, b));
    }
}
