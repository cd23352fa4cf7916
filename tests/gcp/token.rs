//! The OAuth2 token endpoint of the fake (`/token`): accepts the JWT-bearer grant a service
//! account key makes (RFC 7523), checks the RS256 signature with the key the test registered and
//! the claims Google checks (issuer, audience = this endpoint, scope, lifetime), and hands out
//! one fixed access token.

use std::sync::Mutex;

use base64::Engine;
use serde_json::{json, Value};

use super::fake::State;

pub const BEARER: &str = "Bearer fake-access-token-1";

fn form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let d = |s: &str| {
                urlencoding::decode(&s.replace('+', " "))
                    .map(|c| c.into_owned())
                    .unwrap_or_default()
            };
            (d(k), d(v))
        })
        .collect()
}

fn deny(reason: &str) -> (u16, Value) {
    (
        400,
        json!({"error": "invalid_grant", "error_description": reason}),
    )
}

pub fn grant(state: &Mutex<State>, token_uri: &str, body: &[u8]) -> (u16, Value) {
    let f = form(body);
    let get = |k: &str| f.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    if get("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return deny("unsupported grant_type");
    }
    let Some(jwt) = get("assertion") else {
        return deny("no assertion");
    };
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, sig] = parts.as_slice() else {
        return deny("assertion is not a JWT");
    };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (Ok(hb), Ok(cb), Ok(sb)) = (b64.decode(h), b64.decode(c), b64.decode(sig)) else {
        return deny("JWT is not base64url");
    };
    let (Ok(header), Ok(claims)) = (
        serde_json::from_slice::<Value>(&hb),
        serde_json::from_slice::<Value>(&cb),
    ) else {
        return deny("JWT parts are not JSON");
    };
    if header["alg"] != "RS256" {
        return deny("alg must be RS256");
    }
    let mut st = state.lock().unwrap();
    let Some(key) = st.token_key.clone() else {
        return deny("no service account registered");
    };
    let signed = format!("{h}.{c}");
    let pk =
        ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, key);
    if pk.verify(signed.as_bytes(), &sb).is_err() {
        return deny("Invalid JWT Signature.");
    }
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap_or(0),
        claims["exp"].as_u64().unwrap_or(0),
    );
    if claims["aud"] != token_uri
        || claims["iss"] != "k8sforge-test@k8sforge-test.iam.gserviceaccount.com"
        || !claims["scope"]
            .as_str()
            .unwrap_or("")
            .contains("https://www.googleapis.com/auth/compute")
        || exp <= iat
        || exp - iat > 3600
    {
        return deny(&format!("bad claims {claims}"));
    }
    st.token_grants += 1;
    (
        200,
        json!({"access_token": BEARER.trim_start_matches("Bearer "), "expires_in": 3599, "token_type": "Bearer"}),
    )
}
