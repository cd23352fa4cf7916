//! Adopt-and-compare: a machine found by the cluster tag is compared with what the profile asks
//! for (instance type, image, root disk size and type) before it is adopted. A difference is
//! never ignored: the run refuses and names every instance and field, unless the user asked for
//! replacement (`up --replace-drifted`), in which case the drifted workers are deleted and
//! created again from the profile. k8sforge changes no running machine in place.

use serde::Serialize;

/// One field of one adopted machine that differs from the profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// Node name (`worker-1`).
    pub node: String,
    /// The machine's id at the provider (instance id, instance name).
    pub resource: String,
    /// The profile field, e.g. `workers[gpu].aws.instanceType`.
    pub field: String,
    /// What runs.
    pub have: String,
    /// What the profile asks for.
    pub want: String,
    /// The node is an etcd member or control plane: never replaced automatically.
    pub control_plane: bool,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {} is {}, the profile asks for {}",
            self.node, self.resource, self.field, self.have, self.want
        )
    }
}

/// The refusal: every drifted field, then what the user can do.
pub fn refusal(drifts: &[Drift], replace_asked: bool) -> String {
    let mut nodes: Vec<&str> = drifts.iter().map(|d| d.node.as_str()).collect();
    nodes.dedup();
    let mut m = format!(
        "{} adopted machine(s) differ from the profile:",
        nodes.len()
    );
    for d in drifts {
        m.push_str(&format!("\n  - {d}"));
    }
    let cps: Vec<&str> = {
        let mut v: Vec<&str> = drifts
            .iter()
            .filter(|d| d.control_plane)
            .map(|d| d.node.as_str())
            .collect();
        v.dedup();
        v
    };
    if replace_asked && !cps.is_empty() {
        m.push_str(&format!(
            "\n--replace-drifted replaces workers only: {} hold the control plane and etcd data, and replacing them would lose etcd members. Set the profile back to what runs for them (or remove and re-add them one at a time). Nothing was changed.",
            cps.join(", ")
        ));
    } else {
        m.push_str(
            "\nk8sforge does not change a running machine in place. Either set the profile back to what runs, or re-run with `k8sforge up --replace-drifted` to delete these workers and create them again from the profile (their disks and local data are lost). Nothing was changed.",
        );
    }
    m
}

/// `*` and `?` glob match, as AWS name filters use them.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let p = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*";
        assert!(glob_match(
            p,
            "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20260101"
        ));
        assert!(!glob_match(
            p,
            "ubuntu/images/hvm-ssd-gp3/ubuntu-jammy-22.04-amd64-server-2026"
        ));
        assert!(glob_match("a?c*", "abcdef"));
        assert!(!glob_match("a?c", "abcd"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn refusal_names_every_field_and_the_way_out() {
        let d = |node: &str, cp| Drift {
            node: node.into(),
            resource: "i-1".into(),
            field: "instanceType".into(),
            have: "m6i.large".into(),
            want: "m6i.xlarge".into(),
            control_plane: cp,
        };
        let m = refusal(&[d("worker-1", false)], false);
        assert!(
            m.contains(
                "worker-1 (i-1): instanceType is m6i.large, the profile asks for m6i.xlarge"
            ),
            "{m}"
        );
        assert!(m.contains("--replace-drifted"), "{m}");
        let m = refusal(&[d("controlplane-1", true)], true);
        assert!(m.contains("replaces workers only: controlplane-1"), "{m}");
    }
}
