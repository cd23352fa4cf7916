//! What the fake Compute API does for each method: generic insert/get/list/aggregatedList/
//! delete over its state, operations, and the few methods with their own behaviour
//! (bulkInsert, instance groups, regions/projects with quotas, machine and accelerator types).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use super::fake::{allocate_block, HandlerState, World};
use super::schema::MethodDef;

type Answer = (u16, Value);

fn err(code: u16, reason: &str, message: &str) -> Answer {
    let status = match code {
        400 => "INVALID_ARGUMENT",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        _ => "FAILED_PRECONDITION",
    };
    (
        code,
        json!({"error": {"code": code, "message": message, "status": status,
            "errors": [{"message": message, "domain": "global", "reason": reason}]}}),
    )
}

fn not_found(path: &str) -> Answer {
    err(
        404,
        "notFound",
        &format!("The resource '{path}' was not found"),
    )
}

/// Verb of a method id: `compute.instances.bulkInsert` → (`instances`, `bulkInsert`).
fn split_id(id: &str) -> (&str, &str) {
    let rest = id.trim_start_matches("compute.");
    rest.rsplit_once('.').unwrap_or((rest, ""))
}

/// Collection path of a request: the template up to and including the collection segment.
fn collection_of(rel: &str, verb: &str) -> String {
    let segs: Vec<&str> = rel.split('/').collect();
    match verb {
        "list" | "insert" => rel.to_string(),
        "bulkInsert" => segs[..segs.len() - 1].join("/"),
        "get" | "delete" => segs[..segs.len() - 1].join("/"),
        // e.g. instanceGroups/{ig}/addInstances
        _ => segs[..segs.len().saturating_sub(2)].join("/"),
    }
}

/// Scope of a collection (`projects/p/zones/z/instances` → `zones/z`, global → `global`).
fn scope_of(collection: &str) -> String {
    let segs: Vec<&str> = collection.split('/').collect();
    if segs.len() >= 5 {
        format!("{}/{}", segs[2], segs[3])
    } else {
        "global".into()
    }
}

fn now() -> String {
    "2026-01-01T00:00:00.000-00:00".into()
}

/// Reference fields hold full URLs; accept full URLs (any host), relative `projects/…` paths,
/// scope-relative paths and bare names, and normalise to this server's URLs.
fn normalise_ref(base: &str, project: &str, scope: &str, kind: &str, v: &str) -> String {
    if let Some(i) = v.find("/compute/v1/") {
        return format!("{base}{}", &v[i + "/compute/v1/".len()..]);
    }
    if v.starts_with("projects/") {
        return format!("{base}{v}");
    }
    if v.starts_with("global/") || v.starts_with("regions/") || v.starts_with("zones/") {
        return format!("{base}projects/{project}/{v}");
    }
    format!("{base}projects/{project}/{scope}/{kind}/{v}")
}

fn rel_of<'a>(base: &str, url: &'a str) -> &'a str {
    url.strip_prefix(base).unwrap_or(url)
}

fn operation(
    hs: &mut HandlerState,
    world: &World,
    scope: &str,
    op_type: &str,
    target: &str,
    error: Option<Value>,
    extra: Option<(&str, Value)>,
) -> Value {
    let id = hs.next_id();
    let name = format!("operation-{id}");
    let (scope_field, link) = match scope.split_once('/') {
        Some(("zones", z)) => (
            "zone",
            format!("{}projects/{}/zones/{z}", hs.base, world.project),
        ),
        Some(("regions", r)) => (
            "region",
            format!("{}projects/{}/regions/{r}", hs.base, world.project),
        ),
        _ => ("", String::new()),
    };
    let path = format!("projects/{}/{}/operations/{name}", world.project, scope);
    let mut op = json!({
        "kind": "compute#operation",
        "id": id.to_string(),
        "name": name,
        "operationType": op_type,
        "targetLink": target,
        "status": "RUNNING",
        "progress": 0,
        "insertTime": now(),
        "startTime": now(),
        "user": "test@example.com",
        "selfLink": format!("{}{path}", hs.base),
    });
    if !scope_field.is_empty() {
        op[scope_field] = json!(link);
    }
    // The result is decided now; the client sees it once it polls.
    let mut done = op.clone();
    done["status"] = json!("DONE");
    done["progress"] = json!(100);
    done["endTime"] = json!(now());
    if let Some(e) = error {
        done["error"] = e;
        done["httpErrorStatusCode"] = json!(400);
        done["httpErrorMessage"] = json!("BAD REQUEST");
    }
    if let Some((k, v)) = extra {
        done[k] = v;
    }
    hs.operations().insert(path, done);
    op
}

pub fn handle(
    world: &World,
    hs: &mut HandlerState,
    m: &MethodDef,
    rel: &str,
    params: &HashMap<String, String>,
    q: &[(String, String)],
    body: Value,
) -> Answer {
    let (resource, verb) = split_id(&m.id);
    let qget = |k: &str| q.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    // Idempotent retries: the same requestId answers with the same operation.
    if let Some(rid) = qget("requestId") {
        if let Some(op) = hs.request_ids().get(&rid) {
            return (200, op.clone());
        }
    }
    let answer = match (resource, verb) {
        (r, "wait") | (r, "get") if r.ends_with("Operations") => {
            let path = rel.trim_end_matches("/wait").to_string();
            match hs.operations().get(&path) {
                Some(op) => (200, op.clone()),
                None => not_found(&path),
            }
        }
        ("regions", "get") => region(world, hs, params),
        ("projects", "get") => project(world, hs),
        ("zones", "get") => (
            200,
            json!({"kind": "compute#zone", "name": params["zone"], "status": "UP",
            "region": format!("{}projects/{}/regions/{}", hs.base, world.project, world.region),
            "selfLink": format!("{}{rel}", hs.base)}),
        ),
        ("machineTypes", "get") => match world.machine_types.get(&params["machineType"]) {
            Some(mt) if params["zone"] == world.zone => (
                200,
                machine_type(world, hs.base, &params["machineType"], mt),
            ),
            _ => not_found(rel),
        },
        ("acceleratorTypes", "get") => {
            match world.accelerator_types.get(&params["acceleratorType"]) {
                Some(max) if params["zone"] == world.zone => (
                    200,
                    accelerator_type(world, hs.base, &params["acceleratorType"], *max),
                ),
                _ => not_found(rel),
            }
        }
        ("acceleratorTypes", "list") => {
            let items: Vec<Value> = if params["zone"] == world.zone {
                world
                    .accelerator_types
                    .iter()
                    .map(|(n, max)| accelerator_type(world, hs.base, n, *max))
                    .collect()
            } else {
                vec![]
            };
            page(
                items,
                q,
                "compute#acceleratorTypeList",
                &format!("{}{rel}", hs.base),
            )
        }
        ("instances", "bulkInsert") => bulk_insert(world, hs, rel, params, body),
        ("instances", "getGuestAttributes") => guest_attributes(hs, rel, params, q),
        ("instanceGroups", "addInstances") => add_instances(world, hs, rel, params, body),
        ("instanceGroups", "listInstances") => {
            let ig = rel.trim_end_matches("/listInstances").to_string();
            if hs
                .get(&collection_of(rel, "x"), &params["instanceGroup"])
                .is_none()
            {
                return not_found(&ig);
            }
            let items: Vec<Value> = hs
                .members()
                .get(&ig)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|u| json!({"instance": u, "status": "RUNNING"}))
                .collect();
            page(
                items,
                q,
                "compute#instanceGroupsListInstances",
                &format!("{}{rel}", hs.base),
            )
        }
        (_, "insert") => insert(world, hs, resource, rel, body),
        (_, "get") => {
            let (coll, name) = rel.rsplit_once('/').unwrap_or((rel, ""));
            match hs.get(coll, name) {
                Some(v) => (200, v.clone()),
                None => not_found(rel),
            }
        }
        (_, "list") => {
            let items: Vec<Value> = hs.collection(rel).values().cloned().collect();
            match filter(&qget("filter"), items) {
                Ok(items) => page(
                    items,
                    q,
                    &format!("compute#{}List", singular(resource)),
                    &format!("{}{rel}", hs.base),
                ),
                Err(e) => err(400, "invalid", &e),
            }
        }
        (_, "aggregatedList") => aggregated(world, hs, resource, q),
        (_, "delete") => delete(world, hs, resource, rel),
        (_, "patch") => patch(world, hs, rel, body),
        _ => {
            let v = format!(
                "{} is a real Compute method the fake does not implement",
                m.id
            );
            hs.violation(v.clone());
            err(501, "notImplemented", &v)
        }
    };
    if let (Some(rid), 200) = (qget("requestId"), answer.0) {
        if answer.1.get("kind").and_then(Value::as_str) == Some("compute#operation") {
            hs.request_ids().insert(rid, answer.1.clone());
        }
    }
    answer
}

fn singular(resource: &str) -> String {
    let r = resource.trim_start_matches("region");
    let mut c = r.chars();
    let first = c
        .next()
        .map(|f| f.to_ascii_lowercase().to_string())
        .unwrap_or_default();
    let s = format!("{first}{}", c.as_str());
    s.strip_suffix("es")
        .filter(|x| x.ends_with("ss") || x.ends_with("Address"))
        .map(str::to_string)
        .unwrap_or_else(|| s.trim_end_matches('s').to_string())
}

fn machine_type(world: &World, base: &str, name: &str, mt: &(i64, Option<(String, i64)>)) -> Value {
    let mut v = json!({"kind": "compute#machineType", "name": name, "guestCpus": mt.0,
        "memoryMb": mt.0 * 4096, "zone": world.zone,
        "selfLink": format!("{base}projects/{}/zones/{}/machineTypes/{name}", world.project, world.zone)});
    if let Some((t, n)) = &mt.1 {
        v["accelerators"] = json!([{"guestAcceleratorType": t, "guestAcceleratorCount": n}]);
    }
    v
}

fn accelerator_type(world: &World, base: &str, name: &str, max: i64) -> Value {
    json!({"kind": "compute#acceleratorType", "name": name, "description": name,
        "maximumCardsPerInstance": max, "zone": format!("{base}projects/{}/zones/{}", world.project, world.zone),
        "selfLink": format!("{base}projects/{}/zones/{}/acceleratorTypes/{name}", world.project, world.zone)})
}

/// Usage by quota metric, from the state.
fn usage(world: &World, hs: &HandlerState) -> HashMap<String, f64> {
    let mut u: HashMap<String, f64> = HashMap::new();
    for (coll, items) in hs.collections() {
        if coll.ends_with("/instances") {
            for i in items.values() {
                let mt = i["machineType"]
                    .as_str()
                    .unwrap_or("")
                    .rsplit('/')
                    .next()
                    .unwrap_or("");
                let cpus = world.machine_types.get(mt).map_or(0, |m| m.0) as f64;
                *u.entry("CPUS".into()).or_default() += cpus;
                *u.entry("CPUS_ALL_REGIONS".into()).or_default() += cpus;
                let fam = mt.split('-').next().unwrap_or("").to_ascii_uppercase();
                *u.entry(format!("{fam}_CPUS")).or_default() += cpus;
                *u.entry("INSTANCES".into()).or_default() += 1.0;
                *u.entry("IN_USE_ADDRESSES".into()).or_default() += 1.0;
                for d in i["disks"].as_array().into_iter().flatten() {
                    *u.entry("SSD_TOTAL_GB".into()).or_default() += d["diskSizeGb"]
                        .as_str()
                        .and_then(|s| s.parse::<f64>().ok())
                        .unwrap_or(0.0);
                }
                for g in i["guestAccelerators"].as_array().into_iter().flatten() {
                    let t = g["acceleratorType"]
                        .as_str()
                        .unwrap_or("")
                        .rsplit('/')
                        .next()
                        .unwrap_or("");
                    let n = g["acceleratorCount"].as_f64().unwrap_or(0.0);
                    *u.entry(gpu_metric(t)).or_default() += n;
                    *u.entry("GPUS_ALL_REGIONS".into()).or_default() += n;
                }
            }
        }
        if coll.ends_with("/addresses") {
            *u.entry("IN_USE_ADDRESSES".into()).or_default() += items.len() as f64;
        }
        if coll.ends_with("/global/networks") {
            *u.entry("NETWORKS".into()).or_default() += items.len() as f64;
        }
        if coll.ends_with("/global/firewalls") {
            *u.entry("FIREWALLS".into()).or_default() += items.len() as f64;
        }
    }
    u
}

fn gpu_metric(t: &str) -> String {
    match t {
        "nvidia-h100-80gb" => "NVIDIA_H100_GPUS".into(),
        "nvidia-tesla-t4" => "NVIDIA_T4_GPUS".into(),
        other => format!(
            "NVIDIA_{}_GPUS",
            other.to_ascii_uppercase().replace('-', "_")
        ),
    }
}

fn quotas(
    limits: &std::collections::BTreeMap<String, f64>,
    u: &HashMap<String, f64>,
) -> Vec<Value> {
    limits
        .iter()
        .map(|(m, l)| json!({"metric": m, "limit": l, "usage": u.get(m).copied().unwrap_or(0.0)}))
        .collect()
}

fn region(world: &World, hs: &HandlerState, params: &HashMap<String, String>) -> Answer {
    if params["region"] != world.region {
        return not_found(&format!(
            "projects/{}/regions/{}",
            world.project, params["region"]
        ));
    }
    let u = usage(world, hs);
    (
        200,
        json!({"kind": "compute#region", "name": world.region, "status": "UP",
        "zones": [format!("{}projects/{}/zones/{}", hs.base, world.project, world.zone)],
        "quotas": quotas(&world.region_quotas, &u),
        "selfLink": format!("{}projects/{}/regions/{}", hs.base, world.project, world.region)}),
    )
}

fn project(world: &World, hs: &HandlerState) -> Answer {
    let u = usage(world, hs);
    (
        200,
        json!({"kind": "compute#project", "name": world.project, "id": "123456789",
        "quotas": quotas(&world.project_quotas, &u),
        "selfLink": format!("{}projects/{}", hs.base, world.project)}),
    )
}

fn resource_kind(resource: &str) -> String {
    format!("compute#{}", singular(resource))
}

/// Turn a validated insert body into the stored resource: server fields, normalised refs.
fn materialise(
    world: &World,
    hs: &mut HandlerState,
    resource: &str,
    coll: &str,
    mut v: Value,
) -> Result<Value, Answer> {
    let name = v["name"].as_str().unwrap_or("").to_string();
    if !valid_name(&name) {
        return Err(err(400, "invalid", &format!("Invalid value for field 'resource.name': '{name}'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?)'")));
    }
    let scope = scope_of(coll);
    let id = hs.next_id();
    v["kind"] = json!(resource_kind(resource));
    v["id"] = json!(id.to_string());
    v["creationTimestamp"] = json!(now());
    v["selfLink"] = json!(format!("{}{coll}/{name}", hs.base));
    if let Some((s, n)) = scope.split_once('/') {
        let key = if s == "zones" { "zone" } else { "region" };
        v[key] = json!(format!("{}projects/{}/{s}/{n}", hs.base, world.project));
    }
    let base = hs.base.to_string();
    let fix = |v: &mut Value, field: &str, kind: &str, sc: &str| {
        if let Some(s) = v.get(field).and_then(Value::as_str) {
            let n = normalise_ref(&base, &world.project, sc, kind, s);
            v[field] = json!(n);
        }
    };
    let region_scope = format!("regions/{}", world.region);
    match resource {
        "networks" => {
            if v.get("autoCreateSubnetworks").is_none() {
                return Err(err(400, "invalid", "Invalid value for field 'resource.autoCreateSubnetworks': unset means a legacy network, which is not allowed"));
            }
            v["routingConfig"] = json!({"routingMode": "REGIONAL"});
            // VPC networks take MTUs from 1300 to 8896 (default 1460).
            match v.get("mtu").map(|m| m.as_i64()) {
                None => v["mtu"] = json!(1460),
                Some(Some(m)) if (1300..=8896).contains(&m) => {}
                Some(_) => {
                    return Err(err(
                        400,
                        "invalid",
                        "Invalid value for field 'resource.mtu': must be between 1300 and 8896",
                    ))
                }
            }
        }
        "subnetworks" => {
            fix(&mut v, "network", "networks", "global");
            let net = rel_of(&base, v["network"].as_str().unwrap_or("")).to_string();
            let (nc, nn) = net.rsplit_once('/').unwrap_or(("", ""));
            if hs.get(nc, nn).is_none() {
                return Err(err(
                    404,
                    "notFound",
                    &format!("The resource '{net}' was not found"),
                ));
            }
            let Ok(primary) = v["ipCidrRange"].as_str().unwrap_or("").parse::<Ipv4Net>() else {
                return Err(err(
                    400,
                    "invalid",
                    "Invalid value for field 'resource.ipCidrRange'",
                ));
            };
            for r in v["secondaryIpRanges"].as_array().into_iter().flatten() {
                let Ok(sr) = r["ipCidrRange"].as_str().unwrap_or("").parse::<Ipv4Net>() else {
                    return Err(err(
                        400,
                        "invalid",
                        "Invalid value for field 'resource.secondaryIpRanges[0].ipCidrRange'",
                    ));
                };
                if sr.contains(&primary) || primary.contains(&sr) {
                    return Err(err(
                        400,
                        "invalid",
                        "secondary range overlaps the primary range",
                    ));
                }
            }
            v["gatewayAddress"] =
                json!(Ipv4Addr::from(u32::from(primary.network()) + 1).to_string());
            v["fingerprint"] = json!("AAAAAAAAAAA=");
        }
        "resourcePolicies" => {
            // Only the compact placement kind is modelled; its one documented collocation.
            let Some(g) = v.get("groupPlacementPolicy") else {
                return Err(err(
                    400,
                    "invalid",
                    "the fake models only resource policies with groupPlacementPolicy",
                ));
            };
            if g["collocation"] != "COLLOCATED" {
                return Err(err(400, "invalid", "Invalid value for field 'resource.groupPlacementPolicy.collocation': compact placement needs COLLOCATED"));
            }
            v["status"] = json!("READY");
        }
        "firewalls" => {
            if v.get("network").is_none() {
                v["network"] = json!("global/networks/default");
            }
            fix(&mut v, "network", "networks", "global");
            let net = rel_of(&base, v["network"].as_str().unwrap_or("")).to_string();
            let (nc, nn) = net.rsplit_once('/').unwrap_or(("", ""));
            if hs.get(nc, nn).is_none() {
                return Err(err(
                    404,
                    "notFound",
                    &format!("The resource '{net}' was not found"),
                ));
            }
            if v.get("direction").is_none() {
                v["direction"] = json!("INGRESS");
            }
            if v.get("priority").is_none() {
                v["priority"] = json!(1000);
            }
        }
        "instanceGroups" => {
            fix(&mut v, "network", "networks", "global");
            v["size"] = json!(0);
            v["fingerprint"] = json!("AAAAAAAAAAA=");
        }
        "regionHealthChecks" | "healthChecks"
            if v["type"] == "TCP" && v.get("tcpHealthCheck").is_none() =>
        {
            return Err(err(
                400,
                "invalid",
                "Invalid value for field 'resource.tcpHealthCheck': required for type TCP",
            ));
        }
        "regionBackendServices" => {
            let mut checks = Vec::new();
            for h in v["healthChecks"].as_array().cloned().unwrap_or_default() {
                let u = normalise_ref(
                    &base,
                    &world.project,
                    &region_scope,
                    "healthChecks",
                    h.as_str().unwrap_or(""),
                );
                let r = rel_of(&base, &u).to_string();
                let (c, n) = r.rsplit_once('/').unwrap_or(("", ""));
                if hs.get(c, n).is_none() {
                    return Err(err(
                        404,
                        "notFound",
                        &format!("The resource '{r}' was not found"),
                    ));
                }
                checks.push(json!(u));
            }
            v["healthChecks"] = json!(checks);
            if let Some(bs) = v["backends"].as_array_mut() {
                for b in bs {
                    let g = b["group"].as_str().unwrap_or("").to_string();
                    b["group"] = json!(normalise_ref(
                        &base,
                        &world.project,
                        &format!("zones/{}", world.zone),
                        "instanceGroups",
                        &g
                    ));
                }
            }
            v["fingerprint"] = json!("AAAAAAAAAAA=");
        }
        "addresses" => {
            if v.get("address").is_none() {
                let ip = hs.next_nat();
                v["address"] = json!(ip.to_string());
            }
            v["status"] = json!("RESERVED");
            v["labelFingerprint"] = json!("AAAAAAAAAAA=");
        }
        "forwardingRules" => {
            if let Some(bs) = v
                .get("backendService")
                .and_then(Value::as_str)
                .map(str::to_string)
            {
                let u = normalise_ref(&base, &world.project, &region_scope, "backendServices", &bs);
                let r = rel_of(&base, &u).to_string();
                let (c, n) = r.rsplit_once('/').unwrap_or(("", ""));
                if hs.get(c, n).is_none() {
                    return Err(err(
                        404,
                        "notFound",
                        &format!("The resource '{r}' was not found"),
                    ));
                }
                v["backendService"] = json!(u);
            }
            if v.get("IPAddress").is_none() {
                let ip = hs.next_nat();
                v["IPAddress"] = json!(ip.to_string());
            }
            v["labelFingerprint"] = json!("AAAAAAAAAAA=");
            v["fingerprint"] = json!("AAAAAAAAAAA=");
        }
        _ => {}
    }
    Ok(v)
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.starts_with(|c: char| c.is_ascii_lowercase())
        && !n.ends_with('-')
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn insert(world: &World, hs: &mut HandlerState, resource: &str, rel: &str, body: Value) -> Answer {
    let name = body["name"].as_str().unwrap_or("").to_string();
    if hs.get(rel, &name).is_some() {
        return err(
            409,
            "alreadyExists",
            &format!("The resource '{rel}/{name}' already exists"),
        );
    }
    let v = match materialise(world, hs, resource, rel, body) {
        Ok(v) => v,
        Err(a) => return a,
    };
    let target = v["selfLink"].as_str().unwrap_or("").to_string();
    hs.collection(rel).insert(name, v);
    let scope = scope_of(rel);
    (
        200,
        operation(hs, world, &scope, "insert", &target, None, None),
    )
}

/// A resource is in use while another one refers to its URL.
fn users_of(hs: &HandlerState, url: &str) -> Vec<String> {
    fn refs(v: &Value, url: &str) -> bool {
        match v {
            Value::String(s) => s == url,
            Value::Array(a) => a.iter().any(|x| refs(x, url)),
            Value::Object(o) => o.iter().any(|(k, x)| k != "selfLink" && refs(x, url)),
            _ => false,
        }
    }
    hs.collections()
        .flat_map(|(_, items)| items.values())
        .filter(|v| v["selfLink"].as_str() != Some(url) && refs(v, url))
        .filter_map(|v| v["selfLink"].as_str().map(str::to_string))
        .collect()
}

fn delete(world: &World, hs: &mut HandlerState, resource: &str, rel: &str) -> Answer {
    let (coll, name) = rel.rsplit_once('/').unwrap_or((rel, ""));
    let Some(v) = hs.get(coll, name).cloned() else {
        return not_found(rel);
    };
    let url = v["selfLink"].as_str().unwrap_or("").to_string();
    // Instances are referred to only by instance-group membership, which deleting ends.
    let users = if resource == "instances" {
        Vec::new()
    } else {
        users_of(hs, &url)
    };
    if !users.is_empty() {
        return err(
            400,
            "resourceInUseByAnotherResource",
            &format!(
                "The {} resource '{rel}' is already being used by '{}'",
                singular(resource),
                rel_of(hs.base, &users[0])
            ),
        );
    }
    if resource == "instanceGroups" {
        hs.members().remove(rel);
    }
    if resource == "instances" {
        for m in hs.members().values_mut() {
            m.retain(|u| u != &url);
        }
        // Disks marked autoDelete go with their instance.
        let dcoll = coll.replace("/instances", "/disks");
        for d in v["disks"].as_array().into_iter().flatten() {
            if d["autoDelete"] == json!(true) {
                if let Some(dn) = d["source"].as_str().and_then(|u| u.rsplit('/').next()) {
                    hs.collection(&dcoll).remove(dn);
                }
            }
        }
    }
    hs.collection(coll).remove(name);
    let scope = scope_of(coll);
    (
        200,
        operation(hs, world, &scope, "delete", &url, None, None),
    )
}

fn page(items: Vec<Value>, q: &[(String, String)], kind: &str, self_link: &str) -> Answer {
    let max: usize = q
        .iter()
        .find(|(k, _)| k == "maxResults")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(500)
        .clamp(1, 500);
    let start: usize = q
        .iter()
        .find(|(k, _)| k == "pageToken")
        .and_then(|(_, v)| v.strip_prefix("page-").and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    let end = (start + max).min(items.len());
    let mut v = json!({"kind": kind, "id": self_link, "selfLink": self_link,
        "items": items.get(start..end).unwrap_or(&[]).to_vec()});
    if end < items.len() {
        v["nextPageToken"] = json!(format!("page-{end}"));
    }
    (200, v)
}

/// The filter forms the API documents for list calls: `field = "value"`, `field != value`,
/// `field eq regex`, `labels.key = value`, joined by AND / spaces, in parentheses or not.
fn filter(f: &Option<String>, items: Vec<Value>) -> Result<Vec<Value>, String> {
    let Some(f) = f.as_deref().map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(items);
    };
    let mut terms = Vec::new();
    let mut rest = f;
    while !rest.is_empty() {
        rest = rest.trim_start().trim_start_matches("AND ").trim_start();
        let inner = rest.strip_prefix('(').map(|r| r.trim_start());
        let src = inner.unwrap_or(rest);
        let (field, after) = src
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("Invalid list filter expression '{f}'"))?;
        let after = after.trim_start();
        let (op, after) = after
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("Invalid list filter expression '{f}'"))?;
        let after = after.trim_start();
        let (value, remaining) = if let Some(a) = after.strip_prefix('"') {
            let end = a
                .find('"')
                .ok_or_else(|| format!("unterminated string in filter '{f}'"))?;
            (a[..end].to_string(), &a[end + 1..])
        } else {
            let end = after.find([' ', ')']).unwrap_or(after.len());
            (after[..end].to_string(), &after[end..])
        };
        let remaining = remaining.trim_start();
        let remaining = if inner.is_some() {
            remaining
                .strip_prefix(')')
                .ok_or_else(|| format!("unbalanced parentheses in filter '{f}'"))?
        } else {
            remaining
        };
        if !matches!(op, "=" | "!=" | "eq" | "ne") {
            return Err(format!(
                "Invalid list filter expression '{f}': operator {op}"
            ));
        }
        terms.push((field.to_string(), op.to_string(), value));
        rest = remaining.trim_start();
    }
    Ok(items
        .into_iter()
        .filter(|it| {
            terms.iter().all(|(field, op, value)| {
                let mut cur = Some(it);
                for part in field.split('.') {
                    cur = cur.and_then(|c| c.get(part));
                }
                let s = cur.map(|c| match c {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
                match op.as_str() {
                    "=" => s.as_deref() == Some(value.as_str()),
                    "!=" => s.as_deref() != Some(value.as_str()),
                    // eq/ne take RE2 regular expressions over the whole value; the fake supports
                    // literal text and `.*` (what gcloud and k8sforge send).
                    _ => {
                        let m = s.as_deref().is_some_and(|s| simple_regex(value, s));
                        (op == "eq") == m
                    }
                }
            })
        })
        .collect())
}

fn simple_regex(pat: &str, s: &str) -> bool {
    let parts: Vec<&str> = pat.split(".*").collect();
    if parts.len() == 1 {
        return pat == s;
    }
    let mut pos = 0;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            if !s.starts_with(p) {
                return false;
            }
            pos = p.len();
        } else if i == parts.len() - 1 {
            return s[pos..].ends_with(p);
        } else if let Some(f) = s[pos..].find(p) {
            pos += f + p.len();
        } else {
            return false;
        }
    }
    true
}

fn aggregated(
    world: &World,
    hs: &mut HandlerState,
    resource: &str,
    q: &[(String, String)],
) -> Answer {
    let qget = |k: &str| q.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    let suffix = format!("/{resource}");
    let mut all: Vec<(String, Value)> = Vec::new();
    let colls: Vec<(String, Vec<Value>)> = hs
        .collections()
        .filter(|(k, _)| k.ends_with(&suffix))
        .map(|(k, v)| (k.clone(), v.values().cloned().collect()))
        .collect();
    for (coll, items) in colls {
        let scope = scope_of(&coll);
        match filter(&qget("filter"), items) {
            Ok(items) => all.extend(items.into_iter().map(|i| (scope.clone(), i))),
            Err(e) => return err(400, "invalid", &e),
        }
    }
    let (code, p) = page(
        all.iter()
            .map(|(s, i)| json!({"scope": s, "item": i}))
            .collect(),
        q,
        "",
        "",
    );
    if code != 200 {
        return (code, p);
    }
    let mut by_scope = serde_json::Map::new();
    for e in p["items"].as_array().into_iter().flatten() {
        let s = e["scope"].as_str().unwrap_or("global").to_string();
        let entry = by_scope.entry(s).or_insert_with(|| json!({resource: []}));
        if let Some(a) = entry[resource].as_array_mut() {
            a.push(e["item"].clone());
        }
    }
    let mut v = json!({"kind": format!("compute#{}AggregatedList", singular(resource)),
        "id": format!("projects/{}/aggregated/{resource}", world.project),
        "items": by_scope,
        "selfLink": format!("{}projects/{}/aggregated/{resource}", hs.base, world.project)});
    if let Some(t) = p.get("nextPageToken") {
        v["nextPageToken"] = t.clone();
    }
    (200, v)
}

fn bulk_insert(
    world: &World,
    hs: &mut HandlerState,
    rel: &str,
    params: &HashMap<String, String>,
    body: Value,
) -> Answer {
    let zone = params["zone"].clone();
    if zone != world.zone {
        return err(
            400,
            "invalid",
            &format!("Invalid value for field 'zone': '{zone}'"),
        );
    }
    let coll = rel.trim_end_matches("/bulkInsert").to_string();
    let count: usize = body["count"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let min_count: usize = body
        .get("minCount")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(count);
    let names: Vec<String> = body["perInstanceProperties"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    if names.len() != count {
        return err(
            400,
            "invalid",
            &format!(
                "count ({count}) must equal the number of perInstanceProperties ({})",
                names.len()
            ),
        );
    }
    if count > 1000 {
        return err(
            400,
            "invalid",
            "Invalid value for field 'resource.count': must be at most 1000",
        );
    }
    let props = body["instanceProperties"].clone();
    let base = hs.base.to_string();
    let zscope = format!("zones/{zone}");
    // Machine type and accelerators must exist; GPUs on a bundled type must match it.
    let mt_name = props["machineType"]
        .as_str()
        .unwrap_or("")
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string();
    let Some(mt) = world.machine_types.get(&mt_name).cloned() else {
        return err(400, "invalid", &format!("Invalid value for field 'resource.instanceProperties.machineType': '{mt_name}'. Machine type with name '{mt_name}' does not exist in zone '{zone}'."));
    };
    let mut accels: Vec<Value> = Vec::new();
    for a in props["guestAccelerators"].as_array().into_iter().flatten() {
        let t = a["acceleratorType"]
            .as_str()
            .unwrap_or("")
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        if !world.accelerator_types.contains_key(&t) {
            return err(400, "invalid", &format!("Invalid value for field 'resource.instanceProperties.guestAccelerators[0].acceleratorType': '{t}'. Accelerator type '{t}' does not exist in zone '{zone}'."));
        }
        if mt.1.is_some() {
            return err(400, "invalid", &format!("Machine type '{mt_name}' comes with accelerators; guestAccelerators must not be set"));
        }
        accels.push(json!({"acceleratorType": format!("{base}projects/{}/{zscope}/acceleratorTypes/{t}", world.project), "acceleratorCount": a["acceleratorCount"]}));
    }
    if let Some((t, n)) = &mt.1 {
        accels.push(json!({"acceleratorType": format!("{base}projects/{}/{zscope}/acceleratorTypes/{t}", world.project), "acceleratorCount": n}));
    }
    if !accels.is_empty() && props["scheduling"]["onHostMaintenance"] != "TERMINATE" {
        return err(400, "invalid", "Instances with guest accelerators do not support live migration: set scheduling.onHostMaintenance to TERMINATE");
    }
    let Some(nic) = props["networkInterfaces"]
        .as_array()
        .and_then(|a| a.first())
        .cloned()
    else {
        return err(
            400,
            "invalid",
            "Required field 'resource.instanceProperties.networkInterfaces' not specified",
        );
    };
    let sub_url = normalise_ref(
        &base,
        &world.project,
        &format!("regions/{}", world.region),
        "subnetworks",
        nic["subnetwork"].as_str().unwrap_or(""),
    );
    let sub_rel = rel_of(&base, &sub_url).to_string();
    let (sc, sn) = sub_rel.rsplit_once('/').unwrap_or(("", ""));
    let Some(subnet) = hs.get(sc, sn).cloned() else {
        return err(
            404,
            "notFound",
            &format!("The resource '{sub_rel}' was not found"),
        );
    };
    // Further NICs (A3 High: nic1..nic4 for GPU traffic): each on an existing subnetwork of a
    // network no other NIC of the instance uses; with several NICs, one nicType for all.
    let mut extra_nics: Vec<(String, Value, Ipv4Net)> = Vec::new();
    let mut networks_seen = vec![subnet["network"].clone()];
    let all_nics: Vec<Value> = props["networkInterfaces"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for (i, x) in all_nics.iter().enumerate().skip(1) {
        let u = normalise_ref(
            &base,
            &world.project,
            &format!("regions/{}", world.region),
            "subnetworks",
            x["subnetwork"].as_str().unwrap_or(""),
        );
        let r = rel_of(&base, &u).to_string();
        let (c, n) = r.rsplit_once('/').unwrap_or(("", ""));
        let Some(sn) = hs.get(c, n).cloned() else {
            return err(
                404,
                "notFound",
                &format!("The resource '{r}' was not found"),
            );
        };
        if networks_seen.contains(&sn["network"]) {
            return err(400, "invalid", &format!("Invalid value for field 'resource.instanceProperties.networkInterfaces[{i}]': every network interface must be on a different VPC network"));
        }
        networks_seen.push(sn["network"].clone());
        if x["nicType"] != nic["nicType"] {
            return err(400, "invalid", &format!("Invalid value for field 'resource.instanceProperties.networkInterfaces[{i}].nicType': all interfaces of an instance must have the same nicType"));
        }
        let cidr: Ipv4Net = sn["ipCidrRange"].as_str().unwrap_or("").parse().unwrap();
        extra_nics.push((u, sn["network"].clone(), cidr));
    }
    let mut policies = Vec::new();
    for pname in props["resourcePolicies"].as_array().into_iter().flatten() {
        let pn = pname
            .as_str()
            .unwrap_or("")
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        let c = format!(
            "projects/{}/regions/{}/resourcePolicies",
            world.project, world.region
        );
        if hs.get(&c, &pn).is_none() {
            return err(
                404,
                "notFound",
                &format!("The resource '{c}/{pn}' was not found"),
            );
        }
        policies.push(json!(format!("{base}{c}/{pn}")));
    }
    let boot = props["disks"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["boot"] == true))
        .cloned();
    let Some(boot) = boot else {
        return err(
            400,
            "invalid",
            "Invalid value for field 'resource.instanceProperties.disks': a boot disk is required",
        );
    };
    if boot["initializeParams"]["sourceImage"]
        .as_str()
        .is_none_or(str::is_empty)
    {
        return err(400, "invalid", "Required field 'resource.instanceProperties.disks[0].initializeParams.sourceImage' not specified");
    }
    // Quotas: instances beyond what the limits allow fail one by one.
    let u = usage(world, hs);
    let cpus = mt.0 as f64;
    let gpus: f64 = accels
        .iter()
        .map(|a| a["acceleratorCount"].as_f64().unwrap_or(0.0))
        .sum();
    let gpu_m = accels
        .first()
        .and_then(|a| a["acceleratorType"].as_str())
        .map(|t| gpu_metric(t.rsplit('/').next().unwrap_or("")));
    let room =
        |metric: &str, per: f64, limits: &std::collections::BTreeMap<String, f64>| -> usize {
            if per <= 0.0 {
                return usize::MAX;
            }
            match limits.get(metric) {
                Some(l) => ((l - u.get(metric).copied().unwrap_or(0.0)) / per)
                    .floor()
                    .max(0.0) as usize,
                None => usize::MAX,
            }
        };
    let mut allowed = room("CPUS", cpus, &world.region_quotas)
        .min(room("IN_USE_ADDRESSES", 1.0, &world.region_quotas))
        .min(room("INSTANCES", 1.0, &world.region_quotas));
    let mut limiting = "CPUS".to_string();
    if let Some(gm) = &gpu_m {
        let r = room(gm, gpus, &world.region_quotas);
        if r < allowed {
            allowed = r;
            limiting = gm.clone();
        }
        let r = room("GPUS_ALL_REGIONS", gpus, &world.project_quotas);
        if r < allowed {
            allowed = r;
            limiting = "GPUS_ALL_REGIONS".into();
        }
    }
    let mut errors = Vec::new();
    let mut to_create = Vec::new();
    for n in &names {
        if hs.get(&coll, n).is_some() {
            errors.push(json!({"code": "RESOURCE_ALREADY_EXISTS", "location": format!("projects/{}/{coll_rel}/{n}", world.project, coll_rel = format!("zones/{zone}/instances")), "message": format!("The resource '{coll}/{n}' already exists")}));
        } else if !valid_name(n) {
            errors.push(json!({"code": "INVALID_FIELD_VALUE", "message": format!("Invalid value for field 'resource.perInstanceProperties': '{n}'")}));
        } else if let Some(code) = hs.failing(n) {
            errors.push(json!({"code": code, "location": format!("{coll}/{n}"), "message": format!("The zone '{zscope}' does not have enough resources available to fulfill the request for instance '{n}'.")}));
        } else if to_create.len() >= allowed {
            let limit = world
                .region_quotas
                .get(&limiting)
                .or(world.project_quotas.get(&limiting))
                .copied()
                .unwrap_or(0.0);
            errors.push(json!({"code": "QUOTA_EXCEEDED", "location": format!("{coll}/{n}"), "message": format!("Quota '{limiting}' exceeded.  Limit: {limit:.1} in region {}.", world.region)}));
        } else {
            to_create.push(n.clone());
        }
    }
    if to_create.len() < min_count {
        to_create.clear();
    }
    // Allocation of addresses and alias ranges.
    let primary: Ipv4Net = subnet["ipCidrRange"]
        .as_str()
        .unwrap_or("0.0.0.0/32")
        .parse()
        .unwrap();
    let alias = nic["aliasIpRanges"]
        .as_array()
        .and_then(|a| a.first())
        .cloned();
    let mut used_ips: std::collections::HashSet<u32> = Default::default();
    let mut used_alias: std::collections::HashSet<Ipv4Net> = Default::default();
    for (c, items) in hs.collections() {
        if c.ends_with("/instances") {
            for i in items.values() {
                for n in i["networkInterfaces"].as_array().into_iter().flatten() {
                    if n["subnetwork"].as_str() == Some(sub_url.as_str()) {
                        if let Some(ip) = n["networkIP"]
                            .as_str()
                            .and_then(|s| s.parse::<Ipv4Addr>().ok())
                        {
                            used_ips.insert(u32::from(ip));
                        }
                        for a in n["aliasIpRanges"].as_array().into_iter().flatten() {
                            if let Ok(r) = a["ipCidrRange"].as_str().unwrap_or("").parse() {
                                used_alias.insert(r);
                            }
                        }
                    }
                }
            }
        }
    }
    // Addresses taken on the extra NICs' subnetworks.
    let mut extra_used: HashMap<String, std::collections::HashSet<u32>> = HashMap::new();
    for (c, items) in hs.collections() {
        if c.ends_with("/instances") {
            for i in items.values() {
                for n in i["networkInterfaces"].as_array().into_iter().flatten() {
                    if let (Some(sub), Some(ip)) = (
                        n["subnetwork"].as_str(),
                        n["networkIP"]
                            .as_str()
                            .and_then(|s| s.parse::<Ipv4Addr>().ok()),
                    ) {
                        extra_used
                            .entry(sub.to_string())
                            .or_default()
                            .insert(u32::from(ip));
                    }
                }
            }
        }
    }
    let mut created = 0;
    for n in &to_create {
        // Internal address: first free after the reserved network and gateway addresses.
        let mut ip = u32::from(primary.network()) + 2;
        while used_ips.contains(&ip) {
            ip += 1;
        }
        if ip >= u32::from(primary.broadcast()) - 1 {
            errors.push(json!({"code": "IP_SPACE_EXHAUSTED", "location": format!("{coll}/{n}"), "message": format!("IP space of '{sub_rel}' is exhausted.")}));
            continue;
        }
        let mut alias_out = Vec::new();
        if let Some(a) = &alias {
            let range_name = a["subnetworkRangeName"].as_str().unwrap_or("");
            let Some(sr) = subnet["secondaryIpRanges"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["rangeName"] == range_name)
            else {
                return err(400, "invalid", &format!("Invalid value for field 'resource.instanceProperties.networkInterfaces[0].aliasIpRanges[0].subnetworkRangeName': '{range_name}'. Secondary range does not exist in '{sub_rel}'"));
            };
            let range: Ipv4Net = sr["ipCidrRange"].as_str().unwrap_or("").parse().unwrap();
            let Some(prefix) = a["ipCidrRange"]
                .as_str()
                .and_then(|s| s.strip_prefix('/'))
                .and_then(|p| p.parse::<u8>().ok())
            else {
                return err(
                    400,
                    "invalid",
                    "aliasIpRanges[0].ipCidrRange: the fake supports only netmask form '/N'",
                );
            };
            let Some(block) = allocate_block(range, prefix, &used_alias) else {
                errors.push(json!({"code": "IP_SPACE_EXHAUSTED", "location": format!("{coll}/{n}"), "message": format!("Secondary range '{range_name}' has no free /{prefix}")}));
                continue;
            };
            used_alias.insert(block);
            alias_out
                .push(json!({"ipCidrRange": block.to_string(), "subnetworkRangeName": range_name}));
        }
        used_ips.insert(ip);
        let id = hs.next_id();
        let nat = hs.next_nat();
        let self_link = format!("{base}{coll}/{n}");
        let mut access = Vec::new();
        for a in nic["accessConfigs"].as_array().into_iter().flatten() {
            let mut a = a.clone();
            a["natIP"] = json!(nat.to_string());
            a["kind"] = json!("compute#accessConfig");
            access.push(a);
        }
        let disks: Vec<Value> = props["disks"].as_array().into_iter().flatten().enumerate().map(|(i, d)| {
            let dn = if i == 0 { n.clone() } else { format!("{n}-{i}") };
            json!({"kind": "compute#attachedDisk", "type": "PERSISTENT", "mode": "READ_WRITE",
                "source": format!("{base}projects/{}/{zscope}/disks/{dn}", world.project),
                "deviceName": format!("persistent-disk-{i}"), "index": i, "boot": d["boot"], "autoDelete": d["autoDelete"],
                "diskSizeGb": d["initializeParams"]["diskSizeGb"].as_str().unwrap_or("10"), "interface": "SCSI"})
        }).collect();
        // The boot and data disks as resources of their own, as Compute creates them: their
        // type and source image are read back only from here (`disks.list`).
        let dcoll = coll.replace("/instances", "/disks");
        for (i, d) in props["disks"].as_array().into_iter().flatten().enumerate() {
            let dn = if i == 0 {
                n.clone()
            } else {
                format!("{n}-{i}")
            };
            let ip = &d["initializeParams"];
            let dtype = ip["diskType"].as_str().unwrap_or("pd-standard");
            let disk = json!({"kind": "compute#disk", "id": hs.next_id().to_string(), "name": dn,
                "sizeGb": ip["diskSizeGb"].as_str().unwrap_or("10"),
                "type": format!("{base}projects/{}/{zscope}/diskTypes/{}", world.project, dtype.rsplit('/').next().unwrap_or(dtype)),
                "sourceImage": ip["sourceImage"], "labels": ip["labels"], "status": "READY",
                "zone": format!("{base}projects/{}/{zscope}", world.project),
                "users": [format!("{base}{coll}/{n}")], "autoDelete": d["autoDelete"],
                "selfLink": format!("{base}projects/{}/{zscope}/disks/{dn}", world.project)});
            hs.collection(&dcoll).insert(dn, disk);
        }
        let sub_net = subnet["network"].clone();
        let mut nics = vec![
            json!({"kind": "compute#networkInterface", "name": "nic0", "network": sub_net, "subnetwork": sub_url,
            "networkIP": Ipv4Addr::from(ip).to_string(), "accessConfigs": access, "aliasIpRanges": alias_out, "fingerprint": "AAAAAAAAAAA=", "stackType": "IPV4_ONLY", "nicType": nic["nicType"]}),
        ];
        for (k, (su, sn, cidr)) in extra_nics.iter().enumerate() {
            let used = extra_used.entry(su.clone()).or_default();
            let mut xip = u32::from(cidr.network()) + 2;
            while used.contains(&xip) {
                xip += 1;
            }
            used.insert(xip);
            nics.push(json!({"kind": "compute#networkInterface", "name": format!("nic{}", k + 1), "network": sn, "subnetwork": su,
                "networkIP": Ipv4Addr::from(xip).to_string(), "fingerprint": "AAAAAAAAAAA=", "stackType": "IPV4_ONLY", "nicType": all_nics[k + 1]["nicType"]}));
        }
        let inst = json!({
            "kind": "compute#instance", "id": id.to_string(), "name": n, "creationTimestamp": now(),
            "description": props["description"], "tags": props["tags"], "labels": props["labels"],
            "machineType": format!("{base}projects/{}/{zscope}/machineTypes/{mt_name}", world.project),
            "status": "RUNNING", "zone": format!("{base}projects/{}/{zscope}", world.project),
            "canIpForward": false, "metadata": {"kind": "compute#metadata", "fingerprint": "AAAAAAAAAAA=", "items": props["metadata"]["items"]},
            "networkInterfaces": nics, "resourcePolicies": policies,
            "disks": disks, "guestAccelerators": accels, "scheduling": props["scheduling"],
            "selfLink": self_link,
        });
        hs.collection(&coll).insert(n.clone(), inst);
        created += 1;
    }
    let failed = names.len() - created;
    let status = json!({"status": if failed == 0 { "DONE" } else if created == 0 { "ROLLED_BACK" } else { "DONE" },
        "targetVmCount": count, "createdVmCount": created, "failedToCreateVmCount": failed, "deletedVmCount": 0});
    let error = if errors.is_empty() {
        None
    } else {
        Some(json!({"errors": errors}))
    };
    let meta = json!({"perLocationStatus": {format!("zones/{zone}"): status}});
    let target = format!("{base}{coll}");
    (
        200,
        operation(
            hs,
            world,
            &zscope,
            "bulkInsert",
            &target,
            error,
            Some(("instancesBulkInsertOperationMetadata", meta)),
        ),
    )
}

fn add_instances(
    world: &World,
    hs: &mut HandlerState,
    rel: &str,
    params: &HashMap<String, String>,
    body: Value,
) -> Answer {
    let ig = rel.trim_end_matches("/addInstances").to_string();
    let coll = collection_of(rel, "addInstances");
    if hs.get(&coll, &params["instanceGroup"]).is_none() {
        return not_found(&ig);
    }
    let base = hs.base.to_string();
    let mut add = Vec::new();
    for r in body["instances"].as_array().into_iter().flatten() {
        let u = normalise_ref(
            &base,
            &world.project,
            &format!("zones/{}", params["zone"]),
            "instances",
            r["instance"].as_str().unwrap_or(""),
        );
        let ir = rel_of(&base, &u).to_string();
        let (c, n) = ir.rsplit_once('/').unwrap_or(("", ""));
        if hs.get(c, n).is_none() {
            return err(
                404,
                "notFound",
                &format!("The resource '{ir}' was not found"),
            );
        }
        if hs.members().get(&ig).is_some_and(|m| m.contains(&u)) {
            return err(
                400,
                "memberAlreadyExists",
                &format!("The resource '{ir}' is already a member of '{ig}'"),
            );
        }
        add.push(u);
    }
    let members = hs.members().entry(ig.clone()).or_default();
    members.extend(add);
    let size = members.len();
    if let Some(g) = hs.collection(&coll).get_mut(&params["instanceGroup"]) {
        g["size"] = json!(size);
    }
    let target = format!("{base}{ig}");
    (
        200,
        operation(
            hs,
            world,
            &format!("zones/{}", params["zone"]),
            "compute.instanceGroups.addInstances",
            &target,
            None,
            None,
        ),
    )
}

/// JSON merge patch of a stored resource (name and server fields are not patchable).
fn patch(world: &World, hs: &mut HandlerState, rel: &str, body: Value) -> Answer {
    let (coll, name) = rel.rsplit_once('/').unwrap_or((rel, ""));
    let coll = coll.to_string();
    let Some(current) = hs.get(&coll, name).cloned() else {
        return not_found(rel);
    };
    let mut v = current;
    for (k, x) in body.as_object().into_iter().flatten() {
        if matches!(
            k.as_str(),
            "name" | "id" | "selfLink" | "creationTimestamp" | "kind"
        ) {
            if v.get(k) != Some(x) {
                return err(
                    400,
                    "invalid",
                    &format!("Invalid value for field 'resource.{k}': it cannot be changed"),
                );
            }
            continue;
        }
        v[k] = x.clone();
    }
    let url = v["selfLink"].as_str().unwrap_or("").to_string();
    hs.collection(&coll).insert(name.to_string(), v);
    let scope = scope_of(&coll);
    (200, operation(hs, world, &scope, "patch", &url, None, None))
}

/// `instances.getGuestAttributes`: what the instance's guest agent published (set by the test
/// through `Fake::set_guest_attribute`), for `queryPath` `""`, `<namespace>/` or
/// `<namespace>/<key>`, or one `variableKey`. Nothing published under the path is a 404 in the
/// words gcloud matches on ("The resource 'hostkeys/' of type 'Guest Attribute' was not found.").
/// An instance whose metadata lacks `enable-guest-attributes=TRUE` has no agent writing here,
/// so it answers the same 404 (gcloud and k8sforge read the metadata and do not ask). The answer
/// is checked against the schema's `GuestAttributes` message before it is sent.
fn guest_attributes(
    hs: &mut HandlerState,
    rel: &str,
    params: &HashMap<String, String>,
    q: &[(String, String)],
) -> Answer {
    let name = &params["instance"];
    let coll = collection_of(rel, "getGuestAttributes");
    let Some(inst) = hs.get(&coll, name).cloned() else {
        return not_found(&format!("{coll}/{name}"));
    };
    let qget = |k: &str| q.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    let enabled = inst["metadata"]["items"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|i| {
            i["key"] == "enable-guest-attributes"
                && i["value"]
                    .as_str()
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        });
    let attrs = if enabled {
        hs.guest_attributes(name)
    } else {
        vec![]
    };
    let missing = |what: &str| {
        err(
            404,
            "notFound",
            &format!("The resource '{what}' of type 'Guest Attribute' was not found."),
        )
    };
    let self_link = format!("{}{rel}", hs.base);
    let mut v = if let Some(key) = qget("variableKey") {
        match attrs.iter().find(|(n, k, _)| format!("{n}/{k}") == key) {
            Some((_, _, value)) => json!({"kind": "compute#guestAttributes", "variableKey": key,
                "variableValue": value, "selfLink": self_link}),
            None => return missing(&key),
        }
    } else {
        let path = qget("queryPath").unwrap_or_default();
        let (ns, key) = match path.split_once('/') {
            Some((ns, key)) if !ns.is_empty() => (Some(ns.to_string()), Some(key.to_string())),
            None if path.is_empty() => (None, None),
            _ => {
                return err(
                    400,
                    "invalid",
                    &format!("Invalid value for field 'queryPath': '{path}'. Must be empty, '<namespace>/' or '<namespace>/<key>'."),
                )
            }
        };
        let items: Vec<Value> = attrs
            .iter()
            .filter(|(n, k, _)| {
                ns.as_ref().is_none_or(|x| x == n)
                    && key.as_ref().is_none_or(|x| x.is_empty() || x == k)
            })
            .map(|(n, k, value)| json!({"namespace": n, "key": k, "value": value}))
            .collect();
        if items.is_empty() {
            return missing(&path);
        }
        json!({"kind": "compute#guestAttributes", "queryPath": path,
            "queryValue": {"items": items}, "selfLink": self_link})
    };
    if let Err(e) = super::schema::schema().check("GuestAttributes", &v, "response") {
        hs.violation(format!(
            "the fake's own getGuestAttributes answer: {}",
            e.message
        ));
        v = json!({});
    }
    (200, v)
}
