//! The fake's OAuth side: the token endpoints the credential kinds of `google-cloud-auth` call,
//! each checking the request shape Google's endpoints require, and the check of what Compute
//! calls carry in `Authorization`.
//!
//! - service-account key: no token request at all — the library signs a JWT with the key and
//!   sends it as the bearer (Google's self-signed JWT, AIP-4111); the fake checks the RS256
//!   signature against the registered key and the claims (iss = sub = the account, the compute
//!   scope, at most an hour).
//! - authorized user: `POST /token`, refresh-token grant with the file's client id, secret and
//!   refresh token (RFC 6749 §6; JSON or form body).
//! - external account: `POST /sts`, the RFC 8693 token exchange of the subject token read from
//!   the file the credential source names, for the pool's audience.
//! - impersonation: `POST /v1/projects/-/serviceAccounts/<email>:generateAccessToken` with the
//!   source credential's token as bearer and a JSON body naming scope and lifetime (IAM
//!   Credentials API); only the token it hands out is good for Compute.

use std::sync::Mutex;

use base64::Engine;
use serde_json::{json, Value};

use super::fake::State;

/// The token handed out to a direct credential (authorized user, external account).
pub const BEARER: &str = "Bearer fake-access-token-1";
/// A source credential's token when impersonation is expected: not good for Compute.
pub const SOURCE_TOKEN: &str = "fake-source-token";
/// What generateAccessToken hands out.
pub const IMPERSONATED_BEARER: &str = "Bearer fake-impersonated-token";

pub const SCOPE: &str = "https://www.googleapis.com/auth/compute";

/// The credential a test configures the fake to expect.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Self-signed JWTs of this account, verified with this RSA public key (PKCS#1 DER).
    ServiceAccount { email: String, public_der: Vec<u8> },
    AuthorizedUser {
        client_id: String,
        client_secret: String,
        refresh_token: String,
    },
    ExternalAccount {
        audience: String,
        subject_token: String,
    },
    /// `source` gets a source token, which buys a token for `target` (an account email).
    Impersonated { source: Box<Expect>, target: String },
}

/// One request a token endpoint answered, for the tests to look at.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub endpoint: String,
    pub params: Value,
    pub authorization: Option<String>,
}

fn form(body: &[u8]) -> Value {
    let d = |s: &str| {
        urlencoding::decode(&s.replace('+', " "))
            .map(|c| c.into_owned())
            .unwrap_or_default()
    };
    Value::Object(
        String::from_utf8_lossy(body)
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (d(k), Value::String(d(v))))
            .collect(),
    )
}

/// OAuth bodies come form-encoded or (Google accepts both) as JSON.
fn params(content_type: &str, body: &[u8]) -> Value {
    if content_type.starts_with("application/json") {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    } else {
        form(body)
    }
}

fn deny(reason: &str) -> (u16, Value) {
    (
        400,
        json!({"error": "invalid_grant", "error_description": reason}),
    )
}

fn has_scope(v: &Value, scope: &str) -> bool {
    match v {
        Value::String(s) => s.split(' ').any(|x| x == scope),
        Value::Array(a) => a.iter().any(|x| x == scope),
        _ => false,
    }
}

/// The token a grant for `expect` hands out: the source token when it feeds impersonation.
fn token_for(st: &State, direct: &Expect) -> &'static str {
    match &st.expect {
        Some(Expect::Impersonated { source, .. }) if same_kind(source, direct) => SOURCE_TOKEN,
        _ => BEARER.trim_start_matches("Bearer "),
    }
}

fn same_kind(a: &Expect, b: &Expect) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// The direct credential (the impersonation's source, or the expectation itself).
fn direct(st: &State) -> Option<Expect> {
    match &st.expect {
        Some(Expect::Impersonated { source, .. }) => Some((**source).clone()),
        other => other.clone(),
    }
}

/// A token endpoint request: `(status, body)`, or None when `path` is no token endpoint.
pub fn handle(
    state: &Mutex<State>,
    path: &str,
    content_type: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> Option<(u16, Value)> {
    let p = params(content_type, body);
    let mut st = state.lock().unwrap();
    let endpoint = if path == "/token" || path == "/sts" {
        path.to_string()
    } else if path.starts_with("/v1/projects/-/serviceAccounts/")
        && path.ends_with(":generateAccessToken")
    {
        "generateAccessToken".to_string()
    } else {
        return None;
    };
    st.token_requests.push(TokenRequest {
        endpoint: endpoint.clone(),
        params: p.clone(),
        authorization: authorization.map(str::to_string),
    });
    let get = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let d = direct(&st);
    let answer = match (endpoint.as_str(), &d) {
        (
            "/token",
            Some(
                e @ Expect::AuthorizedUser {
                    client_id,
                    client_secret,
                    refresh_token,
                },
            ),
        ) => {
            if get("grant_type") != "refresh_token" {
                return Some(deny("unsupported grant_type"));
            }
            if get("client_id") != *client_id
                || get("client_secret") != *client_secret
                || get("refresh_token") != *refresh_token
            {
                return Some(deny("Bad client credentials or refresh token"));
            }
            // A scope, when sent, must include Compute (impersonation's source may ask for
            // cloud-platform instead).
            if p.get("scope").is_some()
                && !has_scope(&p["scope"], SCOPE)
                && !has_scope(
                    &p["scope"],
                    "https://www.googleapis.com/auth/cloud-platform",
                )
            {
                return Some(deny("scope"));
            }
            json!({"access_token": token_for(&st, e), "expires_in": 3599, "token_type": "Bearer"})
        }
        (
            "/sts",
            Some(
                e @ Expect::ExternalAccount {
                    audience,
                    subject_token,
                },
            ),
        ) => {
            if get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange"
                || get("requested_token_type") != "urn:ietf:params:oauth:token-type:access_token"
            {
                return Some(deny("not an RFC 8693 access-token exchange"));
            }
            if get("audience") != *audience {
                return Some(deny("audience is not the workload identity provider"));
            }
            if get("subject_token") != *subject_token || get("subject_token_type").is_empty() {
                return Some(deny("subject token"));
            }
            json!({"access_token": token_for(&st, e), "expires_in": 3599, "token_type": "Bearer",
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})
        }
        ("generateAccessToken", Some(_)) => {
            let Some(Expect::Impersonated { target, .. }) = st.expect.clone() else {
                return Some(deny("no impersonation expected"));
            };
            if !path.contains(&format!("/serviceAccounts/{target}:")) {
                return Some((
                    404,
                    json!({"error": {"code": 404, "message": "unknown account"}}),
                ));
            }
            if authorization != Some(format!("Bearer {SOURCE_TOKEN}").as_str()) {
                return Some((
                    401,
                    json!({"error": {"code": 401, "message": "source credential missing"}}),
                ));
            }
            if !has_scope(&p["scope"], SCOPE) || p["lifetime"].as_str().is_none() {
                return Some((
                    400,
                    json!({"error": {"code": 400, "message": "scope and lifetime required"}}),
                ));
            }
            json!({"accessToken": IMPERSONATED_BEARER.trim_start_matches("Bearer "),
                "expireTime": "2099-01-01T00:00:00Z"})
        }
        _ => return Some(deny("this fake expects another credential")),
    };
    st.token_grants += 1;
    Some((200, answer))
}

/// Whether a Compute call's `Authorization` is what the expected credential ends in.
pub fn authorized(st: &mut State, authorization: Option<&str>) -> bool {
    let Some(auth) = authorization else {
        return false;
    };
    match &st.expect {
        None => true,
        Some(Expect::Impersonated { .. }) => auth == IMPERSONATED_BEARER,
        Some(Expect::ServiceAccount { email, public_der }) => {
            let ok = auth
                .strip_prefix("Bearer ")
                .is_some_and(|jwt| self_signed_ok(jwt, email, public_der));
            if ok {
                st.self_signed_jwts += 1;
            }
            ok
        }
        Some(_) => auth == BEARER,
    }
}

/// A service account's self-signed JWT: RS256 by the key, iss = sub = the account, the compute
/// scope, issued for at most an hour (plus the clock-skew margin Google's libraries put on
/// both ends, a minute at most each).
fn self_signed_ok(jwt: &str, email: &str, public_der: &[u8]) -> bool {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, sig] = parts.as_slice() else {
        return false;
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (Ok(hb), Ok(cb), Ok(sb)) = (b64.decode(h), b64.decode(c), b64.decode(sig)) else {
        return false;
    };
    let (Ok(header), Ok(claims)) = (
        serde_json::from_slice::<Value>(&hb),
        serde_json::from_slice::<Value>(&cb),
    ) else {
        return false;
    };
    let signed = format!("{h}.{c}");
    let pk = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public_der,
    );
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap_or(0),
        claims["exp"].as_u64().unwrap_or(0),
    );
    header["alg"] == "RS256"
        && pk.verify(signed.as_bytes(), &sb).is_ok()
        && claims["iss"] == email
        && claims["sub"] == email
        && has_scope(&claims["scope"], SCOPE)
        && exp > iat
        && exp - iat <= 3600 + 2 * 60
}
