//! Online images: after the runtime is in place, every pod-running node pulls the pod sandbox
//! image unless an archive of the mirror supplies it — by digest, through containerd's registry host
//! configuration (`artifacts.registryMirrors`) — so a missing image, a refused credential or a
//! digest the registry does not serve fails here, naming node, image and registry, rather than
//! later as a pod stuck in `ImagePullBackOff`.

use std::time::Duration;

use super::{Context, PhaseError};
use crate::artifacts::{self, ClusterImage, ImageRefs};
use crate::inventory::Node;
use crate::remote::sync::shell_quote;
use crate::remote::{Executor, NodeFailure, PhaseReport};
use crate::render::paths::{self, PATHS};

/// Pulls of a few tens of MiB per image.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// The images `node` pulls here: the pod sandbox (pause), which every pod needs and which
/// containerd would otherwise pull at the first pod; unless the mirror ships it as an archive.
/// Add-on images (CoreDNS, the device plugin) are pulled by kubelet, through the same registry
/// configuration, where their pods land.
fn images_for(_node: &Node, archived: &[String]) -> Vec<ClusterImage> {
    [ClusterImage::Pause]
        .into_iter()
        .filter(|i| !archived.iter().any(|a| a == i.name()))
        .collect()
}

/// The registry an image reference names (`docker.io` for bare names, as containerd does).
pub fn registry_of(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

fn pull_script(node: &Node, refs: &ImageRefs, archived: &[String]) -> Option<String> {
    let images = images_for(node, archived);
    if images.is_empty() {
        return None;
    }
    let ctr = format!("{}/ctr", paths::BIN_DIR);
    let socket = PATHS.containerd_socket.trim_start_matches("unix://");
    let mut s = format!(
        "set -u\nrc=0\npull() {{\n  \
         out=$({ctr} --address {sock} -n k8s.io images pull --hosts-dir {hosts} \"$2\" 2>&1 >/dev/null) && return 0\n  \
         printf 'cannot pull image %s (%s) from %s: %s\\n' \"$1\" \"$2\" \"$3\" \"$(printf '%s' \"$out\" | grep -v '^ *$' | tail -n 2 | tr '\\n' ' ')\" >&2\n  \
         rc=1\n}}\n",
        ctr = shell_quote(&ctr),
        sock = shell_quote(socket),
        hosts = shell_quote(PATHS.registry_hosts_dir),
    );
    for image in images {
        let reference = refs.get(image);
        s.push_str(&format!(
            "pull {} {} {}\n",
            image.name(),
            shell_quote(reference),
            shell_quote(registry_of(reference)),
        ));
    }
    s.push_str("exit $rc\n");
    Some(s)
}

/// Pull on every node of `report` that succeeded; a node that cannot pull moves to the failed
/// list with the reason.
pub fn prepull(
    ctx: &Context,
    exec: &Executor,
    release: &artifacts::Release,
    source: &artifacts::ArtifactSource,
    report: &mut PhaseReport,
) -> Result<(), PhaseError> {
    let p = &ctx.loaded.profile;
    let refs = ImageRefs::for_source(release, &p.artifacts.images, source)
        .map_err(|e| PhaseError::Failed(e.to_string()))?;
    let archived: Vec<String> = artifacts::source::load_manifest(&source.mirror)
        .map_err(|e| PhaseError::Failed(e.to_string()))?
        .map(|(_, m)| m.images.into_iter().map(|i| i.name).collect())
        .unwrap_or_default();
    let Some(inv) = ctx.inventory.as_ref() else {
        return Ok(());
    };
    let nodes: Vec<(&Node, String)> = report
        .nodes
        .iter()
        .filter_map(|nr| inv.node(&nr.node))
        .filter_map(|n| pull_script(n, &refs, &archived).map(|s| (n, s)))
        .collect();
    let results = crate::remote::fanout::parallel_each(
        &nodes,
        exec.options().concurrency,
        "image pulls",
        exec.options().progress,
        exec.options().multi_progress.as_ref(),
        |(node, script)| {
            let conn = exec.connect(node)?;
            let out = conn.exec_status(script, PULL_TIMEOUT)?;
            Ok::<_, crate::remote::RemoteError>((out, conn.bytes_sent()))
        },
    );
    for ((node, _), r) in nodes.iter().zip(results) {
        let error = match r {
            Ok((out, sent)) => {
                if let Some(nr) = report.nodes.iter_mut().find(|n| n.node == node.name) {
                    nr.bytes_sent += sent;
                }
                if out.status == 0 {
                    continue;
                }
                format!("node {}: {}", node.name, out.stderr.trim())
            }
            Err(e) => e.to_string(),
        };
        report.nodes.retain(|n| n.node != node.name);
        report.nodes_ok = report.nodes_ok.saturating_sub(1);
        report.failed.push(NodeFailure {
            node: node.name.clone(),
            error,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_named_as_containerd_does() {
        assert_eq!(registry_of("registry.k8s.io/pause:3.9"), "registry.k8s.io");
        assert_eq!(registry_of("127.0.0.1:5000/x/y:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(registry_of("busybox"), "docker.io");
    }
}
