use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::memory::Swept;
use super::*;

fn rule(size: usize) -> HistoryRule {
    HistoryRule::new("*").with_size(size)
}

fn raw(n: u64) -> Option<Box<RawValue>> {
    Some(RawValue::from_string(n.to_string()).unwrap())
}

use socketcluster_rs_protocol::RawValue;

fn offsets(ps: &[Arc<Publication>]) -> Vec<u64> {
    ps.iter().filter_map(|p| p.offset()).collect()
}

#[test]
fn offsets_count_up_from_one_and_frames_carry_the_position() {
    let h = MemoryHistory::default();
    let now = Instant::now();
    let mut delivered = Vec::new();
    for n in 0..3 {
        let pos = h.publish("c", raw(n), &rule(10), now, |p| delivered.push(p.clone()));
        assert_eq!(pos.offset, n + 1);
    }
    assert_eq!(offsets(&delivered), [1, 2, 3]);
    let epoch = delivered[0].epoch().unwrap().to_owned();
    assert_eq!(epoch.len(), 8);
    assert_eq!(
        delivered[2].frame(),
        format!(
            r#"{{"event":"{}","data":{{"channel":"c","data":2,"offset":3,"epoch":"{epoch}"}}}}"#,
            "#publish"
        )
    );
    // Another stream, another epoch.
    let other = h.publish("d", None, &rule(10), now, |_| {});
    assert_ne!(other.epoch, epoch);
}

#[test]
fn the_history_keeps_the_newest_size_publications() {
    let h = MemoryHistory::default();
    let now = Instant::now();
    for n in 0..10 {
        h.publish("c", raw(n), &rule(4), now, |_| {});
    }
    let read = h.read("c", &rule(4), Some(0), 100, now);
    assert_eq!(read.position.offset, 10);
    assert_eq!(offsets(&read.publications), [7, 8, 9, 10]);
    let read = h.read("c", &rule(4), Some(8), 1, now);
    assert_eq!(offsets(&read.publications), [9]);
    assert_eq!(h.retained(), 4);
}

#[tokio::test(start_paused = true)]
async fn publications_expire_and_idle_empty_streams_are_forgotten() {
    let h = MemoryHistory::default();
    let r = rule(100).with_ttl(Duration::from_secs(10));
    let t0 = Instant::now();
    h.publish("c", raw(1), &r, t0, |_| {});
    h.publish("c", raw(2), &r, t0 + Duration::from_secs(5), |_| {});
    let swept = h.sweep(t0 + Duration::from_secs(10), |_| false);
    assert_eq!(
        swept,
        Swept {
            expired: 1,
            forgotten: 0
        }
    );
    assert_eq!(h.retained(), 1);
    // Empty from t0+15; unused since t0+5: forgotten at t0+15 unless subscribed.
    assert_eq!(h.sweep(t0 + Duration::from_secs(15), |_| true).forgotten, 0);
    assert_eq!(h.streams(), 1);
    let epoch = h
        .read("c", &r, None, 0, t0 + Duration::from_secs(15))
        .position;
    assert_eq!(epoch.offset, 2, "the position outlives the entries");
    let swept = h.sweep(t0 + Duration::from_secs(25), |_| false);
    assert_eq!(swept.forgotten, 1);
    assert_eq!(h.streams(), 0);
    let fresh = h
        .read("c", &r, None, 0, t0 + Duration::from_secs(26))
        .position;
    assert_eq!(fresh.offset, 0);
    assert_ne!(
        fresh.epoch, epoch.epoch,
        "a forgotten stream starts a new epoch"
    );
}

#[test]
fn recovery_is_exact_or_refused_with_its_reason() {
    let h = MemoryHistory::default();
    let now = Instant::now();
    for n in 0..10 {
        h.publish("c", raw(n), &rule(5), now, |_| {});
    }
    let epoch = h.read("c", &rule(5), None, 0, now).position.epoch;
    let read_from = |o: u64| h.read("c", &rule(5), Some(o), 1000, now);
    let at = |o: u64| StreamPosition::new(epoch.clone(), o);
    let r = read_from(7);
    assert_eq!(offsets(recover(&at(7), &r, 300).unwrap()), [8, 9, 10]);
    let r = read_from(10);
    assert!(recover(&at(10), &r, 300).unwrap().is_empty());
    let r = read_from(3);
    assert_eq!(recover(&at(3), &r, 300).unwrap_err(), NotRecovered::Trimmed);
    let r = read_from(7);
    assert_eq!(recover(&at(7), &r, 2).unwrap_err(), NotRecovered::TooMany);
    assert_eq!(
        recover(&StreamPosition::new("other", 7), &r, 300).unwrap_err(),
        NotRecovered::EpochChanged
    );
    let r = read_from(11);
    assert_eq!(recover(&at(11), &r, 300).unwrap_err(), NotRecovered::Ahead);
}

/// A subscriber in the property test: the states of one (re)subscription.
enum Sub {
    Off,
    Registered {
        requested: Option<StreamPosition>,
        buffer: Vec<Arc<Publication>>,
    },
    Read {
        requested: Option<StreamPosition>,
        buffer: Vec<Arc<Publication>>,
        read: HistoryRead,
    },
    Live,
}

/// What the client application saw, applying the client's rules: a publication at or
/// before its position in the same epoch is a duplicate and dropped; a reply sets the
/// position.
#[derive(Default)]
struct App {
    position: Option<StreamPosition>,
    accepted: Vec<u64>,
    /// A gap (or an epoch change) that a "not recovered" reply announced.
    announced_gaps: usize,
    silent_gaps: usize,
    duplicates_dropped: usize,
}

impl App {
    fn receive(&mut self, p: &Publication) {
        let (o, e) = (p.offset().unwrap(), p.epoch().unwrap());
        if let Some(pos) = &self.position
            && pos.epoch == e
        {
            if o <= pos.offset {
                self.duplicates_dropped += 1;
                return;
            }
            if o != pos.offset + 1 {
                self.silent_gaps += 1;
            }
        }
        self.accepted.push(o);
        self.position = Some(StreamPosition::new(e, o));
    }

    fn reply(&mut self, merged: &Merged) {
        if let Some(Err(_)) = merged.recovery {
            self.announced_gaps += 1;
        }
        self.position = Some(merged.reply_position.clone());
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Publish,
    Disconnect,
    Register,
    Read,
    Complete,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Publish),
        1 => Just(Op::Disconnect),
        1 => Just(Op::Register),
        1 => Just(Op::Read),
        1 => Just(Op::Complete),
    ]
}

/// Run `ops`, then finish the subscription and publish once more.
fn run(ops: &[Op], size: usize, max_recovery: usize) -> (App, u64) {
    let h = MemoryHistory::default();
    let now = Instant::now();
    let r = rule(size);
    let mut sub = Sub::Live;
    let mut app = App::default();
    let mut published = 0u64;
    let publish = |sub: &mut Sub, app: &mut App, published: &mut u64| {
        *published += 1;
        h.publish("c", raw(*published), &r, now, |p| match sub {
            Sub::Registered { buffer, .. } | Sub::Read { buffer, .. } => buffer.push(p.clone()),
            Sub::Live => app.receive(p),
            Sub::Off => {}
        });
    };
    let step = |op: Op, sub: &mut Sub, app: &mut App| {
        *sub = match (op, std::mem::replace(sub, Sub::Off)) {
            (Op::Disconnect, Sub::Live) => Sub::Off,
            (Op::Register, Sub::Off) => Sub::Registered {
                requested: app.position.clone(),
                buffer: Vec::new(),
            },
            (Op::Read, Sub::Registered { requested, buffer }) => {
                let since = requested.as_ref().map(|p| p.offset);
                let read = h.read("c", &r, since, max_recovery + 1, now);
                Sub::Read {
                    requested,
                    buffer,
                    read,
                }
            }
            (
                Op::Complete,
                Sub::Read {
                    requested,
                    buffer,
                    read,
                },
            ) => {
                let merged = merge(requested.as_ref(), &read, buffer, max_recovery);
                for p in &merged.before_reply {
                    app.receive(p);
                }
                app.reply(&merged);
                for p in &merged.after_reply {
                    app.receive(p);
                }
                Sub::Live
            }
            (_, s) => s,
        };
    };
    // The first subscription, with nothing to recover.
    step(Op::Disconnect, &mut sub, &mut app);
    for op in [Op::Register, Op::Read, Op::Complete] {
        step(op, &mut sub, &mut app);
    }
    for &op in ops {
        match op {
            Op::Publish => publish(&mut sub, &mut app, &mut published),
            other => step(other, &mut sub, &mut app),
        }
    }
    for op in [Op::Register, Op::Read, Op::Complete] {
        step(op, &mut sub, &mut app);
    }
    publish(&mut sub, &mut app, &mut published);
    (app, published)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// With enough history, every publication reaches the application exactly once and
    /// in order, whatever the interleaving of publications with disconnects and the
    /// three steps of each resubscription (register, read the history, complete).
    #[test]
    fn with_enough_history_every_publication_arrives_exactly_once_in_order(
        ops in prop::collection::vec(op(), 0..80),
    ) {
        let (app, published) = run(&ops, 1000, 1000);
        let expected: Vec<u64> = (1..=published).collect();
        prop_assert_eq!(&app.accepted, &expected);
        prop_assert_eq!(app.silent_gaps, 0);
        prop_assert_eq!(app.announced_gaps, 0);
    }

    /// With a small history or recovery limit, publications may be lost, but never
    /// silently: every gap was announced by a "not recovered" reply, and nothing arrives
    /// twice or out of order.
    #[test]
    fn with_little_history_a_loss_is_always_announced(
        ops in prop::collection::vec(op(), 0..80),
        size in 1usize..6,
        max_recovery in 0usize..6,
    ) {
        let (app, _) = run(&ops, size, max_recovery);
        prop_assert_eq!(app.silent_gaps, 0);
        prop_assert!(app.accepted.windows(2).all(|w| w[0] < w[1]), "{:?}", app.accepted);
    }
}
