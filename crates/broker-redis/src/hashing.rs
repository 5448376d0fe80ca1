//! Rendezvous (highest-random-weight) hashing of channel names onto independent Redis
//! nodes.
//!
//! Every instance must be configured with the same set of nodes (the order does not
//! matter): a channel then maps to the same node everywhere, so a publisher and the
//! subscribers of a channel meet on one node. When a node is added or removed only the
//! channels of that node move.
//!
//! The weight of node `n` for channel `c` is `mix64(fnv1a64(key(n) ++ 0xFF ++ c))`, where
//! `key(n)` is the node's `host:port` and `mix64` is the SplitMix64 finalizer. Both are
//! fixed, portable functions (no per-process random seed, no dependency on the standard
//! library's unstable `DefaultHasher`), so instances built with different compilers or
//! on different architectures agree.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a64(state: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(state, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME))
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The weight of `node_key` for `channel`.
pub(crate) fn weight(node_key: &str, channel: &str) -> u64 {
    let h = fnv1a64(FNV_OFFSET, node_key.as_bytes());
    let h = fnv1a64(h, &[0xFF]);
    mix64(fnv1a64(h, channel.as_bytes()))
}

/// Index of the node (by key) that owns `channel`: the highest weight; ties (practically
/// impossible) go to the smallest key so that the choice never depends on list order.
/// Returns 0 for an empty list.
pub(crate) fn pick<S: AsRef<str>>(node_keys: &[S], channel: &str) -> usize {
    let mut best: Option<(u64, &str, usize)> = None;
    for (i, key) in node_keys.iter().enumerate() {
        let key = key.as_ref();
        let w = weight(key, channel);
        let better = match best {
            None => true,
            Some((bw, bk, _)) => w > bw || (w == bw && key < bk),
        };
        if better {
            best = Some((w, key, i));
        }
    }
    best.map_or(0, |(_, _, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_stable_across_builds() {
        // Golden values: changing the function would split a running cluster.
        assert_eq!(fnv1a64(FNV_OFFSET, b""), FNV_OFFSET);
        assert_eq!(fnv1a64(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            weight("127.0.0.1:6379", "news"),
            weight("127.0.0.1:6379", "news")
        );
        assert_ne!(
            weight("127.0.0.1:6379", "news"),
            weight("127.0.0.1:6380", "news")
        );
    }

    #[test]
    fn choice_does_not_depend_on_node_order() {
        let a = ["h1:1", "h2:2", "h3:3", "h4:4"];
        let b = ["h3:3", "h1:1", "h4:4", "h2:2"];
        for i in 0..500 {
            let ch = format!("channel-{i}");
            assert_eq!(a[pick(&a, &ch)], b[pick(&b, &ch)], "{ch}");
        }
    }

    #[test]
    fn spreads_channels_roughly_evenly() {
        let nodes = ["10.0.0.1:6379", "10.0.0.2:6379", "10.0.0.3:6379"];
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            counts[pick(&nodes, &format!("user/{i}"))] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_channels() {
        let all = ["a:1", "b:2", "c:3"];
        let fewer = ["a:1", "c:3"];
        for i in 0..1000 {
            let ch = format!("{i}");
            let before = all[pick(&all, &ch)];
            let after = fewer[pick(&fewer, &ch)];
            if before != "b:2" {
                assert_eq!(before, after, "{ch} moved although its node stayed");
            }
        }
    }

    #[test]
    fn single_and_empty_lists() {
        assert_eq!(pick(&["only:1"], "x"), 0);
        assert_eq!(pick::<&str>(&[], "x"), 0);
    }
}
