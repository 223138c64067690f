//! Who may use the admin port: a web page the operator happens to visit must not drive it.
//!
//! Two attacks matter for a port on the operator's own machine. A cross-site request (a form or a
//! `fetch` on another site posting to `127.0.0.1:8080`) is stopped because every POST needs either
//! the bearer token or a custom request header — neither can be sent cross-origin without a CORS
//! preflight, which this port never grants — and a cross-origin `Origin` is refused outright. DNS
//! rebinding (a hostile name that resolves to 127.0.0.1) is stopped by the `Host` check: while the
//! port listens on a loopback address, every request must name a loopback host.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::text;
use super::Handle;

/// The request header a client without a token sends on every POST (any non-empty value).
pub const REQUEST_HEADER: &str = "x-actord-request";

/// Refuses requests that could come from a hostile web page; see the module comment.
pub async fn guard(State(h): State<Handle>, request: Request, next: Next) -> Response {
    let config = h.config();
    let listen = config.admin.listen;
    let token = config.admin.token.as_ref().map(|t| t.expose());
    match check(
        request.method(),
        request.headers(),
        listen.ip().is_loopback(),
        token,
    ) {
        Ok(()) => next.run(request).await,
        Err((status, reason)) => text(status, format!("{reason}\n")),
    }
}

type Refusal = (StatusCode, &'static str);

fn check(
    method: &Method,
    headers: &HeaderMap,
    loopback_bind: bool,
    token: Option<&str>,
) -> Result<(), Refusal> {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if loopback_bind && !is_loopback_host(host) {
        return Err((
            StatusCode::FORBIDDEN,
            "the admin port answers only requests naming a loopback host (localhost, 127.0.0.1, [::1])",
        ));
    }
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| {
                o.strip_prefix("http://")
                    .or_else(|| o.strip_prefix("https://"))
            })
            .is_some_and(|authority| authority.eq_ignore_ascii_case(host));
        if !same {
            return Err((StatusCode::FORBIDDEN, "cross-origin requests are refused"));
        }
    }
    match token {
        Some(token) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer)
                .unwrap_or("");
            if tokens_match(given, token) {
                Ok(())
            } else {
                Err((StatusCode::UNAUTHORIZED, "missing or wrong bearer token"))
            }
        }
        None => {
            let present = headers
                .get(REQUEST_HEADER)
                .is_some_and(|v| !v.as_bytes().is_empty());
            if present {
                Ok(())
            } else {
                Err((
                    StatusCode::FORBIDDEN,
                    "POST requests need the header X-Actord-Request (or a bearer token when one is configured)",
                ))
            }
        }
    }
}

/// The credentials of `Authorization: Bearer <token>`, the scheme matched case-insensitively.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim().split_once(char::is_whitespace)?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start())
}

/// Compares fixed-size digests, so neither the contents nor the length of the token leak
/// through timing.
fn tokens_match(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// `localhost`, `127.0.0.0/8` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inner, port)) if port.is_empty() || port.starts_with(':') => inner,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return false,
            None => host,
        }
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn loopback_hosts_with_and_without_ports() {
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1:8080",
            "127.0.0.1:80x",
            "[::2]:8080",
            "[::1]x",
            "::1",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn gets_need_only_a_loopback_host() {
        let get = Method::GET;
        assert!(check(&get, &headers(&[("host", "localhost:8080")]), true, None).is_ok());
        assert_eq!(
            check(
                &get,
                &headers(&[("host", "rebound.example:8080")]),
                true,
                None
            )
            .unwrap_err()
            .0,
            StatusCode::FORBIDDEN
        );
        // A non-loopback bind cannot know its names: the token protects it instead.
        assert!(check(&get, &headers(&[("host", "actord.internal")]), false, None).is_ok());
    }

    #[test]
    fn posts_without_a_token_need_the_custom_header_and_no_foreign_origin() {
        let post = Method::POST;
        let host = ("host", "127.0.0.1:8080");
        assert_eq!(
            check(&post, &headers(&[host]), true, None).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        assert!(check(&post, &headers(&[host, (REQUEST_HEADER, "1")]), true, None).is_ok());
        let foreign = ("origin", "https://evil.example");
        assert_eq!(
            check(
                &post,
                &headers(&[host, (REQUEST_HEADER, "1"), foreign]),
                true,
                None
            )
            .unwrap_err()
            .0,
            StatusCode::FORBIDDEN
        );
        let null = ("origin", "null");
        assert!(check(
            &post,
            &headers(&[host, (REQUEST_HEADER, "1"), null]),
            true,
            None
        )
        .is_err());
        let same = ("origin", "http://127.0.0.1:8080");
        assert!(check(
            &post,
            &headers(&[host, (REQUEST_HEADER, "1"), same]),
            true,
            None
        )
        .is_ok());
    }

    #[test]
    fn posts_with_a_token_need_the_bearer_in_any_case() {
        let post = Method::POST;
        let host = ("host", "localhost:8080");
        for auth in ["Bearer s3cret", "bearer s3cret", "BEARER   s3cret"] {
            assert!(
                check(
                    &post,
                    &headers(&[host, ("authorization", auth)]),
                    true,
                    Some("s3cret")
                )
                .is_ok(),
                "{auth}"
            );
        }
        for auth in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Basic s3cret",
            "s3cret",
            "",
        ] {
            assert_eq!(
                check(
                    &post,
                    &headers(&[host, ("authorization", auth)]),
                    true,
                    Some("s3cret")
                )
                .unwrap_err()
                .0,
                StatusCode::UNAUTHORIZED,
                "{auth}"
            );
        }
        // The custom header alone is not enough once a token is configured.
        assert!(check(
            &post,
            &headers(&[host, (REQUEST_HEADER, "1")]),
            true,
            Some("s3cret")
        )
        .is_err());
    }
}
