//! k8sforge against `ansible-playbook`: the same worker bundle (containerd, runc, CNI plugins
//! from the test mirror, 3 config files, one systemd unit) pushed to the same real nodes, then
//! pushed again with nothing changed. Both sides start from the same wiped nodes.
//!
//! Needs a provisioned cluster (e.g. the local provider's nspawn nodes), root, and
//! `ansible-playbook` on PATH (ansible-core from PyPI; the bench skips with one line without it):
//!
//!   export K8SFORGE_HOME=/tmp/ab-home
//!   P="--profile local-3 --set name=ab50 --set network.nodeCIDR=198.19.150.0/24 --set workers[0].count=49"
//!   k8sforge up $P --only provision
//!   K8SFORGE_BENCH_CLUSTER_DIR=/tmp/ab-home/ab50 cargo bench --profile dev --bench push_vs_ansible
//!   k8sforge teardown $P
//!
//! Ansible runs its modules with Python on the node; the local provider's node image has none,
//! so an untimed setup step copies the host's Debian python3.11 (same suite as the nodes) onto
//! every node that lacks it. Env: K8SFORGE_BENCH_FORKS (default 50: ansible forks and
//! k8sforge concurrency).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8sforge::artifacts::{self, ArtifactSource, Component, Mirror};
use k8sforge::inventory::{Inventory, Node};
use k8sforge::remote::{Executor, ExecutorOptions, NodePlan, SyncFile};
use k8sforge::render::bundle::BundleFile;

const UNIT: &str = "k8sforge-bench.service";
const UNIT_PATH: &str = "/etc/systemd/system/k8sforge-bench.service";
const UNIT_BODY: &str = "[Unit]\nDescription=k8sforge push bench\n\n[Service]\n\
ExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n";
/// Debian packages whose files make a working python3 for ansible's modules on the nodes.
const PY_PKGS: &[&str] = &[
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "python3-minimal",
    "python3",
    "libexpat1",
    "libffi8",
    "media-types",
];
const DIGEST_CACHE: &str = "/var/lib/k8sforge/digests";

/// One file of the push, as both tools see it.
struct PushFile {
    path: String,
    mode: u32,
    /// Local source (artifacts: the prepared file; configs: written per node for ansible).
    local: PathBuf,
    sync: SyncFile,
}

fn main() {
    let Some(cluster) = std::env::var_os("K8SFORGE_BENCH_CLUSTER_DIR").map(PathBuf::from) else {
        println!(
            "push_vs_ansible: skipped: set K8SFORGE_BENCH_CLUSTER_DIR to a provisioned cluster dir"
        );
        return;
    };
    if Command::new("ansible-playbook")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        println!(
            "push_vs_ansible: skipped: ansible-playbook not on PATH (pip install ansible-core)"
        );
        return;
    }
    let forks: usize = std::env::var("K8SFORGE_BENCH_FORKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let inv: Inventory = k8sforge::state::load_state_at(&cluster.join("state.json"))
        .unwrap_or_else(|e| panic!("{e}"))
        .inventory
        .unwrap_or_else(|| panic!("{} has no inventory", cluster.display()));
    let key = cluster.join("ssh/id_ed25519");
    let known_hosts = cluster.join("known_hosts");
    let work = tempfile::tempdir().unwrap();

    // The same files as benches/remote_push.rs, plus the unit.
    let mirror = k8sforge_testkit::mirror::build(&k8sforge_testkit::mirror::default_cache_dir())
        .unwrap_or_else(|e| panic!("test mirror: {e}"));
    let src = ArtifactSource {
        mirror: Mirror::Dir(mirror.root.clone()),
        trust_mirror_checksums: true,
    };
    let release = artifacts::release(artifacts::DEFAULT_KUBERNETES_VERSION).unwrap();
    let prepared = artifacts::prepare(
        work.path(),
        release,
        &src,
        &[
            Component::Containerd,
            Component::Runc,
            Component::CniPlugins,
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let installed: Vec<_> = prepared.into_iter().flat_map(|(_, f)| f).collect();
    let bytes_per_node: u64 = installed
        .iter()
        .map(|f| std::fs::metadata(&f.local).map(|m| m.len()).unwrap_or(0))
        .sum();

    let mut files_of: BTreeMap<String, Vec<PushFile>> = BTreeMap::new();
    for (i, node) in inv.nodes.iter().enumerate() {
        let mut files: Vec<PushFile> = installed
            .iter()
            .map(|f| PushFile {
                path: f.path.clone(),
                mode: f.mode,
                local: f.local.clone(),
                sync: SyncFile::from_installed(f, &[]),
            })
            .collect();
        let cfg_dir = work.path().join("files").join(&node.name);
        std::fs::create_dir_all(&cfg_dir).unwrap();
        for (path, body, restarts) in [
            ("/etc/containerd/config.toml", "version = 2\n".to_string(), vec![UNIT.to_string()]),
            (
                "/etc/cni/net.d/10-bridge.conf",
                format!("{{\"cniVersion\":\"1.0.0\",\"name\":\"bridge\",\"subnet\":\"10.200.{i}.0/24\"}}\n"),
                vec![],
            ),
            ("/etc/cni/net.d/99-loopback.conf", "{\"type\":\"loopback\"}\n".into(), vec![]),
            (UNIT_PATH, UNIT_BODY.into(), vec![]),
        ] {
            let local = cfg_dir.join(path.rsplit('/').next().unwrap());
            std::fs::write(&local, &body).unwrap();
            files.push(PushFile {
                path: path.into(),
                mode: 0o644,
                local,
                sync: SyncFile::from_bundle(&BundleFile {
                    path: path.into(),
                    mode: 0o644,
                    owner: "root:root".into(),
                    content: body.into_bytes(),
                    restarts,
                }),
            });
        }
        files_of.insert(node.name.clone(), files);
    }
    let plans: BTreeMap<String, NodePlan> = files_of
        .iter()
        .map(|(n, fs)| {
            (
                n.clone(),
                NodePlan {
                    files: fs.iter().map(|f| f.sync.clone()).collect(),
                    units: vec![UNIT.into()],
                    ..NodePlan::default()
                },
            )
        })
        .collect();
    let files_per_node = plans.values().next().map_or(0, |p| p.files.len());
    let n = inv.nodes.len();
    println!(
        "push_vs_ansible: {n} nodes of {}, {files_per_node} files ({:.1} MiB of binaries) + unit \
         {UNIT} per node; k8sforge concurrency {forks}, ansible forks {forks}, pipelining on",
        cluster.display(),
        bytes_per_node as f64 / (1 << 20) as f64
    );

    let ssh = Ssh {
        key: key.clone(),
        known_hosts: known_hosts.clone(),
    };
    ensure_python(&ssh, &inv.nodes, work.path());
    let wipe_script = wipe_script(files_of.values().next().unwrap());

    // k8sforge.
    ssh.on_all(&inv.nodes, &wipe_script, "wipe");
    let ex = Executor::new(
        &cluster,
        ExecutorOptions {
            concurrency: forks,
            progress: false,
            command_timeout: Duration::from_secs(1200),
            digest_cache_dir: DIGEST_CACHE.into(),
            ..ExecutorOptions::default()
        },
    )
    .unwrap();
    let t = Instant::now();
    let rep = ex.apply_plans(&inv, &plans, "workers");
    let kf_first = t.elapsed().as_secs_f64();
    assert!(rep.ok(), "{}", rep.summary_line());
    assert_eq!(rep.files_changed, n * files_per_node);
    println!(
        "k8sforge first push : {kf_first:>8.2} s  ({})",
        rep.summary_line()
    );
    ssh.on_all(
        &inv.nodes,
        &format!("systemctl is-active -q {UNIT}"),
        "unit active after k8sforge",
    );
    // Re-run 1 hashes every file on the nodes (fresh uploads are not in the nodes' digest
    // caches yet); re-run 2 only stats them. ansible's copy checksums every file every time.
    let mut kf_reruns = Vec::new();
    for i in 1..=2 {
        let t = Instant::now();
        let rep = ex.apply_plans(&inv, &plans, "workers");
        let secs = t.elapsed().as_secs_f64();
        assert!(rep.ok(), "{}", rep.summary_line());
        assert_eq!(rep.files_changed, 0);
        println!(
            "k8sforge re-run {i}   : {secs:>8.2} s  ({})",
            rep.summary_line()
        );
        kf_reruns.push(secs);
    }

    // ansible-playbook, from the same wiped state.
    ssh.on_all(&inv.nodes, &wipe_script, "wipe");
    let adir = work.path().join("ansible");
    write_ansible(&adir, &inv.nodes, &files_of, &key, &known_hosts, forks);
    let (an_first, recap1) = run_playbook(&adir);
    println!("ansible first push  : {an_first:>8.2} s  ({recap1})");
    ssh.on_all(
        &inv.nodes,
        &format!("systemctl is-active -q {UNIT}"),
        "unit active after ansible",
    );
    let (an_rerun, recap2) = run_playbook(&adir);
    println!("ansible re-run      : {an_rerun:>8.2} s  ({recap2})");
    assert!(
        recap2.contains(" changed=0 "),
        "ansible re-run changed something: {recap2}"
    );

    // Leave the nodes as the provider made them.
    ssh.on_all(&inv.nodes, &wipe_script, "wipe");

    println!();
    println!("| {n} nodes | k8sforge | ansible-playbook | ansible / k8sforge |");
    println!("|---|---|---|---|");
    println!(
        "| first push + unit start | {kf_first:.1} s | {an_first:.1} s | {:.1}x |",
        an_first / kf_first
    );
    for (i, kf) in kf_reruns.iter().enumerate() {
        let what = if i == 0 {
            "nodes hash every file"
        } else {
            "digest cache hit"
        };
        println!(
            "| re-run {}, nothing changed ({what}) | {kf:.1} s | {an_rerun:.1} s | {:.1}x |",
            i + 1,
            an_rerun / kf
        );
    }
}

/// Removes everything the push creates (files, the unit, k8sforge's digest cache) so each tool
/// starts from the same state.
fn wipe_script(files: &[PushFile]) -> String {
    let mut s = format!("set -e\nsystemctl disable -q --now {UNIT} 2>/dev/null || true\nrm -f");
    for f in files {
        write!(s, " '{}'", f.path).unwrap();
    }
    write!(s, "\nrm -rf {DIGEST_CACHE}\nsystemctl daemon-reload\n").unwrap();
    s
}

struct Ssh {
    key: PathBuf,
    known_hosts: PathBuf,
}

impl Ssh {
    fn cmd(&self, node: &Node) -> Command {
        let mut c = Command::new("ssh");
        c.args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
        ])
        .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
        .arg("-i")
        .arg(&self.key)
        .arg("-p")
        .arg(node.ssh.port.to_string())
        .arg(format!("{}@{}", node.ssh.user, node.ssh.host));
        c
    }

    /// Runs `script` on every node in parallel; panics naming the first node that failed.
    fn on_all(&self, nodes: &[Node], script: &str, what: &str) {
        let outs: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = nodes
                .iter()
                .map(|n| {
                    s.spawn(move || {
                        let out = self.cmd(n).arg(script).stdin(Stdio::null()).output();
                        (n.name.clone(), out)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (name, out) in outs {
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => panic!(
                    "{what} on {name}: {} {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => panic!("{what} on {name}: ssh: {e}"),
            }
        }
    }
}

/// Untimed setup: ansible's modules need Python on the node. Copy the host's Debian python3.11
/// (with its compiled bytecode, as an installed package has) to nodes that lack one.
fn ensure_python(ssh: &Ssh, nodes: &[Node], work: &Path) {
    let missing: Vec<Node> = nodes
        .iter()
        .filter(|n| {
            !ssh.cmd(n)
                .arg("test -x /usr/bin/python3")
                .stdin(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .cloned()
        .collect();
    if missing.is_empty() {
        return;
    }
    let t = Instant::now();
    let list = Command::new("dpkg")
        .arg("-L")
        .args(PY_PKGS)
        .output()
        .unwrap_or_else(|e| {
            panic!("dpkg -L (the host must be Debian with python3 installed): {e}")
        });
    assert!(
        list.status.success(),
        "dpkg -L {PY_PKGS:?}: {}",
        String::from_utf8_lossy(&list.stderr)
    );
    let mut paths: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|p| {
            std::fs::symlink_metadata(p)
                .map(|m| !m.is_dir())
                .unwrap_or(false)
        })
        .map(|p| p.trim_start_matches('/').to_string())
        .collect();
    let pyc = Command::new("find")
        .args([
            "/usr/lib/python3.11",
            "-name",
            "*.pyc",
            "-path",
            "*__pycache__*",
        ])
        .output()
        .unwrap();
    paths.extend(
        String::from_utf8_lossy(&pyc.stdout)
            .lines()
            .filter(|p| !p.contains("/dist-packages/") && !p.contains("/test/"))
            .map(|p| p.trim_start_matches('/').to_string()),
    );
    let list_file = work.join("python-files");
    std::fs::write(&list_file, paths.join("\n")).unwrap();
    let tar = work.join("python.tar");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg("/")
        .arg("-T")
        .arg(&list_file)
        .status()
        .unwrap();
    assert!(st.success(), "tar of the host's python3");
    std::thread::scope(|s| {
        for n in &missing {
            let tar = &tar;
            s.spawn(move || {
                let f = std::fs::File::open(tar).unwrap();
                let st = ssh
                    .cmd(n)
                    .arg("tar -xf - -C / && /usr/bin/python3 -c 'import json, hashlib'")
                    .stdin(f)
                    .status()
                    .unwrap();
                assert!(st.success(), "installing python3 on {}", n.name);
            });
        }
    });
    println!(
        "setup (untimed): python3 copied to {} nodes in {:.1} s",
        missing.len(),
        t.elapsed().as_secs_f64()
    );
}

fn write_ansible(
    dir: &Path,
    nodes: &[Node],
    files_of: &BTreeMap<String, Vec<PushFile>>,
    key: &Path,
    known_hosts: &Path,
    forks: usize,
) {
    std::fs::create_dir_all(dir).unwrap();
    let mut inv = String::from("[workers]\n");
    for n in nodes {
        writeln!(
            inv,
            "{} ansible_host={} ansible_port={} ansible_user={}",
            n.name, n.ssh.host, n.ssh.port, n.ssh.user
        )
        .unwrap();
    }
    write!(
        inv,
        "\n[workers:vars]\nansible_ssh_private_key_file={}\n\
         ansible_ssh_common_args='-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes'\n\
         ansible_python_interpreter=/usr/bin/python3\n",
        key.display(),
        known_hosts.display()
    )
    .unwrap();
    std::fs::write(dir.join("inventory.ini"), inv).unwrap();
    std::fs::write(
        dir.join("ansible.cfg"),
        format!(
            "[defaults]\ninventory = inventory.ini\nforks = {forks}\nhost_key_checking = True\n\
             gathering = explicit\nretry_files_enabled = False\n\n\
             [ssh_connection]\npipelining = True\n"
        ),
    )
    .unwrap();

    // Binaries: the same local file for every node; configs: per node.
    let files = files_of.values().next().unwrap();
    let mut dirs = BTreeSet::new();
    let mut items = String::new();
    for f in files {
        if let Some((d, _)) = f.path.rsplit_once('/') {
            dirs.insert(d.to_string());
        }
        let src = if f.local.starts_with(dir.parent().unwrap().join("files")) {
            let name = f.local.file_name().unwrap().to_string_lossy().to_string();
            format!(
                "{}/{{{{ inventory_hostname }}}}/{name}",
                dir.parent().unwrap().join("files").display()
            )
        } else {
            f.local.display().to_string()
        };
        writeln!(
            items,
            "          - {{ src: \"{src}\", dest: \"{}\", mode: \"{:04o}\" }}",
            f.path, f.mode
        )
        .unwrap();
    }
    let mut dir_items = String::new();
    for d in &dirs {
        writeln!(dir_items, "          - \"{d}\"").unwrap();
    }
    let play = format!(
        "- hosts: workers\n  gather_facts: false\n  tasks:\n\
         \x20   - name: directories\n      file: {{ path: \"{{{{ item }}}}\", state: directory, mode: \"0755\" }}\n      loop:\n{dir_items}\
         \x20   - name: worker files\n      copy: {{ src: \"{{{{ item.src }}}}\", dest: \"{{{{ item.dest }}}}\", mode: \"{{{{ item.mode }}}}\", owner: root, group: root }}\n\
         \x20     register: copied\n      notify: restart unit\n      loop:\n{items}\
         \x20   - name: unit\n      systemd: {{ name: {UNIT}, daemon_reload: \"{{{{ copied is changed }}}}\", enabled: true, state: started }}\n\
         \x20 handlers:\n\
         \x20   - name: restart unit\n      systemd: {{ name: {UNIT}, state: restarted }}\n"
    );
    std::fs::write(dir.join("push.yml"), play).unwrap();
}

/// Runs the playbook; returns the wall time and the recap's totals.
fn run_playbook(dir: &Path) -> (f64, String) {
    let t = Instant::now();
    let out = Command::new("ansible-playbook")
        .arg("push.yml")
        .current_dir(dir)
        .env("ANSIBLE_CONFIG", dir.join("ansible.cfg"))
        .env("ANSIBLE_NOCOLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("ansible-playbook: {e}"));
    let secs = t.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ansible-playbook failed ({}):\n{}\n{}",
        out.status,
        stdout.lines().rev().take(40).collect::<Vec<_>>().join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    // Sum the recap lines: "node : ok=3 changed=2 unreachable=0 failed=0 ...".
    let mut tot: BTreeMap<&str, usize> = BTreeMap::new();
    let mut hosts = 0;
    for l in stdout
        .lines()
        .filter(|l| l.contains(" ok=") && l.contains(" changed="))
    {
        hosts += 1;
        for kv in l.split_whitespace() {
            if let Some((k, v)) = kv.split_once('=') {
                *tot.entry(k).or_default() += v.parse::<usize>().unwrap_or(0);
            }
        }
    }
    let recap = format!(
        "{hosts} hosts: ok={} changed={} failed={} unreachable={}",
        tot.get("ok").unwrap_or(&0),
        tot.get("changed").unwrap_or(&0),
        tot.get("failed").unwrap_or(&0),
        tot.get("unreachable").unwrap_or(&0)
    );
    (secs, recap)
}
