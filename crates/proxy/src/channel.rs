//! Inbound middleware of the subscribe, publish and transmit hooks.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use socketcluster_rs_server::WireError;
use socketcluster_rs_server::middleware::{Block, InboundAction, InboundKind};

use crate::core::{Inner, answer_data, answer_error, proxy_block};
use crate::subscribe_cache::{Decision, Key, Source};

pub(crate) async fn inbound(
    inner: Arc<Inner>,
    mut action: InboundAction,
) -> Result<InboundAction, Block> {
    match action.kind().clone() {
        InboundKind::Subscribe { channel } => {
            if let Some(hook) = inner
                .subscribe
                .as_ref()
                .filter(|h| h.config.matches(&channel))
            {
                subscribe(&inner, hook, &action, channel).await?;
            }
        }
        InboundKind::PublishIn { channel } => {
            if let Some(hook) = inner
                .publish
                .as_ref()
                .filter(|h| h.config.matches(&channel))
            {
                let mut body = Map::new();
                body.insert("socket".into(), inner.socket_info(action.socket()));
                body.insert("channel".into(), channel.into());
                body.insert("data".into(), action.data::<Value>().unwrap_or(Value::Null));
                let answer = hook
                    .call(body)
                    .await
                    .map_err(|e| Block::Error(proxy_block(&e)))?;
                if let Some(e) = answer_error(&answer) {
                    return Err(Block::Error(e));
                }
                if answer.contains_key("data") {
                    action.set_raw_data(answer_data(&answer));
                }
            }
        }
        InboundKind::Transmit { receiver } => {
            if let Some((hook, batcher)) = inner.transmit.as_ref()
                && hook.config.matches(&receiver)
            {
                let mut ev = Map::new();
                ev.insert("socket".into(), inner.socket_info(action.socket()));
                ev.insert("event".into(), receiver.into());
                ev.insert("data".into(), action.data::<Value>().unwrap_or(Value::Null));
                batcher.push(Value::Object(ev));
            }
        }
        _ => {}
    }
    Ok(action)
}

async fn subscribe(
    inner: &Arc<Inner>,
    hook: &Arc<crate::hook::Hook>,
    action: &InboundAction,
    channel: String,
) -> Result<(), Block> {
    let data = action.data::<Value>().unwrap_or(Value::Null);
    let claims = action.socket().auth_token().map(|c| {
        let mut c = (*c).clone();
        c.shift_remove("iat");
        c.shift_remove("exp");
        Value::Object(c).to_string()
    });
    let key = Key {
        channel: channel.clone(),
        data: data.to_string(),
        claims: Some(claims.unwrap_or_default()),
    };
    let (result, source) = inner
        .cache
        .decide(key, || async {
            let mut body = Map::new();
            body.insert("socket".into(), inner.socket_info(action.socket()));
            body.insert("channel".into(), channel.clone().into());
            body.insert("data".into(), data.clone());
            match hook.call(body).await {
                Err(e) => Decision {
                    result: Err(proxy_block(&e)),
                    ttl: Duration::ZERO,
                    channel_scope: false,
                },
                Ok(answer) => {
                    let ttl = answer
                        .get("ttl")
                        .and_then(Value::as_f64)
                        .filter(|t| t.is_finite() && *t > 0.0)
                        .map_or(Duration::ZERO, |t| Duration::from_secs_f64(t.min(86_400.0)));
                    let result = match answer_error(&answer) {
                        Some(e) => Err(e),
                        None if answer.get("allow") == Some(&Value::Bool(false)) => {
                            Err(WireError::new(
                                "SubscribeDeniedError",
                                format!("Subscription to {channel} was denied"),
                            ))
                        }
                        None => Ok(()),
                    };
                    Decision {
                        result,
                        ttl,
                        channel_scope: answer.get("cacheScope").and_then(Value::as_str)
                            == Some("channel"),
                    }
                }
            }
        })
        .await;
    let outcome = match source {
        Source::Hit => "hit",
        Source::Coalesced => "coalesced",
        Source::Miss => "miss",
    };
    metrics::counter!("socketcluster_proxy_subscribe_cache_total", "outcome" => outcome)
        .increment(1);
    result.map_err(Block::Error)
}
