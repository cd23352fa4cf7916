//! A fake Compute Engine v1 server on 127.0.0.1 for the GCP provider's tests.
//!
//! There is no usable Compute emulator, so this stands in for the API, strict about the wire
//! contract: every request is routed by the method table of google-cloud-cli's generated client,
//! its query parameters and body are checked against the message schema (unknown fields, JSON
//! types — int64 as strings —, enum values, documented required fields), and violations are
//! answered in the API's error format and recorded. It keeps state (get, list with filter and
//! pagination, aggregatedList, delete with in-use checks), returns long-running Operations that
//! finish when polled (operations.get or operations.wait), allocates addresses and alias ranges,
//! enforces quotas, answers the `/batch/compute/v1` multipart endpoint gcloud uses, and can be
//! told to answer with rate-limit, 5xx or per-instance errors.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ipnet::Ipv4Net;
use serde_json::{json, Value};

use super::schema::{schema, MethodDef, Schema, Violation, STANDARD_QUERY};

/// What the fake's world offers: machine types, accelerator types, quota limits.
#[derive(Debug, Clone)]
pub struct World {
    pub project: String,
    pub region: String,
    pub zone: String,
    /// name → (vCPUs, bundled accelerator (type, count)).
    pub machine_types: BTreeMap<String, (i64, Option<(String, i64)>)>,
    /// accelerator type name → maximum cards per instance (in `zone`).
    pub accelerator_types: BTreeMap<String, i64>,
    /// Regional quota limits by metric (usage is computed from state).
    pub region_quotas: BTreeMap<String, f64>,
    /// Project-wide quota limits by metric.
    pub project_quotas: BTreeMap<String, f64>,
}

impl Default for World {
    fn default() -> Self {
        let mt = |c: i64, a: Option<(&str, i64)>| (c, a.map(|(t, n)| (t.to_string(), n)));
        World {
            project: "k8sforge-test".into(),
            region: "us-central1".into(),
            zone: "us-central1-a".into(),
            machine_types: BTreeMap::from([
                ("n2-standard-16".into(), mt(16, None)),
                ("n1-standard-8".into(), mt(8, None)),
                (
                    "a3-highgpu-8g".into(),
                    mt(208, Some(("nvidia-h100-80gb", 8))),
                ),
            ]),
            accelerator_types: BTreeMap::from([
                ("nvidia-h100-80gb".into(), 8),
                ("nvidia-tesla-t4".into(), 4),
            ]),
            // Generous by default; tests lower them. NVIDIA_H100_GPUS is a metric the shipped
            // client's enum does not know.
            region_quotas: BTreeMap::from([
                ("CPUS".into(), 300_000.0),
                ("N2_CPUS".into(), 1_000.0),
                ("NVIDIA_H100_GPUS".into(), 10_000.0),
                ("NVIDIA_T4_GPUS".into(), 64.0),
                ("IN_USE_ADDRESSES".into(), 2_000.0),
                ("SSD_TOTAL_GB".into(), 1_000_000.0),
                ("INSTANCES".into(), 5_000.0),
            ]),
            project_quotas: BTreeMap::from([
                ("GPUS_ALL_REGIONS".into(), 10_000.0),
                ("CPUS_ALL_REGIONS".into(), 300_000.0),
                ("NETWORKS".into(), 15.0),
                ("FIREWALLS".into(), 200.0),
            ]),
        }
    }
}

/// An injected fault: the next `times` calls of `method_id` get this answer.
#[derive(Debug, Clone)]
pub struct Fault {
    pub method_id: String,
    pub status: u16,
    pub reason: String,
    pub times: usize,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub method_id: String,
    pub http_method: String,
    pub path: String,
}

#[derive(Default)]
pub struct State {
    /// collection path (`projects/p/global/networks`) → name → resource.
    resources: BTreeMap<String, BTreeMap<String, Value>>,
    /// instance group path → member instance URLs.
    members: BTreeMap<String, Vec<String>>,
    /// operation path (`projects/p/zones/z/operations/op-1`) → operation.
    operations: HashMap<String, Value>,
    request_ids: HashMap<String, Value>,
    next_id: u64,
    next_nat: u32,
    faults: VecDeque<Fault>,
    /// Instance names whose creation fails (per-instance bulkInsert error).
    failing_instances: BTreeMap<String, String>,
    /// Guest attributes by instance name, as its guest agent would have written them:
    /// `(namespace, key, value)`.
    guest_attributes: BTreeMap<String, Vec<(String, String, String)>>,
    calls: Vec<Call>,
    /// Requests to the `/batch/compute/v1` endpoint.
    batches: usize,
    /// When set, Compute calls must carry what this credential ends in (see `token`), and the
    /// token endpoints answer only its requests.
    pub expect: Option<super::token::Expect>,
    pub token_grants: usize,
    pub token_requests: Vec<super::token::TokenRequest>,
    /// Compute calls that carried a valid self-signed service-account JWT.
    pub self_signed_jwts: usize,
    unauthenticated: usize,
    violations: Vec<String>,
}

pub struct Fake {
    pub addr: SocketAddr,
    pub world: World,
    state: Arc<Mutex<State>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub struct Ctx {
    world: World,
    base: String,
    state: Arc<Mutex<State>>,
}

impl Fake {
    /// Start on 127.0.0.1 with a free port, on the current tokio runtime.
    pub async fn start(world: World) -> Fake {
        // Clients in tests (reqwest, the Compute library) need the process-wide rustls provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let schema = schema(); // load before serving: fails loudly if the SDK is missing
        let _ = schema;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let ctx = Arc::new(Ctx {
            world: world.clone(),
            base: format!("http://{addr}/compute/v1/"),
            state: state.clone(),
        });
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut stopped => return,
                    acc = listener.accept() => {
                        let Ok((stream, _)) = acc else { continue };
                        let ctx = ctx.clone();
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                let ctx = ctx.clone();
                                async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                }
            }
        });
        Fake {
            addr,
            world,
            state,
            _stop: stop,
        }
    }

    /// API root to give clients (`http://127.0.0.1:port/compute/v1/`).
    pub fn endpoint(&self) -> String {
        format!("http://{}/compute/v1/", self.addr)
    }

    pub fn inject(&self, method_id: &str, status: u16, reason: &str, times: usize) {
        self.state.lock().unwrap().faults.push_back(Fault {
            method_id: method_id.into(),
            status,
            reason: reason.into(),
            times,
        });
    }

    pub fn fail_instance(&self, name: &str, code: &str) {
        self.state
            .lock()
            .unwrap()
            .failing_instances
            .insert(name.into(), code.into());
    }

    /// What the instance's guest agent publishes: `namespace/key = value` (replacing an
    /// entry with the same namespace and key).
    pub fn set_guest_attribute(&self, instance: &str, namespace: &str, key: &str, value: &str) {
        let mut st = self.state.lock().unwrap();
        let attrs = st.guest_attributes.entry(instance.into()).or_default();
        attrs.retain(|(n, k, _)| !(n == namespace && k == key));
        attrs.push((namespace.into(), key.into(), value.into()));
    }

    /// The guest agent's SSH host keys (`type base64` each) under `hostkeys/`, replacing any
    /// published before, as the agent does when it regenerates them.
    pub fn set_host_keys(&self, instance: &str, keys: &[String]) {
        {
            let mut st = self.state.lock().unwrap();
            if let Some(a) = st.guest_attributes.get_mut(instance) {
                a.retain(|(n, _, _)| n != "hostkeys");
            }
        }
        for k in keys {
            let (kind, b64) = k.split_once(' ').expect("`type base64`");
            self.set_guest_attribute(instance, "hostkeys", kind, b64.trim());
        }
    }

    pub fn clear_failures(&self) {
        self.state.lock().unwrap().failing_instances.clear();
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn call_counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for c in self.calls() {
            *m.entry(c.method_id).or_insert(0) += 1;
        }
        m
    }

    pub fn batches(&self) -> usize {
        self.state.lock().unwrap().batches
    }

    /// Require this credential on every Compute call (see `token`).
    pub fn expect_auth(&self, expect: super::token::Expect) {
        self.state.lock().unwrap().expect = Some(expect);
    }

    /// Every request the token endpoints answered, in order.
    pub fn token_requests(&self) -> Vec<super::token::TokenRequest> {
        self.state.lock().unwrap().token_requests.clone()
    }

    pub fn self_signed_jwts(&self) -> usize {
        self.state.lock().unwrap().self_signed_jwts
    }

    /// The workload identity token exchange endpoint (`token_url` of an external_account file).
    pub fn sts_uri(&self) -> String {
        format!("http://{}/sts", self.addr)
    }

    /// `service_account_impersonation_url` for `email`.
    pub fn impersonation_uri(&self, email: &str) -> String {
        format!(
            "http://{}/v1/projects/-/serviceAccounts/{email}:generateAccessToken",
            self.addr
        )
    }

    /// (token grants, Compute requests refused for lack of a token).
    pub fn auth_counts(&self) -> (usize, usize) {
        let st = self.state.lock().unwrap();
        (st.token_grants, st.unauthenticated)
    }

    pub fn token_uri(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn clear_calls(&self) {
        self.state.lock().unwrap().calls.clear();
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    /// Every resource of a collection kind (e.g. `instances`) across scopes.
    pub fn all(&self, kind: &str) -> Vec<Value> {
        let st = self.state.lock().unwrap();
        st.resources
            .iter()
            .filter(|(k, _)| k.rsplit('/').next() == Some(kind))
            .flat_map(|(_, v)| v.values().cloned())
            .collect()
    }

    /// Change a stored resource in place (e.g. as an older k8sforge would have made it).
    pub fn edit(&self, kind: &str, name: &str, f: impl FnOnce(&mut Value)) {
        let mut st = self.state.lock().unwrap();
        let v = st
            .resources
            .iter_mut()
            .filter(|(k, _)| k.rsplit('/').next() == Some(kind))
            .find_map(|(_, c)| c.get_mut(name))
            .unwrap_or_else(|| panic!("no {kind} {name} in the fake"));
        f(v);
    }

    /// Put a resource in place directly, as if someone else had created it.
    pub fn seed(&self, collection: &str, name: &str, mut v: Value) {
        let mut st = self.state.lock().unwrap();
        let path = format!("projects/{}/{collection}", self.world.project);
        v["name"] = json!(name);
        v["selfLink"] = json!(format!("{}{path}/{name}", self.endpoint()));
        st.resources.entry(path).or_default().insert(name.into(), v);
    }
}

fn error(code: u16, reason: &str, message: &str) -> (u16, Value) {
    let status = match code {
        400 => "INVALID_ARGUMENT",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    let domain = if reason.contains("RateLimit") || reason.contains("rateLimit") {
        "usageLimits"
    } else {
        "global"
    };
    let mut body = json!({"error": {"code": code, "message": message, "status": status,
        "errors": [{"message": message, "domain": domain, "reason": reason}]}});
    // Rate limits also carry the structured google.rpc.ErrorInfo the API platform adds, which
    // is what Google's client libraries read (they ignore the legacy `errors` list).
    if domain == "usageLimits" {
        body["error"]["details"] = json!([{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "RATE_LIMIT_EXCEEDED",
            "domain": "googleapis.com",
            "metadata": {"service": "compute.googleapis.com"},
        }]);
    }
    (code, body)
}

fn respond(code: u16, body: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json; charset=UTF-8")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

async fn handle(ctx: &Ctx, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().to_string();
    let uri = req.uri().clone();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    if method == "POST" {
        if let Some((code, v)) = super::token::handle(
            &ctx.state,
            uri.path(),
            &content_type,
            bearer.as_deref(),
            &body,
        ) {
            return respond(code, &v);
        }
    }
    {
        let mut st = ctx.state.lock().unwrap();
        if st.expect.is_some() && !super::token::authorized(&mut st, bearer.as_deref()) {
            st.unauthenticated += 1;
            let (code, v) = error(401, "required", "Request is missing required authentication credential. Expected OAuth 2 access token.");
            return respond(code, &v);
        }
    }
    if uri.path() == "/batch/compute/v1" && method == "POST" {
        ctx.state.lock().unwrap().batches += 1;
        return super::batch::handle(ctx_dispatch(ctx), &content_type, &body);
    }
    let (code, v) = dispatch(ctx, &method, uri.path(), uri.query().unwrap_or(""), &body);
    respond(code, &v)
}

/// A closure the batch handler uses to run each inner request through the same dispatcher.
fn ctx_dispatch(ctx: &Ctx) -> impl Fn(&str, &str, &str, &[u8]) -> (u16, Value) + '_ {
    move |m, p, q, b| dispatch(ctx, m, p, q, b)
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let dec = |s: &str| {
                urlencoding::decode(&s.replace('+', " "))
                    .map(|c| c.into_owned())
                    .unwrap_or_else(|_| s.to_string())
            };
            (dec(k), dec(v))
        })
        .collect()
}

pub fn dispatch(ctx: &Ctx, method: &str, path: &str, query: &str, body: &[u8]) -> (u16, Value) {
    let s = schema();
    let Some(rel) = path.strip_prefix("/compute/v1/") else {
        return error(404, "notFound", &format!("no such API path {path}"));
    };
    let Some((m, params)) = s.route(method, rel) else {
        let v = format!("{method} {path}: not a Compute v1 method");
        ctx.state.lock().unwrap().violations.push(v.clone());
        return error(404, "notFound", &v);
    };
    let q = parse_query(query);
    {
        let mut st = ctx.state.lock().unwrap();
        st.calls.push(Call {
            method_id: m.id.clone(),
            http_method: method.to_string(),
            path: rel.to_string(),
        });
        // Injected faults come before anything else, as a real rate limiter would.
        if let Some(i) = st
            .faults
            .iter()
            .position(|f| f.method_id == m.id && f.times > 0)
        {
            let f = &mut st.faults[i];
            f.times -= 1;
            let (status, reason) = (f.status, f.reason.clone());
            if f.times == 0 {
                st.faults.remove(i);
            }
            let msg = match status {
                429 | 403 => "Rate Limit Exceeded".to_string(),
                _ => "Internal error. Please try again or contact Google Support.".to_string(),
            };
            return error(status, &reason, &msg);
        }
    }
    if let Err(v) = check_request(s, m, &q, body) {
        ctx.state
            .lock()
            .unwrap()
            .violations
            .push(format!("{} {}: {}", m.id, rel, v.message));
        return error(400, v.reason, &v.message);
    }
    if params.get("project").map(String::as_str) != Some(ctx.world.project.as_str()) {
        return error(
            404,
            "notFound",
            &format!(
                "The resource 'projects/{}' was not found",
                params.get("project").cloned().unwrap_or_default()
            ),
        );
    }
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    };
    let mut st = ctx.state.lock().unwrap();
    super::handlers::handle(
        ctx_world(ctx),
        &mut HandlerState {
            st: &mut st,
            base: &ctx.base,
        },
        m,
        rel,
        &params,
        &q,
        body,
    )
}

fn ctx_world(ctx: &Ctx) -> &World {
    &ctx.world
}

/// The documented required body fields of the methods k8sforge and gcloud use (the generated
/// messages mark none of them required, the API's reference does).
fn required_fields(method_id: &str) -> &'static [&'static str] {
    match method_id {
        "compute.networks.insert" => &["name"],
        "compute.subnetworks.insert" => &["name", "network", "ipCidrRange"],
        "compute.firewalls.insert" => &["name"],
        "compute.instances.bulkInsert" => &["count"],
        "compute.instances.insert" => &["name", "machineType"],
        "compute.regionHealthChecks.insert" | "compute.healthChecks.insert" => &["name", "type"],
        "compute.regionBackendServices.insert" => &["name"],
        "compute.addresses.insert" => &["name"],
        "compute.forwardingRules.insert" => &["name"],
        "compute.instanceGroups.insert" => &["name"],
        "compute.instanceGroups.addInstances" => &["instances"],
        _ => &[],
    }
}

fn check_request(
    s: &Schema,
    m: &MethodDef,
    q: &[(String, String)],
    body: &[u8],
) -> Result<(), Violation> {
    for (k, v) in q {
        if !m.query_params.contains(k) && !STANDARD_QUERY.contains(&k.as_str()) {
            return Err(Violation {
                reason: "invalidParameter",
                message: format!("Invalid JSON payload received. Unknown name \"{k}\": Cannot bind query parameter."),
            });
        }
        if k == "maxResults" && v.parse::<u32>().is_err() {
            return Err(Violation {
                reason: "invalid",
                message: format!("Invalid value at 'max_results' (TYPE_UINT32), \"{v}\""),
            });
        }
    }
    match (s.body_type(m), body.is_empty()) {
        (None, true) => Ok(()),
        (None, false) => Err(Violation {
            reason: "invalid",
            message: format!("{} takes no request body", m.id),
        }),
        (Some(_), true) => Err(Violation {
            reason: "required",
            message: format!(
                "Required field 'resource' not specified ({} needs a body)",
                m.id
            ),
        }),
        (Some(ty), false) => {
            let v: Value = serde_json::from_slice(body).map_err(|e| Violation {
                reason: "parseError",
                message: format!("Invalid JSON payload received. {e}"),
            })?;
            s.check(&ty, &v, "resource")?;
            for f in required_fields(&m.id) {
                if v.get(f).is_none_or(Value::is_null) {
                    return Err(Violation {
                        reason: "required",
                        message: format!("Required field 'resource.{f}' not specified"),
                    });
                }
            }
            if m.id == "compute.instances.bulkInsert" {
                let per = v.get("perInstanceProperties").and_then(Value::as_object);
                if per.is_none() && v.get("namePattern").is_none() {
                    return Err(Violation {
                        reason: "required",
                        message: "Either namePattern or perInstanceProperties must be set".into(),
                    });
                }
                if v.get("instanceProperties").is_none()
                    && v.get("sourceInstanceTemplate").is_none()
                {
                    return Err(Violation {
                        reason: "required",
                        message: "Required field 'resource.instanceProperties' not specified"
                            .into(),
                    });
                }
            }
            Ok(())
        }
    }
}

/// Mutable view handlers work on.
pub struct HandlerState<'a> {
    st: &'a mut State,
    pub base: &'a str,
}

impl HandlerState<'_> {
    pub fn collection(&mut self, path: &str) -> &mut BTreeMap<String, Value> {
        self.st.resources.entry(path.to_string()).or_default()
    }
    pub fn get(&self, path: &str, name: &str) -> Option<&Value> {
        self.st.resources.get(path).and_then(|c| c.get(name))
    }
    pub fn collections(&self) -> impl Iterator<Item = (&String, &BTreeMap<String, Value>)> {
        self.st.resources.iter()
    }
    pub fn next_id(&mut self) -> u64 {
        self.st.next_id += 1;
        1_000_000_000 + self.st.next_id
    }
    pub fn next_nat(&mut self) -> Ipv4Addr {
        self.st.next_nat += 1;
        // Documentation range 203.0.113.0/24 is too small for 1000 nodes; 100.64/10 stands in.
        Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + self.st.next_nat)
    }
    pub fn operations(&mut self) -> &mut HashMap<String, Value> {
        &mut self.st.operations
    }
    pub fn request_ids(&mut self) -> &mut HashMap<String, Value> {
        &mut self.st.request_ids
    }
    pub fn members(&mut self) -> &mut BTreeMap<String, Vec<String>> {
        &mut self.st.members
    }
    pub fn failing(&self, name: &str) -> Option<String> {
        self.st.failing_instances.get(name).cloned()
    }
    pub fn guest_attributes(&self, instance: &str) -> Vec<(String, String, String)> {
        self.st
            .guest_attributes
            .get(instance)
            .cloned()
            .unwrap_or_default()
    }
    pub fn violation(&mut self, v: String) {
        self.st.violations.push(v);
    }
}

/// Lowest free aligned block of `/prefix` in `range` not overlapping `used`.
pub fn allocate_block(
    range: Ipv4Net,
    prefix: u8,
    used: &std::collections::HashSet<Ipv4Net>,
) -> Option<Ipv4Net> {
    if prefix < range.prefix_len() || prefix > 32 {
        return None;
    }
    let step = 1u64 << (32 - u32::from(prefix));
    let count = 1u64 << (prefix - range.prefix_len());
    let start = u64::from(u32::from(range.network()));
    // Blocks of other sizes are rare: check overlap with those, equality with the rest.
    let other: Vec<&Ipv4Net> = used.iter().filter(|u| u.prefix_len() != prefix).collect();
    (0..count)
        .map(|i| Ipv4Net::new(Ipv4Addr::from((start + i * step) as u32), prefix).unwrap())
        .find(|b| !used.contains(b) && !other.iter().any(|u| u.contains(b) || b.contains(*u)))
}
