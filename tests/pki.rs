//! PKI end to end against the real `openssl` and `kubectl` binaries: every certificate verifies
//! against its CA and carries exactly the CN, O, usages, EKUs and SANs of its table row; every
//! kubeconfig is accepted by kubectl; re-runs change nothing; `certs check` through the binary.
//!
//! Needs `openssl` and `kubectl` on PATH (Debian: `apt-get install -y openssl kubernetes-client`).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use k8sforge::inventory::{self, Inventory};
use k8sforge::pki::{self, layout, table};
use k8sforge::profile::{self, KeyAlgorithm, Profile};

fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not on PATH; this test needs it (Debian: apt-get install -y openssl kubernetes-client)"
    );
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn load(name: &str, sets: &[&str]) -> (Profile, Inventory) {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let p = profile::load(name, &sets)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .profile;
    let inv = inventory::planned(&p, &BTreeMap::new()).expect("inventory");
    (p, inv)
}

/// The extensions openssl prints for a certificate, section title → comma-separated values.
fn openssl_ext(cert: &Path) -> BTreeMap<String, Vec<String>> {
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-in"])
        .arg(cert)
        .args([
            "-ext",
            "subjectAltName,keyUsage,extendedKeyUsage,basicConstraints",
        ]));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if !line.starts_with(' ') {
            current = line
                .trim_end()
                .trim_end_matches("critical")
                .trim_end()
                .trim_end_matches(':')
                .to_string();
            map.entry(current.clone()).or_default();
        } else {
            map.entry(current.clone())
                .or_default()
                .extend(line.split(',').map(|s| s.trim().to_string()));
        }
    }
    map
}

/// Subject attributes from `openssl x509 -subject -nameopt RFC2253`, e.g. [("CN", "x"), ("O", "y")].
fn openssl_subject(cert: &Path) -> Vec<(String, String)> {
    let out = run(Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
        .arg(cert));
    let s = String::from_utf8_lossy(&out.stdout);
    let s = s.trim().trim_start_matches("subject=");
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn openssl_usage(u: table::KeyUsage) -> &'static str {
    match u {
        table::KeyUsage::DigitalSignature => "Digital Signature",
        table::KeyUsage::KeyEncipherment => "Key Encipherment",
        table::KeyUsage::KeyCertSign => "Certificate Sign",
        table::KeyUsage::CrlSign => "CRL Sign",
    }
}

fn openssl_eku(e: table::Eku) -> &'static str {
    match e {
        table::Eku::ServerAuth => "TLS Web Server Authentication",
        table::Eku::ClientAuth => "TLS Web Client Authentication",
    }
}

fn openssl_san(s: &table::San) -> String {
    match s {
        table::San::Dns(d) => format!("DNS:{d}"),
        table::San::Ip(ip) => format!("IP Address:{ip}"),
    }
}

fn set(v: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    v.into_iter().collect()
}

/// Every certificate verifies with `openssl verify` (with the purpose of its EKUs) and matches
/// its row; its key is the certificate's key.
fn verify_all_certs(p: &Profile, inv: &Inventory, dir: &Path) -> Vec<table::Cert> {
    let pki = layout::pki_dir(dir);
    let certs = table::expand(p, inv);
    for c in &certs {
        let crt = layout::cert_path(&pki, &c.name);
        let ca_file = match c.ca {
            Some(ca) => layout::cert_path(&pki, ca.name()),
            None => crt.clone(),
        };
        let mut verify = Command::new("openssl");
        verify.arg("verify").arg("-CAfile").arg(&ca_file);
        if c.ekus.contains(&table::Eku::ServerAuth) {
            verify.args(["-purpose", "sslserver"]);
        } else if c.ekus.contains(&table::Eku::ClientAuth) {
            verify.args(["-purpose", "sslclient"]);
        }
        let out = run(verify.arg(&crt));
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .ends_with(": OK"),
            "{}: {}",
            c.name,
            String::from_utf8_lossy(&out.stdout)
        );

        let subject = openssl_subject(&crt);
        let cns: Vec<&str> = subject
            .iter()
            .filter(|(k, _)| k == "CN")
            .map(|(_, v)| v.as_str())
            .collect();
        let orgs: BTreeSet<String> = subject
            .iter()
            .filter(|(k, _)| k == "O")
            .map(|(_, v)| v.clone())
            .collect();
        assert_eq!(cns, [c.cn.as_str()], "{}: CN", c.name);
        assert_eq!(orgs, set(c.orgs.clone()), "{}: O", c.name);

        let ext = openssl_ext(&crt);
        let got = |k: &str| set(ext.get(k).cloned().unwrap_or_default());
        assert_eq!(
            got("X509v3 Key Usage"),
            set(c
                .key_usages(p.pki.key_algorithm)
                .into_iter()
                .map(|u| openssl_usage(u).to_string())),
            "{}: key usages",
            c.name
        );
        assert_eq!(
            got("X509v3 Extended Key Usage"),
            set(c.ekus.iter().map(|e| openssl_eku(*e).to_string())),
            "{}: EKUs",
            c.name
        );
        assert_eq!(
            got("X509v3 Subject Alternative Name"),
            set(c.sans.iter().map(openssl_san)),
            "{}: SANs",
            c.name
        );
        let ca_flag = if c.is_ca.is_some() {
            "CA:TRUE"
        } else {
            "CA:FALSE"
        };
        assert!(
            got("X509v3 Basic Constraints").contains(ca_flag),
            "{}: basic constraints {:?}",
            c.name,
            ext.get("X509v3 Basic Constraints")
        );

        // The key on disk belongs to the certificate, and is of the profile's algorithm.
        let from_cert = run(Command::new("openssl")
            .args(["x509", "-noout", "-pubkey", "-in"])
            .arg(&crt))
        .stdout;
        let key = layout::key_path(&pki, &c.name);
        let from_key = run(Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key))
        .stdout;
        assert_eq!(from_cert, from_key, "{}: key does not match", c.name);
        let text = String::from_utf8_lossy(
            &run(Command::new("openssl")
                .args(["pkey", "-noout", "-text", "-in"])
                .arg(&key))
            .stdout,
        )
        .to_string();
        let want = match p.pki.key_algorithm {
            KeyAlgorithm::EcdsaP256 => "ASN1 OID: prime256v1",
            KeyAlgorithm::Rsa2048 => "Private-Key: (2048 bit",
            KeyAlgorithm::Rsa3072 => "Private-Key: (3072 bit",
            KeyAlgorithm::Rsa4096 => "Private-Key: (4096 bit",
        };
        assert!(text.contains(want), "{}: key is not {want}", c.name);
    }
    // The service-account pair: sa.pub is the public half of sa.key.
    let sa_pub = run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(layout::key_path(&pki, layout::SERVICE_ACCOUNT)))
    .stdout;
    assert_eq!(
        sa_pub,
        std::fs::read(layout::service_account_public(&pki)).unwrap()
    );
    certs
}

/// Every kubeconfig is accepted by kubectl and names the right cluster, user, server and
/// credentials.
fn verify_kubeconfigs(p: &Profile, inv: &Inventory, dir: &Path, certs: &[table::Cert]) {
    let pki = layout::pki_dir(dir);
    let b64 = |path: PathBuf| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
    };
    let ca_data = b64(layout::cert_path(&pki, layout::CA));
    let mut seen = BTreeSet::new();
    for c in table::kubeconfig_identities(certs) {
        let file = layout::kubeconfig_path(dir, &c.name);
        let out = run(Command::new("kubectl")
            .args(["config", "view", "--raw", "-o", "json", "--kubeconfig"])
            .arg(&file));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // Only people and tools (admin) use the cluster endpoint; every component dials
        // 127.0.0.1 — its own apiserver on a control plane, the node-local balancer elsewhere.
        let server = match c.name.as_str() {
            layout::ADMIN => inv.api.url(),
            _ => format!("https://127.0.0.1:{}", p.api_server.port),
        };
        assert_eq!(v["clusters"][0]["name"], p.name.as_str(), "{}", c.name);
        assert_eq!(v["clusters"][0]["cluster"]["server"], server.as_str());
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            ca_data.as_str()
        );
        assert_eq!(v["users"][0]["name"], c.cn.as_str());
        assert_eq!(
            v["users"][0]["user"]["client-certificate-data"],
            b64(layout::cert_path(&pki, &c.name)).as_str()
        );
        assert_eq!(
            v["users"][0]["user"]["client-key-data"],
            b64(layout::key_path(&pki, &c.name)).as_str()
        );
        let ctx = v["current-context"].as_str().unwrap();
        let context = v["contexts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == ctx)
            .expect("current context exists");
        assert_eq!(context["context"]["cluster"], p.name.as_str());
        assert_eq!(context["context"]["user"], c.cn.as_str());
        seen.insert(c.name.clone());
    }
    let mut want: BTreeSet<String> = [
        "admin",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
    ]
    .map(String::from)
    .into();
    want.extend(inv.nodes.iter().map(|n| layout::kubelet(&n.name)));
    assert_eq!(seen, want);
}

/// Spot checks independent of the table, so a wrong row cannot pass by matching itself.
fn spot_checks(p: &Profile, inv: &Inventory, certs: &[table::Cert]) {
    let by = |n: &str| {
        certs
            .iter()
            .find(|c| c.name == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    assert_eq!(by("admin").orgs, ["system:masters"]);
    assert_eq!(by("kube-proxy").cn, "system:kube-proxy");
    assert_eq!(by("kube-scheduler").cn, "system:kube-scheduler");
    assert_eq!(
        by("kube-controller-manager").cn,
        "system:kube-controller-manager"
    );
    for n in &inv.nodes {
        let k = by(&format!("kubelet-{}", n.name));
        assert_eq!(k.cn, format!("system:node:{}", n.name));
        assert_eq!(k.orgs, ["system:nodes"]);
        assert!(k.sans.contains(&table::San::Dns(n.name.clone())));
        assert!(k.sans.contains(&table::San::Ip(n.internal_ip.into())));
        assert_eq!(k.ekus, [table::Eku::ServerAuth, table::Eku::ClientAuth]);
    }
    let api = by("apiserver");
    let sans: BTreeSet<String> = api.sans.iter().map(|s| s.to_string()).collect();
    for want in [
        "IP:127.0.0.1".to_string(),
        format!("IP:{}", p.api_service_ip()),
        "DNS:kubernetes".into(),
        "DNS:kubernetes.default".into(),
        "DNS:kubernetes.default.svc".into(),
        format!("DNS:kubernetes.default.svc.{}", p.kubernetes.cluster_domain),
    ] {
        assert!(sans.contains(&want), "apiserver lacks {want}: {sans:?}");
    }
    let etcd_members: Vec<_> = inv.with_role(inventory::Role::Etcd).collect();
    assert_eq!(etcd_members.len() as u32, p.etcd_members());
    for n in inv.with_role(inventory::Role::ControlPlane) {
        assert!(sans.contains(&format!("DNS:{}", n.name)));
        assert!(sans.contains(&format!("IP:{}", n.internal_ip)));
    }
    for n in etcd_members {
        for kind in ["server", "peer"] {
            let e = by(&format!("etcd/{kind}-{}", n.name));
            assert!(e.sans.contains(&table::San::Dns("localhost".into())));
            assert!(e.sans.contains(&table::San::Ip([127, 0, 0, 1].into())));
            assert!(e.sans.contains(&table::San::Ip(n.internal_ip.into())));
        }
    }
}

fn full_check(name: &str, sets: &[&str]) {
    require("openssl");
    require("kubectl");
    let (p, inv) = load(name, sets);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(&p.name);
    let report = pki::ensure(&p, &inv, &dir).unwrap();
    let certs = verify_all_certs(&p, &inv, &dir);
    assert_eq!(
        report.issued.len(),
        certs.len() + 1,
        "every cert + sa issued"
    );
    assert_eq!(report.reused, 0);
    spot_checks(&p, &inv, &certs);
    verify_kubeconfigs(&p, &inv, &dir, &certs);
    let again = pki::ensure(&p, &inv, &dir).unwrap();
    assert!(again.issued.is_empty(), "re-issued {:?}", again.issued);
    assert_eq!(again.reused, certs.len() + 1);
}

#[test]
fn local_3_certificates_and_kubeconfigs() {
    full_check("local-3", &[]);
}

#[test]
fn local_ha_certificates_and_kubeconfigs() {
    full_check("local-ha", &[]);
}

#[test]
fn gpu_dev_rsa_certificates_and_kubeconfigs() {
    full_check(
        "gpu-dev",
        &[
            "pki.keyAlgorithm=rsa2048",
            "apiServer.extraSANs=[api.example.test, 192.0.2.7]",
        ],
    );
}

/// Path → (content, mtime, mode) of every file and directory under `dir`.
type Snapshot = BTreeMap<PathBuf, (Vec<u8>, SystemTime, u32)>;

fn snapshot(dir: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(e.path(), (Vec::new(), SystemTime::UNIX_EPOCH, mode));
                stack.push(e.path());
            } else {
                out.insert(
                    e.path(),
                    (
                        std::fs::read(e.path()).unwrap(),
                        meta.modified().unwrap(),
                        mode,
                    ),
                );
            }
        }
    }
    out
}

/// Paths whose content, mtime or mode differ between two snapshots, relative to `dir`.
fn changed(dir: &Path, a: &Snapshot, b: &Snapshot) -> BTreeSet<String> {
    let keys: BTreeSet<&PathBuf> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| k.strip_prefix(dir).unwrap().display().to_string())
        .collect()
}

#[test]
fn rerun_reuses_everything_and_reissues_only_what_changed() {
    let (mut p, inv) = load("local-ha", &[]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(&p.name);
    let first = pki::ensure(&p, &inv, &dir).unwrap();
    let total = table::expand(&p, &inv).len() + 1;
    assert_eq!(first.issued.len(), total);

    // Modes: directories 0700, keys/kubeconfigs/encryption config 0600, certificates 0644.
    let s1 = snapshot(&dir);
    for (path, (_, _, mode)) in &s1 {
        let name = path.to_string_lossy();
        let want = if path.is_dir() {
            0o700
        } else if name.ends_with(".crt") || name.ends_with("sa.pub") {
            0o644
        } else {
            0o600
        };
        assert_eq!(*mode, want, "{name}: mode {mode:o}");
    }
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // Second run: nothing issued, nothing written, every file byte-identical with its mtime.
    let second = pki::ensure(&p, &inv, &dir).unwrap();
    assert!(second.issued.is_empty(), "re-issued {:?}", second.issued);
    assert!(second.written.is_empty(), "rewrote {:?}", second.written);
    assert_eq!(second.reused, total);
    assert_eq!(changed(&dir, &s1, &snapshot(&dir)), BTreeSet::new());

    // Deleting one certificate re-issues only that one (and its kubeconfig, which embeds it).
    std::fs::remove_file(dir.join("pki/kubelet-worker-2.crt")).unwrap();
    let third = pki::ensure(&p, &inv, &dir).unwrap();
    assert_eq!(third.issued, ["kubelet-worker-2"]);
    assert_eq!(third.written, ["kubeconfigs/kubelet-worker-2.kubeconfig"]);
    let s3 = snapshot(&dir);
    assert_eq!(
        changed(&dir, &s1, &s3),
        set([
            "pki/kubelet-worker-2.crt".to_string(),
            "pki/kubelet-worker-2.key".into(),
            "kubeconfigs/kubelet-worker-2.kubeconfig".into(),
        ])
    );

    // A new SAN in the profile re-issues the apiserver certificate only.
    p.api_server.extra_sans.push("api.example.test".into());
    let fourth = pki::ensure(&p, &inv, &dir).unwrap();
    assert_eq!(fourth.issued, ["apiserver"]);
    assert!(fourth.written.is_empty());

    // A corrupt certificate is re-issued; so is one whose key file holds another key.
    std::fs::write(dir.join("pki/front-proxy-client.crt"), b"garbage").unwrap();
    std::fs::copy(dir.join("pki/admin.key"), dir.join("pki/kube-proxy.key")).unwrap();
    let fifth = pki::ensure(&p, &inv, &dir).unwrap();
    assert_eq!(
        set(fifth.issued.clone()),
        set(["front-proxy-client".to_string(), "kube-proxy".into()])
    );

    // A re-issued etcd CA re-issues every certificate it signed, and nothing else.
    let s5 = snapshot(&dir);
    std::fs::remove_file(dir.join("pki/etcd/ca.key")).unwrap();
    let sixth = pki::ensure(&p, &inv, &dir).unwrap();
    let mut want: BTreeSet<String> = [
        "etcd/ca",
        "apiserver-etcd-client",
        "etcd/healthcheck-client",
    ]
    .map(String::from)
    .into();
    for n in inv.with_role(inventory::Role::Etcd) {
        want.insert(layout::etcd_server(&n.name));
        want.insert(layout::etcd_peer(&n.name));
    }
    assert_eq!(set(sixth.issued.clone()), want);
    let touched = changed(&dir, &s5, &snapshot(&dir));
    assert!(
        touched
            .iter()
            .all(|f| f.starts_with("pki/etcd/") || f.starts_with("pki/apiserver-etcd-client.")),
        "{touched:?}"
    );
    verify_all_certs(&p, &inv, &dir);
}

#[test]
fn encryption_config_keeps_its_key_and_refuses_a_broken_file() {
    let (p, inv) = load("local-3", &[]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(&p.name);
    pki::ensure(&p, &inv, &dir).unwrap();
    let path = layout::encryption_config_path(&dir);
    let text = std::fs::read_to_string(&path).unwrap();
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(v["apiVersion"].as_str(), Some("apiserver.config.k8s.io/v1"));
    assert_eq!(v["kind"].as_str(), Some("EncryptionConfiguration"));
    let r = &v["resources"][0];
    assert_eq!(r["resources"][0].as_str(), Some("secrets"));
    let secret = r["providers"][0]["secretbox"]["keys"][0]["secret"]
        .as_str()
        .unwrap();
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret)
        .unwrap();
    assert_eq!(key.len(), 32);
    assert_ne!(key, vec![0u8; 32]);
    assert!(r["providers"][1]["identity"].is_mapping());

    // A different cluster gets a different key.
    let other = tmp.path().join("other");
    pki::ensure(&p, &inv, &other).unwrap();
    assert_ne!(
        std::fs::read(layout::encryption_config_path(&other)).unwrap(),
        text.as_bytes()
    );

    // A damaged file is never silently replaced by a new key.
    std::fs::write(&path, "apiVersion: nope\n").unwrap();
    let err = pki::ensure(&p, &inv, &dir).unwrap_err().to_string();
    assert!(
        err.contains("encryption-config.yaml") && err.contains("refusing"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "apiVersion: nope\n"
    );
}

#[test]
fn bad_extra_san_is_rejected_before_anything_is_written() {
    let (mut p, inv) = load("local-3", &[]);
    p.api_server.extra_sans.push("not a name!".into());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(&p.name);
    let err = pki::ensure(&p, &inv, &dir).unwrap_err().to_string();
    assert!(
        err.contains("not a name!") && err.contains("apiServer.extraSANs"),
        "{err}"
    );
    assert!(!dir.exists(), "nothing may be written on bad input");
}

fn k8sforge(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_k8sforge"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("K8SFORGE_HOME")
        .output()
        .unwrap()
}

#[test]
fn certs_check_through_the_binary() {
    let (p, inv) = load("local-3", &[]);
    let home = tempfile::tempdir().unwrap();

    // No PKI yet: a clear error, non-zero.
    let out = k8sforge(home.path(), &["certs", "check", "--profile", "local-3"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("local-3") && err.contains("k8sforge plan"),
        "{err}"
    );

    // `plan` builds the PKI (and the bundle); a second plan issues nothing.
    for run in 0..2 {
        let out = k8sforge(
            home.path(),
            &["plan", "--profile", "local-3", "--output", "json"],
        );
        assert!(
            out.status.success(),
            "plan: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let issued = v["certificates_issued"].as_array().unwrap().len();
        if run == 1 {
            assert_eq!(issued, 0, "{v}");
        } else {
            assert!(issued > 0, "{v}");
        }
    }
    let certs = table::expand(&p, &inv);

    let out = k8sforge(home.path(), &["certs", "check", "--profile", "local-3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    for col in [
        "NAME",
        "SUBJECT",
        "SANS",
        "ISSUER",
        "NOT AFTER",
        "DAYS LEFT",
        "STATUS",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), certs.len());
    for (row, c) in rows.iter().zip(&certs) {
        assert!(row.starts_with(&format!("{} ", c.name)), "{row}");
        assert!(row.contains(&format!("CN={}", c.cn)), "{row}");
        assert!(row.trim_end().ends_with(" ok"), "{row}");
    }
    let api = rows.iter().find(|r| r.starts_with("apiserver ")).unwrap();
    assert!(
        api.contains("DNS:kubernetes.default.svc.cluster.local"),
        "{api}"
    );
    assert!(api.contains("CN=kubernetes-ca"), "{api}");

    let out = k8sforge(
        home.path(),
        &["certs", "check", "--profile", "local-3", "--output", "json"],
    );
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cluster"], "local-3");
    assert_eq!(v["ok"], true);
    let list = v["certificates"].as_array().unwrap();
    assert_eq!(list.len(), certs.len());
    for (j, c) in list.iter().zip(&certs) {
        assert_eq!(j["name"], c.name.as_str());
        assert_eq!(j["status"], "ok");
        let days = j["daysLeft"].as_i64().unwrap();
        let want = if c.is_ca.is_some() { 3649 } else { 364 };
        assert!(days == want || days == want + 1, "{}: {days}", c.name);
        assert!(j["notAfter"].as_str().unwrap().len() >= 20);
        assert!(j["issuer"].as_str().unwrap().contains("CN="));
        assert!(j.get("problem").is_none(), "{j}");
    }

    // Certificates live 365 days: a 400-day window flags them, for cron.
    let out = k8sforge(
        home.path(),
        &[
            "certs",
            "check",
            "--profile",
            "local-3",
            "--warn-days",
            "400",
            "--output",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let expiring = v["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "expiring")
        .count();
    assert_eq!(expiring, certs.iter().filter(|c| c.is_ca.is_none()).count());

    // A deleted certificate shows as missing and fails the check.
    std::fs::remove_file(home.path().join("local-3/pki/kube-proxy.crt")).unwrap();
    let out = k8sforge(home.path(), &["certs", "check", "--profile", "local-3"]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    let row = text.lines().find(|l| l.starts_with("kube-proxy ")).unwrap();
    assert!(row.trim_end().ends_with("missing"), "{row}");

    // A key that is not the certificate's, and a certificate the table does not know (a removed
    // node's), are both shown.
    let pki_dir = home.path().join("local-3/pki");
    std::fs::copy(
        pki_dir.join("admin.key"),
        pki_dir.join("kube-scheduler.key"),
    )
    .unwrap();
    std::fs::copy(
        pki_dir.join("kubelet-worker-1.crt"),
        pki_dir.join("kubelet-gone.crt"),
    )
    .unwrap();
    let out = k8sforge(
        home.path(),
        &["certs", "check", "--profile", "local-3", "--output", "json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let find = |n: &str| {
        v["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("{n} not listed"))
            .clone()
    };
    assert_eq!(
        find("kube-scheduler")["problem"],
        "key does not match the certificate"
    );
    let gone = find("kubelet-gone");
    assert_eq!(gone["status"], "ok");
    assert_eq!(
        gone["problem"],
        "not in the certificate table of this profile"
    );
}

/// `plan`/`up` never renew a certificate for nearing its expiry (that restarts what uses it, all
/// at once): they keep every file and report what is due, with the command that renews it.
#[test]
fn certificates_near_expiry_are_kept_and_reported_not_renewed() {
    let (p, inv) = load("local-3", &[]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(&p.name);
    let now = time::OffsetDateTime::now_utc();
    pki::ensure_at(&p, &inv, &dir, now).unwrap();
    let before = snapshot(&dir);

    // 340 days into 365-day leaves: every leaf is inside its 30-day window; the 10-year CAs are not.
    let later = pki::ensure_at(&p, &inv, &dir, now + time::Duration::days(340)).unwrap();
    assert!(later.issued.is_empty(), "renewed {:?}", later.issued);
    assert!(later.written.is_empty(), "rewrote {:?}", later.written);
    assert_eq!(changed(&dir, &before, &snapshot(&dir)), BTreeSet::new());
    let leaves = table::expand(&p, &inv)
        .into_iter()
        .filter(|c| c.is_ca.is_none())
        .count();
    assert_eq!(later.due.len(), leaves);
    assert!(later.due.iter().all(|d| !d.is_ca && d.days_left == 24));
    let warning = later.due_warning("local-3").unwrap();
    assert!(warning.contains("were NOT renewed"), "{warning}");
    assert!(
        warning.contains("k8sforge certs rotate --profile local-3 --within 30d"),
        "{warning}"
    );

    // Past the leaves' expiry and inside the CAs' window: still nothing issued; the CAs are
    // named with their own command.
    let ca_due = pki::ensure_at(&p, &inv, &dir, now + time::Duration::days(3640)).unwrap();
    assert!(ca_due.issued.is_empty(), "renewed {:?}", ca_due.issued);
    assert_eq!(changed(&dir, &before, &snapshot(&dir)), BTreeSet::new());
    assert_eq!(ca_due.due.iter().filter(|d| d.is_ca).count(), 3);
    let warning = ca_due.due_warning("local-3").unwrap();
    assert!(warning.contains("(EXPIRED)"), "{warning}");
    assert!(
        warning.contains("k8sforge certs rotate --profile local-3 --ca"),
        "{warning}"
    );
    // Nothing due today.
    assert_eq!(pki::ensure(&p, &inv, &dir).unwrap().due_warning("x"), None);
}
