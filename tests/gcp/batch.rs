//! `/batch/compute/v1`: the multipart/mixed batch endpoint gcloud sends its list calls through.
//! Each part is an HTTP request (`application/http`); each answer part carries
//! `Content-ID: <response-ID>` for the request's `<ID>`, as Google's batch endpoint does.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::Response;
use serde_json::Value;

fn boundary(content_type: &str) -> Option<String> {
    content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
}

/// Split "headers CRLF CRLF rest" (also accepting bare LF).
fn split_head(s: &str) -> (&str, &str) {
    if let Some(i) = s.find("\r\n\r\n") {
        (&s[..i], &s[i + 4..])
    } else if let Some(i) = s.find("\n\n") {
        (&s[..i], &s[i + 2..])
    } else {
        (s, "")
    }
}

pub fn handle(
    dispatch: impl Fn(&str, &str, &str, &[u8]) -> (u16, Value),
    content_type: &str,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let bad = |msg: &str| {
        Response::builder()
            .status(400)
            .body(Full::new(Bytes::from(msg.to_string())))
            .unwrap()
    };
    let Some(b) = boundary(content_type) else {
        return bad("batch request without multipart boundary");
    };
    let text = String::from_utf8_lossy(body);
    let delim = format!("--{b}");
    let out_b = "batch_k8sforge_fake";
    let mut out = String::new();
    for part in text.split(&delim).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let part = part.trim_start_matches(['\r', '\n']);
        let (outer, inner) = split_head(part);
        let content_id = outer
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-id")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        let (req_head, req_body) = split_head(inner);
        let req_body = req_body.trim_end_matches(['\r', '\n']);
        let line = req_head.lines().next().unwrap_or("");
        let mut it = line.split_whitespace();
        let method = it.next().unwrap_or("");
        let target = it.next().unwrap_or("");
        // Inner targets may be absolute URLs or paths.
        let path_q = match target.find("/compute/v1/") {
            Some(i) => &target[i..],
            None => target,
        };
        let (path, query) = path_q.split_once('?').unwrap_or((path_q, ""));
        let (code, v) = dispatch(method, path, query, req_body.as_bytes());
        let id = content_id.trim_start_matches('<').trim_end_matches('>');
        let reason = if code == 200 { "OK" } else { "Error" };
        let json = v.to_string();
        out.push_str(&format!(
            "--{out_b}\r\nContent-Type: application/http\r\nContent-ID: <response-{id}>\r\n\r\nHTTP/1.1 {code} {reason}\r\nContent-Type: application/json; charset=UTF-8\r\nContent-Length: {}\r\n\r\n{json}\r\n",
            json.len()
        ));
    }
    out.push_str(&format!("--{out_b}--\r\n"));
    Response::builder()
        .status(200)
        .header("content-type", format!("multipart/mixed; boundary={out_b}"))
        .body(Full::new(Bytes::from(out)))
        .unwrap()
}
