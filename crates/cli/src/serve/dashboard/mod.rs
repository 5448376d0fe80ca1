//! The operator dashboard (`serve --dashboard`), under `/dashboard/` on the server's
//! port: a login page (password, constant-time comparison, per-IP backoff after failed
//! attempts), an `HttpOnly; SameSite=Strict` session cookie holding a random token, a
//! CSRF token required on every action, live figures over Server-Sent Events
//! ([`sse`]), and actions that call the HTTP API's operator functions.

// As in `http`: a refused request *is* the answer.
#![allow(clippy::result_large_err)]

mod sse;

use std::net::IpAddr;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::{Value, json};

use super::dashboard_auth::{PREFIX, same, session_cookie};
use super::http::{self, Operator, Resp};

const LOGIN_HTML: &str = include_str!("assets/login.html");
const APP_HTML: &str = include_str!("assets/app.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

fn page(status: StatusCode, content_type: &'static str, body: String) -> Resp {
    let mut r = http::full(status, body);
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        "content-security-policy",
        hyper::header::HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    h.insert(
        "x-frame-options",
        hyper::header::HeaderValue::from_static("DENY"),
    );
    r
}

fn login_page(status: StatusCode, message: &str) -> Resp {
    page(
        status,
        "text/html; charset=utf-8",
        LOGIN_HTML.replace("{{message}}", message),
    )
}

fn redirect(to: &'static str, set_cookie: Option<String>) -> Resp {
    let mut r = http::full(StatusCode::SEE_OTHER, String::new());
    r.headers_mut().insert(
        hyper::header::LOCATION,
        hyper::header::HeaderValue::from_static(to),
    );
    if let Some(c) = set_cookie.and_then(|c| hyper::header::HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(hyper::header::SET_COOKIE, c);
    }
    r
}

/// Answer a request under [`PREFIX`].
pub(crate) async fn handle(req: Request<Incoming>, op: &Operator, ip: IpAddr) -> Resp {
    let Some(dash) = &op.dashboard else {
        return http::error(
            StatusCode::NOT_FOUND,
            "the dashboard is disabled (start with --dashboard)",
        );
    };
    let Some(path) = req.uri().path().strip_prefix(PREFIX).map(str::to_owned) else {
        return redirect(PREFIX, None);
    };
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "app.css") => {
            return page(StatusCode::OK, "text/css", APP_CSS.to_owned());
        }
        (&Method::POST, "login") => {
            let form = match http::body_bytes(req, op).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let form = String::from_utf8_lossy(&form).into_owned();
            let password = http::query_pairs(&form)
                .into_iter()
                .find(|(k, _)| k == "password")
                .map(|(_, v)| v)
                .unwrap_or_default();
            return match dash.try_login(ip, &password) {
                Ok(Some(t)) => redirect(PREFIX, Some(session_cookie(&t, op.secure))),
                Ok(None) => login_page(StatusCode::UNAUTHORIZED, "Wrong password."),
                Err(wait) => {
                    let mut r = login_page(
                        StatusCode::TOO_MANY_REQUESTS,
                        &format!(
                            "Too many failed logins: try again in {} s.",
                            wait.as_secs().max(1)
                        ),
                    );
                    if let Ok(v) =
                        hyper::header::HeaderValue::from_str(&wait.as_secs().max(1).to_string())
                    {
                        r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
                    }
                    r
                }
            };
        }
        _ => {}
    }
    let Some(csrf) = dash.session(&req) else {
        return match (&method, path.as_str()) {
            (&Method::GET, "") => login_page(StatusCode::OK, ""),
            _ => http::error(StatusCode::UNAUTHORIZED, "log in to the dashboard first"),
        };
    };
    if method == Method::POST {
        let given = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same(given.as_bytes(), csrf.as_bytes()) {
            return http::error(
                StatusCode::FORBIDDEN,
                "missing or wrong X-CSRF-Token header",
            );
        }
    }
    match (&method, path.as_str()) {
        (&Method::GET, "") => page(
            StatusCode::OK,
            "text/html; charset=utf-8",
            APP_HTML.replace("{{csrf}}", &csrf),
        ),
        (&Method::GET, "app.js") => page(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            APP_JS.to_owned(),
        ),
        (&Method::POST, "logout") => {
            dash.logout(&req);
            redirect(PREFIX, Some(session_cookie("", op.secure)))
        }
        (&Method::GET, "api/stats") => http::stats(op),
        (&Method::GET, "api/instances") => {
            http::json_response(StatusCode::OK, &op.instances.snapshot())
        }
        (&Method::GET, "api/channels") => http::channels(op),
        (&Method::GET, "api/sockets") => sockets(op, req.uri().query().unwrap_or("")),
        (&Method::GET, "api/config") => page(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            dash.config_toml.clone(),
        ),
        (&Method::GET, "events") => sse::stats(op),
        (&Method::GET, "events/channel") => sse::channel(op, req.uri().query().unwrap_or("")).await,
        (&Method::POST, "api/publish") => match http::body_json(req, op).await {
            Ok(v) => http::publish(op, &v).await,
            Err(r) => r,
        },
        (&Method::POST, "api/disconnect") => match http::body_json(req, op).await {
            Ok(v) => http::disconnect(op, &v),
            Err(r) => r,
        },
        (&Method::POST, "api/deauthenticate") => match http::body_json(req, op).await {
            Ok(v) => http::deauthenticate(op, &v).await,
            Err(r) => r,
        },
        _ => http::error(
            StatusCode::NOT_FOUND,
            format!("no such page: {PREFIX}{path}"),
        ),
    }
}

/// Most sockets one search returns.
const MAX_SOCKETS_LISTED: usize = 200;

/// `GET api/sockets?q=...`: sockets whose id contains `q`, or (`q` = `claim=value`)
/// whose token has that claim (compared as JSON, else as a string).
fn sockets(op: &Operator, query: &str) -> Resp {
    let q = http::query_pairs(query)
        .into_iter()
        .find(|(k, _)| k == "q")
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let claim = q.split_once('=').map(|(k, v)| {
        let v = v.trim();
        let json = serde_json::from_str::<Value>(v).ok();
        (k.trim().to_owned(), v.to_owned(), json)
    });
    let all = op.server.clients();
    let total = all.len();
    let list: Vec<Value> = all
        .into_iter()
        .filter(|s| match &claim {
            Some((k, text, json)) => s.auth_token().is_some_and(|t| {
                t.get(k)
                    .is_some_and(|v| Some(v) == json.as_ref() || v.as_str() == Some(text.as_str()))
            }),
            None => q.is_empty() || s.id().contains(q.as_str()),
        })
        .take(MAX_SOCKETS_LISTED)
        .map(|s| {
            json!({
                "id": s.id(),
                "remoteAddr": s.remote_addr().map(|a| a.to_string()),
                "authenticated": s.is_authenticated(),
                "authToken": s.auth_token().map(|t| Value::Object((*t).clone())),
                "subscriptions": s.subscriptions(),
            })
        })
        .collect();
    http::json_response(StatusCode::OK, &json!({"total": total, "sockets": list}))
}
