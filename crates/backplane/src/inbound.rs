//! The checks every broker makes on a message received from the backplane, before it is
//! delivered to the local subscribers.

use serde_json::value::RawValue;
use socketcluster_rs_server::Publication;
use socketcluster_rs_server::broker::Delivery;

use crate::envelope::{self, InstanceId};
use crate::metrics::Counters;

/// A received publication that passed [`accept`]: its channel, its data (validated raw
/// JSON, the bytes as the publisher sent them; `None` for a publish without data) and
/// its position on a channel with history.
pub(crate) type Accepted<'a> = (&'a str, Option<Box<RawValue>>, Option<(u64, &'a str)>);

/// Decode and check a message received from the backplane: `None` (counted) for a
/// message that must not be delivered (see [`deliver`], which delivers what passes).
pub(crate) fn accept<'a>(
    payload: &'a [u8],
    own: InstanceId,
    counters: &Counters,
    expected_channel: impl FnOnce(&str) -> bool,
    mismatch: &str,
) -> Option<Accepted<'a>> {
    let env = match envelope::decode(payload) {
        Ok(env) => env,
        Err(e) => {
            counters.invalid_message();
            tracing::debug!(error = %e, "dropping a backplane message that is not an envelope");
            return None;
        }
    };
    if env.instance == own && env.position.is_none() {
        // Our own publication: the local subscribers got it at publish time. (A
        // publication with a position is delivered from the backplane only, own ones
        // included, so that every instance delivers a channel in offset order.)
        counters.echo_skipped();
        return None;
    }
    if !expected_channel(env.channel) {
        counters.invalid_message();
        tracing::debug!(channel = env.channel, "{mismatch}");
        return None;
    }
    match env.raw_data() {
        Ok(data) => Some((env.channel, data, env.position)),
        Err(e) => {
            counters.invalid_message();
            tracing::debug!(error = %e, "dropping a backplane message with invalid data");
            None
        }
    }
}

/// A message arrived from the backplane: check it, then deliver it to the local
/// subscribers through `delivery` (`None` while the broker is not attached to a server:
/// the message is dropped) and count it with [`Counters::received`]. Runs on the
/// connection's reader: does not block (`Delivery::deliver` only enqueues).
///
/// A message that must not be delivered is dropped and counted:
/// * not an envelope, or invalid data: [`Counters::invalid_message`];
/// * this broker's own publication (`own`) echoed back: [`Counters::echo_skipped`] (the
///   local subscribers got it at publish time);
/// * `expected_channel(channel)` is false — the envelope names another channel than the
///   one it arrived on: [`Counters::invalid_message`], logged with `mismatch`.
pub fn deliver(
    payload: &[u8],
    own: InstanceId,
    counters: &Counters,
    delivery: Option<&Delivery>,
    expected_channel: impl FnOnce(&str) -> bool,
    mismatch: &str,
) {
    let Some((channel, data, position)) =
        accept(payload, own, counters, expected_channel, mismatch)
    else {
        return;
    };
    let Some(delivery) = delivery else {
        return;
    };
    counters.received();
    let publication = match position {
        Some((offset, epoch)) => Publication::with_position(channel, data, offset, epoch.into()),
        None => Publication::new(channel, data),
    };
    delivery.deliver(&publication);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn counts_and_drops_what_must_not_be_delivered() {
        let me = InstanceId([1; 16]);
        let other = InstanceId([2; 16]);
        let c = Counters::new("test");
        let any = |_: &str| true;
        assert!(accept(b"garbage", me, &c, any, "x").is_none());
        let echo = envelope::encode(me, "a", Some(&raw("1")));
        assert!(accept(&echo, me, &c, any, "x").is_none());
        let elsewhere = envelope::encode(other, "a", Some(&raw("1")));
        assert!(accept(&elsewhere, me, &c, |ch| ch == "b", "x").is_none());
        let mut bad_json = envelope::encode(other, "a", Some(&raw("1")));
        *bad_json.last_mut().unwrap() = b'{';
        assert!(accept(&bad_json, me, &c, any, "x").is_none());
        let s = c.snapshot();
        assert_eq!(
            (s.invalid_messages, s.echoes_skipped, s.received),
            (3, 1, 0)
        );

        let good = envelope::encode(other, "a", Some(&raw(r#"{ "k" : 1 }"#)));
        let (channel, data, _) = accept(&good, me, &c, |ch| ch == "a", "x").unwrap();
        assert_eq!(channel, "a");
        assert_eq!(data.unwrap().get(), r#"{ "k" : 1 }"#);
        let none = envelope::encode(other, "a", None);
        assert!(accept(&none, me, &c, any, "x").unwrap().1.is_none());
        assert_eq!(c.snapshot().invalid_messages, 3);
        // Our own positioned publication is not an echo to skip.
        let own = envelope::encode_positioned(me, "a", Some(&raw("1")), 7, "E");
        assert_eq!(accept(&own, me, &c, any, "x").unwrap().2, Some((7, "E")));
    }
}
