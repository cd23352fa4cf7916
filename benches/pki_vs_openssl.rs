//! PKI of `gpu-1000` (3 CAs, every certificate, key, kubeconfig and the encryption config,
//! written to disk) by `k8sforge::pki::ensure`, against a shell loop of `openssl` commands that
//! produces the same certificates (ECDSA P-256 key, CSR, signed by the CA with the same
//! subject and extensions) and the same kubeconfigs, measured side by side in one run.
//!
//!     cargo bench --bench pki_vs_openssl
//!
//! Environment: `PKI_BENCH_OPENSSL_SAMPLE=N` times only the first N certificates of the openssl
//! loop and extrapolates (said so in the output); default: all of them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8sforge::inventory::{self, Inventory};
use k8sforge::pki::{self, layout, table};
use k8sforge::profile::{self, Profile};

fn main() {
    // cargo bench passes `--bench`; nothing to parse.
    let loaded = profile::load("gpu-1000", &[]).expect("gpu-1000 profile");
    let p = loaded.profile;
    let inv = inventory::planned(&p, &BTreeMap::new()).expect("inventory");
    let certs = table::expand(&p, &inv);
    let kubeconfigs = table::kubeconfig_identities(&certs).count();
    let root = tempfile::Builder::new()
        .prefix("pki-bench-")
        .tempdir_in(
            std::env::var_os("PKI_BENCH_DIR").unwrap_or_else(|| std::env::temp_dir().into()),
        )
        .expect("temp dir");
    println!(
        "gpu-1000: {} nodes, {} certificates (+ service-account key), {} kubeconfigs; rayon threads: {}; dir {}",
        inv.nodes.len(),
        certs.len(),
        kubeconfigs,
        rayon::current_num_threads(),
        root.path().display()
    );

    if std::env::var_os("PKI_BENCH_TRACE").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter("k8sforge=debug")
            .with_writer(std::io::stderr)
            .init();
    }

    // k8sforge: three fresh runs now and three after the openssl loop (the machine is shared,
    // so load changes during the run); wall time median and CPU time (user + system) median.
    let mut fresh: Vec<(Duration, Duration)> = Vec::new();
    let run_ours = |i: usize, fresh: &mut Vec<(Duration, Duration)>| {
        let dir = root.path().join(format!("k8sforge-{i}"));
        let cpu = cpu_self();
        let t = Instant::now();
        let report = pki::ensure(&p, &inv, &dir).expect("ensure");
        fresh.push((t.elapsed(), cpu_self() - cpu));
        assert_eq!(report.issued.len(), certs.len() + 1);
        assert_eq!(report.written.len(), kubeconfigs + 1);
    };
    for i in 0..3 {
        run_ours(i, &mut fresh);
    }
    let t = Instant::now();
    let again = pki::ensure(&p, &inv, &root.path().join("k8sforge-0")).expect("re-run");
    let rerun = t.elapsed();
    assert!(again.issued.is_empty() && again.written.is_empty());
    println!(
        "k8sforge pki::ensure, re-run (verify + reuse all): {:.3} s",
        secs(rerun)
    );

    // openssl: a generated shell script, one block per certificate, then one per kubeconfig.
    let sample: Option<usize> = std::env::var("PKI_BENCH_OPENSSL_SAMPLE")
        .ok()
        .and_then(|s| s.parse().ok());
    let leaves: Vec<&table::Cert> = certs.iter().filter(|c| c.is_ca.is_none()).collect();
    let n_leaves = sample.unwrap_or(leaves.len()).min(leaves.len());
    let odir = root.path().join("openssl");
    std::fs::create_dir_all(odir.join("pki/etcd")).expect("mkdir");
    std::fs::create_dir_all(odir.join("kubeconfigs")).expect("mkdir");
    let script = openssl_script(&p, &inv, &certs, &leaves[..n_leaves]);
    let script_path = odir.join("run.sh");
    std::fs::write(&script_path, script).expect("script");
    let children_before = cpu_children();
    let t = Instant::now();
    let out = Command::new("bash")
        .arg(&script_path)
        .current_dir(&odir)
        .output()
        .expect("bash");
    let total = t.elapsed();
    let openssl_cpu = cpu_children() - children_before;
    assert!(
        out.status.success(),
        "openssl loop failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 3..6 {
        run_ours(i, &mut fresh);
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2
    };
    let ours = median(fresh.iter().map(|f| f.0).collect());
    let ours_cpu = median(fresh.iter().map(|f| f.1).collect());
    println!(
        "k8sforge pki::ensure, fresh, 6 runs: wall median {:.3} s ({}), CPU median {:.3} s",
        secs(ours),
        fresh
            .iter()
            .map(|d| format!("{:.3}", secs(d.0)))
            .collect::<Vec<_>>()
            .join(", "),
        secs(ours_cpu)
    );
    // The script prints the nanoseconds spent on certificates and on kubeconfigs.
    let times: Vec<u128> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let (cert_ns, kc_ns) = (times[0], times[1]);
    let count_crt = |d: &Path| {
        std::fs::read_dir(d)
            .map(|r| {
                r.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "crt"))
                    .count()
            })
            .unwrap_or(0)
    };
    let made = count_crt(&odir.join("pki")) + count_crt(&odir.join("pki/etcd"));
    assert_eq!(made, n_leaves + 3, "openssl made every certificate");
    sanity_check(&odir, &leaves[..n_leaves]);
    let kc_done = leaves[..n_leaves]
        .iter()
        .filter(|c| c.kubeconfig.is_some())
        .count();
    let per_cert = Duration::from_nanos((cert_ns / (n_leaves as u128 + 3)) as u64);
    let per_kc = Duration::from_nanos((kc_ns / kc_done.max(1) as u128) as u64);
    let full_certs = per_cert * (certs.len() as u32);
    let full_kc = per_kc * (kubeconfigs as u32);
    let openssl_total = full_certs + full_kc;
    println!(
        "openssl loop: {} of {} certificates made, {:.1} ms per certificate, {:.1} ms per kubeconfig; script wall {:.3} s",
        made,
        certs.len(),
        per_cert.as_secs_f64() * 1e3,
        per_kc.as_secs_f64() * 1e3,
        secs(total)
    );
    if n_leaves < leaves.len() {
        println!(
            "openssl loop EXTRAPOLATED from a sample of {} certificates to all {}: certificates {:.1} s + kubeconfigs {:.1} s",
            n_leaves + 3,
            certs.len(),
            secs(full_certs),
            secs(full_kc)
        );
    } else {
        println!(
            "openssl loop, measured in full: certificates {:.1} s + kubeconfigs {:.1} s = {:.1} s",
            secs(full_certs),
            secs(full_kc),
            secs(openssl_total)
        );
    }
    let scale = if n_leaves < leaves.len() {
        secs(openssl_total) / secs(total)
    } else {
        1.0
    };
    let openssl_cpu = secs(openssl_cpu) * scale;
    println!(
        "openssl loop CPU (user + system of every child process){}: {:.1} s",
        if scale != 1.0 { ", extrapolated" } else { "" },
        openssl_cpu
    );
    println!(
        "RESULT gpu-1000 PKI: wall: k8sforge {:.3} s vs openssl {:.1} s => {:.0}x faster (certificates alone: {:.0}x); CPU: k8sforge {:.3} s vs openssl {:.1} s => {:.0}x less",
        secs(ours),
        secs(openssl_total),
        secs(openssl_total) / secs(ours),
        secs(full_certs) / secs(ours),
        secs(ours_cpu),
        openssl_cpu,
        openssl_cpu / secs(ours_cpu)
    );
}

fn rusage(who: libc::c_int) -> Duration {
    // SAFETY: getrusage fills the zeroed struct we pass and reads nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// User + system time of this process (all threads) so far.
fn cpu_self() -> Duration {
    rusage(libc::RUSAGE_SELF)
}

/// User + system time of waited-for children so far.
fn cpu_children() -> Duration {
    rusage(libc::RUSAGE_CHILDREN)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn openssl_ext(c: &table::Cert, alg: k8sforge::profile::KeyAlgorithm) -> String {
    let ku: Vec<&str> = c
        .key_usages(alg)
        .into_iter()
        .map(|u| match u {
            table::KeyUsage::DigitalSignature => "digitalSignature",
            table::KeyUsage::KeyEncipherment => "keyEncipherment",
            table::KeyUsage::KeyCertSign => "keyCertSign",
            table::KeyUsage::CrlSign => "cRLSign",
        })
        .collect();
    let eku: Vec<&str> = c
        .ekus
        .iter()
        .map(|e| match e {
            table::Eku::ServerAuth => "serverAuth",
            table::Eku::ClientAuth => "clientAuth",
        })
        .collect();
    let mut s = String::new();
    if c.is_ca.is_some() {
        s.push_str("basicConstraints=critical,CA:TRUE,pathlen:0\n");
    } else {
        s.push_str("basicConstraints=critical,CA:FALSE\nauthorityKeyIdentifier=keyid\n");
    }
    s.push_str("subjectKeyIdentifier=hash\n");
    let _ = writeln!(s, "keyUsage=critical,{}", ku.join(","));
    if !eku.is_empty() {
        let _ = writeln!(s, "extendedKeyUsage={}", eku.join(","));
    }
    if !c.sans.is_empty() {
        let sans: Vec<String> = c
            .sans
            .iter()
            .map(|x| match x {
                table::San::Dns(d) => format!("DNS:{d}"),
                table::San::Ip(ip) => format!("IP:{ip}"),
            })
            .collect();
        let _ = writeln!(s, "subjectAltName={}", sans.join(","));
    }
    s
}

fn subj(c: &table::Cert) -> String {
    let mut s = String::new();
    for o in &c.orgs {
        let _ = write!(s, "/O={o}");
    }
    let _ = write!(s, "/CN={}", c.cn);
    s
}

fn openssl_script(
    p: &Profile,
    inv: &Inventory,
    certs: &[table::Cert],
    leaves: &[&table::Cert],
) -> String {
    let alg = p.pki.key_algorithm;
    let mut s = String::from("set -eu\numask 077\nt0=$(date +%s%N)\n");
    for c in certs.iter().filter(|c| c.is_ca.is_some()) {
        let n = &c.name;
        let _ = writeln!(
            s,
            "printf '%s' '{ext}' > ext.cnf\n\
             openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out pki/{n}.key 2>/dev/null\n\
             openssl req -x509 -new -key pki/{n}.key -subj '{subj}' -days {days} -extensions v3 -config <(printf '[req]\\ndistinguished_name=dn\\n[dn]\\n[v3]\\n'; cat ext.cnf) -out pki/{n}.crt\n\
             chmod 644 pki/{n}.crt",
            ext = openssl_ext(c, alg),
            subj = subj(c),
            days = p.pki.ca_validity_days,
        );
    }
    for (i, c) in leaves.iter().enumerate() {
        let n = &c.name;
        let ca = c.ca.map(|x| x.name()).unwrap_or(layout::CA);
        let _ = writeln!(
            s,
            "printf '%s' '{ext}' > ext.cnf\n\
             openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out pki/{n}.key 2>/dev/null\n\
             openssl req -new -key pki/{n}.key -subj '{subj}' -out csr.pem\n\
             openssl x509 -req -in csr.pem -CA pki/{ca}.crt -CAkey pki/{ca}.key -set_serial 0x{serial:x} -days {days} -extfile ext.cnf -out pki/{n}.crt 2>/dev/null\n\
             chmod 644 pki/{n}.crt",
            ext = openssl_ext(c, alg),
            subj = subj(c),
            serial = 0x4000_0000_0000_0000u64 + i as u64 * 7919,
            days = p.pki.cert_validity_days,
        );
    }
    s.push_str("t1=$(date +%s%N)\nca=$(base64 -w0 pki/ca.crt)\n");
    for c in leaves.iter().filter(|c| c.kubeconfig.is_some()) {
        let n = &c.name;
        let server = match c.kubeconfig {
            Some(table::KubeconfigServer::LocalApiServer) => {
                format!("https://127.0.0.1:{}", p.api_server.port)
            }
            _ => inv.api.url(),
        };
        let _ = writeln!(
            s,
            "crt=$(base64 -w0 pki/{n}.crt); key=$(base64 -w0 pki/{n}.key)\n\
             cat > kubeconfigs/{n}.kubeconfig <<EOF\n\
             apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    certificate-authority-data: $ca\n    server: {server}\n\
             users:\n- name: {user}\n  user:\n    client-certificate-data: $crt\n    client-key-data: $key\n\
             contexts:\n- name: {user}@{cluster}\n  context:\n    cluster: {cluster}\n    user: {user}\ncurrent-context: {user}@{cluster}\nEOF",
            cluster = p.name,
            user = c.cn,
        );
    }
    s.push_str("t2=$(date +%s%N)\necho $((t1-t0)) $((t2-t1))\n");
    s
}

/// The openssl side really made valid certificates: verify the first and last against their CA.
fn sanity_check(dir: &Path, leaves: &[&table::Cert]) {
    for c in [leaves.first(), leaves.last()].into_iter().flatten() {
        let ca = c.ca.map(|x| x.name()).unwrap_or(layout::CA);
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(["verify", "-CAfile"])
            .arg(format!("pki/{ca}.crt"))
            .arg(format!("pki/{}.crt", c.name))
            .output()
            .expect("openssl verify");
        assert!(
            out.status.success(),
            "openssl-made {} does not verify: {}",
            c.name,
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
