//! The RPC hook: invokes of procedures without a Rust handler are POSTed to the backend.

use std::sync::Arc;

use serde_json::{Map, Value};
use socketcluster_rs_server::{ErrorObject, Request, WireError};

use crate::core::{
    Inner, answer_data, answer_deauthenticate, answer_error, answer_grant, apply_grant, proxy_block,
};

pub(crate) async fn handle(inner: Arc<Inner>, req: Request) {
    let Some(hook) = inner
        .rpc
        .as_ref()
        .filter(|h| h.config.matches(req.procedure()))
    else {
        if inner.config.answer_unhandled_procedures {
            let msg = format!("No handler for procedure {}", req.procedure());
            req.error(ErrorObject::new("UnhandledProcedureError", msg));
        }
        return;
    };
    let mut body = Map::new();
    body.insert("socket".into(), inner.socket_info(req.socket()));
    body.insert("procedure".into(), req.procedure().into());
    body.insert("data".into(), req.data::<Value>().unwrap_or(Value::Null));
    let answer = match hook.call(body).await {
        Ok(a) => a,
        Err(e) => return req.error(proxy_block(&e)),
    };
    let grant = match answer_grant(&answer) {
        Ok(g) => g,
        Err(e) => return req.error(proxy_block(&e)),
    };
    // Token changes first, so the client sees its new auth state before the answer
    // (as with a JS handler that awaits `setAuthToken` and then calls `req.end`).
    if let Some(grant) = grant
        && let Err(e) = apply_grant(req.socket(), grant).await
    {
        return req.error(WireError::Object(e));
    }
    if answer_deauthenticate(&answer) {
        req.socket().deauthenticate().await;
    }
    match answer_error(&answer) {
        Some(e) => req.error(e),
        None => req.respond_raw(answer_data(&answer)),
    }
}
