//! Test peer for the AWS provider: a real moto server (PyPI `moto[server]`) on 127.0.0.1, shared
//! by every test of the process, behind a small proxy of our own that counts calls per action,
//! injects errors on demand and answers the Service Quotas calls moto lacks. Each test uses its
//! own moto account (header `x-moto-account-id`, added by an SDK interceptor), so tests running
//! in parallel never see each other's resources.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ec2::error::BoxError;
use k8sforge::provider::aws::{config, Clients, StaticSettings};

pub const REGION: &str = "us-east-1";

/// Python side: start moto's threaded server on a free loopback port, print the port, and exit
/// when the test process goes away (stdin closes).
const LAUNCHER: &str = r#"
import os, socket, sys, threading
from moto.server import ThreadedMotoServer
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
server.start()
print(port, flush=True)
sys.stdin.read()
os._exit(0)
"#;

struct Moto {
    _child: Mutex<Child>,
    port: u16,
}

fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(|| {
        let python = std::env::var("K8SFORGE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(&python)
            .arg("-c")
            .arg(LAUNCHER)
            // moto's strict checks: unknown instance types, AMIs and key pairs are errors.
            .env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
            .env("MOTO_ENABLE_AMI_VALIDATION", "true")
            .env("MOTO_ENABLE_KEYPAIR_VALIDATION", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("AWS_ENDPOINT_URL")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {python} for the moto server ({e}); install it with `pip install 'moto[server]'`")
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read moto port");
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            panic!(
                "moto server did not start (printed {line:?}); install it with `pip install 'moto[server]'`"
            )
        });
        Moto {
            _child: Mutex::new(child),
            port,
        }
    })
}

/// When an injected fault strikes relative to moto seeing the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultMode {
    /// The error is the answer and moto never sees the request (throttling, capacity).
    Instead,
    /// moto executes the request, then the client gets the error instead of moto's answer: a
    /// 5xx from a load balancer after the backend acted.
    AfterForwarding,
    /// moto executes the request, then the connection is closed without any answer: a reset or a
    /// client timeout after the server acted. `code` and `status` are unused.
    DropAfterForwarding,
    /// moto launches only this many of a RunInstances' instances, then the client gets the
    /// error: what moto itself does when two launches race in one subnet (see `forward`).
    PartialAfterForwarding(u32),
}

/// An error the proxy answers instead of (or after) forwarding.
#[derive(Debug, Clone)]
pub struct Fault {
    pub account: String,
    pub action: String,
    /// Only requests whose body contains this (e.g. an instance type).
    pub body_contains: Option<String>,
    pub code: String,
    pub status: u16,
    pub times: u32,
    pub mode: FaultMode,
}

#[derive(Default)]
struct ProxyState {
    /// Every call in order: (account, action).
    log: Vec<(String, String)>,
    /// Bodies of the RunInstances requests, in order: (account, form body).
    launches: Vec<(String, String)>,
    /// Placement groups per account: (name, id, strategy, tags).
    placement_groups: BTreeMap<String, Vec<PlacementGroup>>,
    faults: Vec<Fault>,
    /// Console text per (account, instance id), answered for GetConsoleOutput instead of moto's.
    consoles: BTreeMap<(String, String), String>,
    quotas: BTreeMap<(String, String), f64>,
    /// TerminateInstances held back per account: (request bytes, describes left before applying).
    deferred: BTreeMap<String, (Vec<u8>, u32)>,
    defer_terminate: BTreeMap<String, u32>,
    /// One RunInstances at a time per account (see `forward`).
    launch_locks: BTreeMap<String, Arc<Mutex<()>>>,
    /// Requests being answered now, and the most there ever were, per (account, action).
    in_flight: BTreeMap<(String, String), (u32, u32)>,
    /// Interface types of instances launched with EFA interfaces, by instance id (see
    /// `efa_interfaces`).
    efa_interfaces: BTreeMap<String, Vec<String>>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<ProxyState>>,
}

pub fn proxy() -> &'static Proxy {
    static PROXY: OnceLock<Proxy> = OnceLock::new();
    PROXY.get_or_init(|| {
        let upstream: SocketAddr = ([127, 0, 0, 1], moto().port).into();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let state: Arc<Mutex<ProxyState>> = Arc::default();
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let st = st.clone();
                std::thread::spawn(move || serve(conn, upstream, st));
            }
        });
        Proxy { addr, state }
    })
}

impl Proxy {
    /// Answer GetConsoleOutput for `instance_id` with `text` (moto's is one fixed text without
    /// cloud-init's host-key block; real instances print theirs there).
    pub fn set_console(&self, account: &str, instance_id: &str, text: &str) {
        self.state.lock().unwrap().consoles.insert(
            (account.to_string(), instance_id.to_string()),
            text.to_string(),
        );
    }

    pub fn inject(&self, f: Fault) {
        self.state.lock().unwrap().faults.push(f);
    }

    pub fn set_quota(&self, account: &str, code: &str, value: f64) {
        self.state
            .lock()
            .unwrap()
            .quotas
            .insert((account.into(), code.into()), value);
    }

    /// Hold the account's next TerminateInstances until this many DescribeInstances came in:
    /// the instances stay alive meanwhile, as real ones do while shutting down.
    pub fn defer_terminate(&self, account: &str, describes: u32) {
        self.state
            .lock()
            .unwrap()
            .defer_terminate
            .insert(account.into(), describes);
    }

    /// Calls of one account in order.
    pub fn log(&self, account: &str) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|(a, _)| a == account)
            .map(|(_, x)| x.clone())
            .collect()
    }

    /// The decoded form parameters of every RunInstances the account sent, in order.
    pub fn launches(&self, account: &str) -> Vec<BTreeMap<String, String>> {
        self.state
            .lock()
            .unwrap()
            .launches
            .iter()
            .filter(|(a, _)| a == account)
            .map(|(_, b)| {
                b.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (url_decode(k), url_decode(v)))
                    .collect()
            })
            .collect()
    }

    pub fn counts(&self, account: &str) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for a in self.log(account) {
            *m.entry(a).or_insert(0) += 1;
        }
        m
    }

    /// The most requests of one action the account ever had in flight at once.
    pub fn max_in_flight(&self, account: &str, action: &str) -> u32 {
        self.state
            .lock()
            .unwrap()
            .in_flight
            .get(&(account.to_string(), action.to_string()))
            .map_or(0, |(_, max)| *max)
    }

    /// The endpoint URL for a client that is not built by these tests (the k8sforge binary).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn reset(&self, account: &str) {
        let mut s = self.state.lock().unwrap();
        s.log.retain(|(a, _)| a != account);
        s.in_flight.retain(|(a, _), _| a != account);
    }
}

struct Request {
    head: Vec<(String, String)>,
    start: String,
    body: Vec<u8>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut start = String::new();
    if r.read_line(&mut start).ok()? == 0 {
        return None;
    }
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':')?;
        head.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = head
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    assert!(
        !head
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")),
        "proxy: chunked request bodies are not expected from the SDK"
    );
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        head,
        start: start.trim_end().to_string(),
        body,
    })
}

/// `Authorization: AWS4-HMAC-SHA256 Credential=<key id>/<date>/…`: the key id when it is a
/// moto account number.
fn account_from_access_key(req: &Request) -> Option<String> {
    let auth = header(req, "authorization")?;
    let id = auth.split("Credential=").nth(1)?.split('/').next()?;
    (id.len() == 12 && id.bytes().all(|b| b.is_ascii_digit())).then(|| id.to_string())
}

/// moto picks the account from this header; add it when the client did not.
fn with_account_header(mut req: Request, account: &str) -> Request {
    if !req.head.iter().any(|(k, _)| k == "x-moto-account-id") {
        req.head
            .push(("x-moto-account-id".to_string(), account.to_string()));
    }
    req
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.head
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

fn respond(
    w: &mut TcpStream,
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = w.write_all(head.as_bytes());
    let _ = w.write_all(body);
    let _ = w.flush();
}

fn serve(conn: TcpStream, upstream: SocketAddr, st: Arc<Mutex<ProxyState>>) {
    let mut w = conn.try_clone().expect("clone stream");
    let mut r = BufReader::new(conn);
    while let Some(req) = read_request(&mut r) {
        // The account: the SDK interceptor's header (library tests), else — for the k8sforge
        // binary, which knows nothing of moto — a 12-digit access key id is the account.
        let account = header(&req, "x-moto-account-id")
            .map(str::to_string)
            .or_else(|| account_from_access_key(&req))
            .unwrap_or_else(|| "123456789012".to_string());
        let req = with_account_header(req, &account);
        let body = String::from_utf8_lossy(&req.body).to_string();
        let target = header(&req, "x-amz-target").map(str::to_string);
        let action = match &target {
            Some(t) => t.rsplit('.').next().unwrap_or_default().to_string(),
            None => form_value(&body, "Action").unwrap_or_else(|| "?".into()),
        };
        let elb = body.contains("Version=2015-12-01");

        let mut fault = None;
        let mut deferred_now = None;
        let mut hold_terminate = false;
        let _flight = InFlight::enter(&st, &account, &action);
        {
            let mut s = st.lock().unwrap();
            s.log.push((account.clone(), action.clone()));
            if action == "RunInstances" {
                s.launches.push((account.clone(), body.clone()));
            }
            if let Some(f) = s.faults.iter_mut().find(|f| {
                f.account == account
                    && f.action == action
                    && f.times > 0
                    && f.body_contains
                        .as_ref()
                        .is_none_or(|b| body.contains(b.as_str()))
            }) {
                f.times -= 1;
                fault = Some(f.clone());
            }
            if fault.is_none() && action == "TerminateInstances" {
                if let Some(n) = s.defer_terminate.remove(&account) {
                    s.deferred.insert(account.clone(), (raw(&req), n));
                    hold_terminate = true;
                }
            }
            if fault.is_none() && action == "DescribeInstances" {
                if let Some((bytes, left)) = s.deferred.get_mut(&account) {
                    if *left == 0 {
                        deferred_now = Some(bytes.clone());
                    } else {
                        *left -= 1;
                    }
                }
                if deferred_now.is_some() {
                    s.deferred.remove(&account);
                    s.log
                        .push((account.clone(), "(termination applied)".into()));
                }
            }
        }

        if let Some(f) = fault {
            if f.mode != FaultMode::Instead {
                let sent = match f.mode {
                    FaultMode::PartialAfterForwarding(n) => with_count(&req, n),
                    _ => raw(&req),
                };
                let _ = forward(upstream, &st, &account, &action, &sent);
                if f.mode == FaultMode::DropAfterForwarding {
                    st.lock()
                        .unwrap()
                        .log
                        .push((account.clone(), format!("({action} answer dropped)")));
                    // Dropping both halves closes the client's connection with no answer.
                    return;
                }
            }
            let xml = if elb {
                format!("<ErrorResponse><Error><Type>Sender</Type><Code>{}</Code><Message>injected by the test proxy</Message></Error><RequestId>0</RequestId></ErrorResponse>", f.code)
            } else {
                format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{}</Code><Message>injected by the test proxy</Message></Error></Errors><RequestID>0</RequestID></Response>", f.code)
            };
            respond(&mut w, f.status, "text/xml", &[], xml.as_bytes());
            continue;
        }
        if action == "GetConsoleOutput" {
            let id = form_value(&body, "InstanceId").unwrap_or_default();
            let text = st
                .lock()
                .unwrap()
                .consoles
                .get(&(account.clone(), id.clone()))
                .cloned();
            if let Some(text) = text {
                use base64::Engine;
                let b64 = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
                let xml = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><GetConsoleOutputResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>0</requestId><instanceId>{id}</instanceId><timestamp>2026-01-01T00:00:00.000Z</timestamp><output>{b64}</output></GetConsoleOutputResponse>"
                );
                respond(&mut w, 200, "text/xml", &[], xml.as_bytes());
                continue;
            }
        }
        if matches!(
            action.as_str(),
            "CreatePlacementGroup" | "DescribePlacementGroups" | "DeletePlacementGroup"
        ) {
            placement_groups(&mut w, &st, &account, &action, &body);
            continue;
        }
        if let Some(t) = &target {
            if t.starts_with("ServiceQuotasV20190624.") {
                service_quotas(&mut w, &st, &account, &action, &body);
                continue;
            }
        }
        if hold_terminate {
            let xml = "<TerminateInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>0</requestId><instancesSet/></TerminateInstancesResponse>";
            respond(&mut w, 200, "text/xml", &[], xml.as_bytes());
            continue;
        }
        if let Some(bytes) = deferred_now {
            let _ = forward_raw(upstream, &bytes);
        }
        match forward(upstream, &st, &account, &action, &raw(&req)) {
            Some((status, ctype, mut body)) => {
                if status == 200 && action == "RunInstances" {
                    record_efa_launch(&st, &req, &body);
                }
                if status == 200 && action == "DescribeInstances" {
                    body = with_efa_interfaces(&st, body);
                }
                if status >= 500 {
                    // moto itself failed: visible in the log, so a test can tell it apart.
                    st.lock()
                        .unwrap()
                        .log
                        .push((account.clone(), format!("(moto {status} on {action})")));
                }
                respond(&mut w, status, &ctype, &[], &body)
            }
            None => respond(
                &mut w,
                502,
                "text/plain",
                &[],
                b"proxy: moto did not answer",
            ),
        }
    }
}

/// moto 5.2.1 keeps an instance's interfaces by device index only, so a p5 launched with its 32
/// EFA-only interfaces (device 0 on cards 1-31) comes back with 2 interfaces and no
/// `interfaceType`. EC2 reports every interface with its type; the proxy records the launch's
/// interface types per instance and puts them back into DescribeInstances answers (one
/// `<item>` per requested interface, copied from the instance's first interface).
fn record_efa_launch(st: &Arc<Mutex<ProxyState>>, req: &Request, answer: &[u8]) {
    let body = String::from_utf8_lossy(&req.body);
    let mut types: BTreeMap<u32, String> = BTreeMap::new();
    for kv in body.split('&') {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        if let Some(n) = k
            .strip_prefix("NetworkInterface.")
            .and_then(|r| r.strip_suffix(".InterfaceType"))
            .and_then(|n| n.parse().ok())
        {
            types.insert(n, v.to_string());
        }
    }
    if !types.values().any(|t| t.starts_with("efa")) {
        return;
    }
    let xml = String::from_utf8_lossy(answer);
    let mut s = st.lock().unwrap();
    for id in xml.split("<instanceId>").skip(1) {
        if let Some(id) = id.split('<').next() {
            s.efa_interfaces
                .insert(id.to_string(), types.values().cloned().collect());
        }
    }
}

/// The end of the `<item>` that starts at `from` (nested items counted).
fn item_end(xml: &str, from: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = from;
    loop {
        let open = xml[i..].find("<item>").map(|o| i + o);
        let close = xml[i..].find("</item>").map(|c| i + c)?;
        match open {
            Some(o) if o < close => {
                depth += 1;
                i = o + "<item>".len();
            }
            _ => {
                depth = depth.checked_sub(1)?;
                i = close + "</item>".len();
                if depth == 0 {
                    return Some(i);
                }
            }
        }
    }
}

fn with_efa_interfaces(st: &Arc<Mutex<ProxyState>>, body: Vec<u8>) -> Vec<u8> {
    let recorded = st.lock().unwrap().efa_interfaces.clone();
    if recorded.is_empty() {
        return body;
    }
    let xml = String::from_utf8_lossy(&body).to_string();
    let (open_set, close_set) = ("<instancesSet>", "</instancesSet>");
    let mut out = String::with_capacity(xml.len());
    let mut cursor = 0;
    // Each instance is one top-level `<item>` of an `<instancesSet>` (moto writes its
    // `instanceId` after its interfaces, so the item is the unit, not the id).
    while let Some(set) = xml[cursor..]
        .find(open_set)
        .map(|o| cursor + o + open_set.len())
    {
        let Some(set_end) = xml[set..].find(close_set).map(|o| set + o) else {
            break;
        };
        out.push_str(&xml[cursor..set]);
        let mut at = set;
        while let Some(start) = xml[at..].find("<item>").map(|o| at + o) {
            if start > set_end {
                break;
            }
            let Some(end) = item_end(&xml, start) else {
                break;
            };
            out.push_str(&xml[at..start]);
            out.push_str(&instance_with_efa(&xml[start..end], &recorded));
            at = end;
        }
        cursor = at;
    }
    out.push_str(&xml[cursor..]);
    out.into_bytes()
}

/// One instance `<item>`, its interface set replaced when the instance was launched with EFA.
fn instance_with_efa(item: &str, recorded: &BTreeMap<String, Vec<String>>) -> String {
    let id_tag = "<instanceId>";
    let Some(types) = item
        .rfind(id_tag)
        .and_then(|i| item[i + id_tag.len()..].split('<').next())
        .and_then(|id| recorded.get(id))
    else {
        return item.to_string();
    };
    let set_tag = "<networkInterfaceSet>";
    let Some(set) = item.find(set_tag).map(|o| o + set_tag.len()) else {
        return item.to_string();
    };
    let Some(first) = item[set..]
        .find("<item>")
        .map(|o| set + o)
        .and_then(|s| item_end(item, s).map(|e| (s, e)))
    else {
        return item.to_string();
    };
    let Some(set_end) = item[set..].find("</networkInterfaceSet>").map(|o| set + o) else {
        return item.to_string();
    };
    // moto writes `<interfaceType>interface</interfaceType>` on every interface.
    let mut template = item[first.0..first.1].to_string();
    while let Some(a) = template.find("<interfaceType>") {
        match template[a..].find("</interfaceType>") {
            Some(b) => template.replace_range(a..a + b + "</interfaceType>".len(), ""),
            None => break,
        }
    }
    let items: String = types
        .iter()
        .map(|t| {
            template.replacen(
                "<item>",
                &format!("<item><interfaceType>{t}</interfaceType>"),
                1,
            )
        })
        .collect();
    format!("{}{items}{}", &item[..set], &item[set_end..])
}

/// Counts a request as in flight until its answer is written (or dropped).
struct InFlight {
    st: Arc<Mutex<ProxyState>>,
    key: (String, String),
}

impl InFlight {
    fn enter(st: &Arc<Mutex<ProxyState>>, account: &str, action: &str) -> InFlight {
        let key = (account.to_string(), action.to_string());
        let mut s = st.lock().unwrap();
        let e = s.in_flight.entry(key.clone()).or_default();
        e.0 += 1;
        e.1 = e.1.max(e.0);
        InFlight {
            st: st.clone(),
            key,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut s) = self.st.lock() {
            if let Some(e) = s.in_flight.get_mut(&self.key) {
                e.0 = e.0.saturating_sub(1);
            }
        }
    }
}

fn raw(req: &Request) -> Vec<u8> {
    raw_with_body(req, &req.body)
}

fn raw_with_body(req: &Request, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{}\r\n", req.start);
    for (k, v) in &req.head {
        if k == "connection" || k == "content-length" {
            continue;
        }
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// The request with MinCount and MaxCount set to `n`: moto launches part of the batch.
/// (The signature no longer matches the body; moto does not check signatures.)
fn with_count(req: &Request, n: u32) -> Vec<u8> {
    let body = String::from_utf8_lossy(&req.body);
    let body: Vec<String> = body
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k @ ("MinCount" | "MaxCount"), _)) => format!("{k}={n}"),
            _ => kv.to_string(),
        })
        .collect();
    raw_with_body(req, body.join("&").as_bytes())
}

/// Forward one request. moto's subnet address allocator is not thread-safe: two RunInstances
/// racing in one subnet fail one of them with a 500 ("generator already executing") after part
/// of its instances were created, which EC2 never does. Launches are therefore passed to moto
/// one at a time per account; the provider still sends them in parallel, and its handling of a
/// partly executed launch is tested with `FaultMode::PartialAfterForwarding`.
fn forward(
    upstream: SocketAddr,
    st: &Arc<Mutex<ProxyState>>,
    account: &str,
    action: &str,
    bytes: &[u8],
) -> Option<(u16, String, Vec<u8>)> {
    if action != "RunInstances" {
        return forward_raw(upstream, bytes);
    }
    let lock = st
        .lock()
        .unwrap()
        .launch_locks
        .entry(account.to_string())
        .or_default()
        .clone();
    let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
    forward_raw(upstream, bytes)
}

/// One request to moto on a fresh connection; the whole answer is read to EOF.
fn forward_raw(upstream: SocketAddr, bytes: &[u8]) -> Option<(u16, String, Vec<u8>)> {
    let mut up = TcpStream::connect(upstream).ok()?;
    up.set_read_timeout(Some(Duration::from_secs(300))).ok()?;
    up.write_all(bytes).ok()?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp).ok()?;
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let mut body = resp[split + 4..].to_vec();
    let mut lines = head.lines();
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let mut ctype = "text/xml".to_string();
    let mut chunked = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k == "content-type" {
                ctype = v.trim().to_string();
            }
            if k == "transfer-encoding" && v.contains("chunked") {
                chunked = true;
            }
        }
    }
    if chunked {
        body = dechunk(&body);
    }
    Some((status, ctype, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[pos + 2..pos + 2 + size]);
        b = &b[pos + 2 + size + 2..];
    }
    out
}

/// The two Service Quotas calls the provider makes (awsJson 1.1), answered from the proxy's table.
fn service_quotas(
    w: &mut TcpStream,
    st: &Arc<Mutex<ProxyState>>,
    account: &str,
    action: &str,
    body: &str,
) {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let code = v["QuotaCode"].as_str().unwrap_or_default().to_string();
    let value = st
        .lock()
        .unwrap()
        .quotas
        .get(&(account.to_string(), code.clone()))
        .copied();
    let ok = |value: f64| {
        serde_json::json!({"Quota": {
            "ServiceCode": "ec2", "QuotaCode": code, "QuotaName": "test quota",
            "Value": value, "Unit": "None", "Adjustable": true, "GlobalQuota": false
        }})
        .to_string()
    };
    match (action, value) {
        ("GetServiceQuota", Some(v)) => {
            respond(w, 200, "application/x-amz-json-1.1", &[], ok(v).as_bytes())
        }
        ("GetServiceQuota", None) => {
            let e = serde_json::json!({"__type": "NoSuchResourceException", "message": "no applied quota"});
            respond(
                w,
                400,
                "application/x-amz-json-1.1",
                &[("x-amzn-errortype", "NoSuchResourceException")],
                e.to_string().as_bytes(),
            )
        }
        // Default quota when a test set none: large enough for any test cluster.
        ("GetAWSDefaultServiceQuota", _) => respond(
            w,
            200,
            "application/x-amz-json-1.1",
            &[],
            ok(value.unwrap_or(1_000_000.0)).as_bytes(),
        ),
        _ => respond(
            w,
            400,
            "application/x-amz-json-1.1",
            &[],
            b"{\"__type\":\"UnknownOperationException\"}",
        ),
    }
}

/// Adds the moto account header to every request.
#[derive(Debug, Clone)]
pub struct MotoAccount(pub String);

impl Intercept for MotoAccount {
    fn name(&self) -> &'static str {
        "MotoAccount"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        context
            .request_mut()
            .headers_mut()
            .insert("x-moto-account-id", self.0.clone());
        Ok(())
    }
}

/// Clients for one moto account, through the proxy, with static credentials and a fixed region.
pub fn clients(account: &str) -> Clients {
    let cfg = config::static_config(&StaticSettings {
        region: REGION.into(),
        endpoint_url: format!("http://{}", proxy().addr),
        access_key_id: "test".into(),
        secret_access_key: "test".into(),
    });
    Clients::with_interceptor(&cfg, MotoAccount(account.into()))
}

/// Register a test AMI the way one exists in a real account (volume → snapshot → image), since
/// moto pre-loads only old images. Returns the image id.
pub async fn register_ami(c: &Clients, name: &str) -> String {
    use aws_sdk_ec2::types::{ArchitectureValues, BlockDeviceMapping, EbsBlockDevice};
    let vol = c
        .ec2
        .create_volume()
        .availability_zone(format!("{REGION}a"))
        .size(8)
        .send()
        .await
        .expect("CreateVolume");
    let snap = c
        .ec2
        .create_snapshot()
        .volume_id(vol.volume_id().unwrap())
        .description("k8sforge test image")
        .send()
        .await
        .expect("CreateSnapshot");
    let img = c
        .ec2
        .register_image()
        .name(name)
        .architecture(ArchitectureValues::X8664)
        .root_device_name("/dev/sda1")
        .virtualization_type("hvm")
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name("/dev/sda1")
                .ebs(
                    EbsBlockDevice::builder()
                        .snapshot_id(snap.snapshot_id().unwrap())
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("RegisterImage");
    // The volume was only needed for the snapshot.
    c.ec2
        .delete_volume()
        .volume_id(vol.volume_id().unwrap())
        .send()
        .await
        .expect("DeleteVolume");
    img.image_id().unwrap().to_string()
}

/// A real Ed25519 public key in OpenSSH format (moto parses imported key material).
pub fn ssh_public_key() -> String {
    use base64::Engine;
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
    let raw = kp.public_key_raw();
    let mut blob = Vec::new();
    for part in [b"ssh-ed25519".as_slice(), raw] {
        blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
        blob.extend_from_slice(part);
    }
    format!(
        "ssh-ed25519 {} k8sforge-test",
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

/// `application/x-www-form-urlencoded` decoding (the EC2 query protocol).
fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Clone)]
struct PlacementGroup {
    name: String,
    id: String,
    strategy: String,
    tags: Vec<(String, String)>,
}

/// moto (5.2) implements no placement-group action, so the proxy answers CreatePlacementGroup,
/// DescribePlacementGroups (GroupName.N and tag:KEY filters) and DeletePlacementGroup itself,
/// per account, in the EC2 API's response shapes (ec2 2016-11-15). RunInstances' Placement is
/// passed to moto, which ignores the group; its request is recorded (`Proxy::launches`).
fn placement_groups(
    w: &mut TcpStream,
    st: &Arc<Mutex<ProxyState>>,
    account: &str,
    action: &str,
    body: &str,
) {
    let form: BTreeMap<String, String> = body
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (url_decode(k), url_decode(v)))
        .collect();
    let item = |g: &PlacementGroup| {
        let tags: String = g
            .tags
            .iter()
            .map(|(k, v)| format!("<item><key>{k}</key><value>{v}</value></item>"))
            .collect();
        format!(
            "<groupName>{}</groupName><state>available</state><strategy>{}</strategy><groupId>{}</groupId><tagSet>{tags}</tagSet>",
            g.name, g.strategy, g.id
        )
    };
    let ns = "xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"";
    let mut s = st.lock().unwrap();
    let groups = s.placement_groups.entry(account.to_string()).or_default();
    let error = |code: &str, msg: &str| {
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>{code}</Code><Message>{msg}</Message></Error></Errors><RequestID>0</RequestID></Response>")
    };
    let name = form.get("GroupName").cloned().unwrap_or_default();
    match action {
        "CreatePlacementGroup" => {
            if groups.iter().any(|g| g.name == name) {
                let x = error(
                    "InvalidPlacementGroup.Duplicate",
                    &format!("The placement group '{name}' already exists."),
                );
                return respond(w, 400, "text/xml", &[], x.as_bytes());
            }
            let mut tags = Vec::new();
            for i in 1.. {
                let Some(k) = form.get(&format!("TagSpecification.1.Tag.{i}.Key")) else {
                    break;
                };
                let v = form
                    .get(&format!("TagSpecification.1.Tag.{i}.Value"))
                    .cloned()
                    .unwrap_or_default();
                tags.push((k.clone(), v));
            }
            let g = PlacementGroup {
                id: format!("pg-{:017x}", groups.len() + 1),
                name,
                strategy: form.get("Strategy").cloned().unwrap_or_default(),
                tags,
            };
            let x = format!("<CreatePlacementGroupResponse {ns}><requestId>0</requestId><placementGroup>{}</placementGroup></CreatePlacementGroupResponse>", item(&g));
            groups.push(g);
            respond(w, 200, "text/xml", &[], x.as_bytes())
        }
        "DeletePlacementGroup" => {
            let before = groups.len();
            groups.retain(|g| g.name != name);
            if groups.len() == before {
                let x = error(
                    "InvalidPlacementGroup.Unknown",
                    &format!("The Placement Group '{name}' is unknown."),
                );
                return respond(w, 400, "text/xml", &[], x.as_bytes());
            }
            let x = format!("<DeletePlacementGroupResponse {ns}><requestId>0</requestId><return>true</return></DeletePlacementGroupResponse>");
            respond(w, 200, "text/xml", &[], x.as_bytes())
        }
        _ => {
            let names: Vec<&String> = form
                .iter()
                .filter(|(k, _)| k.starts_with("GroupName."))
                .map(|(_, v)| v)
                .collect();
            let mut tag_filters = Vec::new();
            for i in 1.. {
                let Some(n) = form.get(&format!("Filter.{i}.Name")) else {
                    break;
                };
                let v = form
                    .get(&format!("Filter.{i}.Value.1"))
                    .cloned()
                    .unwrap_or_default();
                if let Some(k) = n.strip_prefix("tag:") {
                    tag_filters.push((k.to_string(), v));
                }
            }
            let items: String = groups
                .iter()
                .filter(|g| names.is_empty() || names.contains(&&g.name))
                .filter(|g| tag_filters.iter().all(|t| g.tags.contains(t)))
                .map(|g| format!("<item>{}</item>", item(g)))
                .collect();
            let x = format!("<DescribePlacementGroupsResponse {ns}><requestId>0</requestId><placementGroupSet>{items}</placementGroupSet></DescribePlacementGroupsResponse>");
            respond(w, 200, "text/xml", &[], x.as_bytes())
        }
    }
}
