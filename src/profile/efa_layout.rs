//! The EFA network-card layout AWS documents per instance type, and the pinned EFA host
//! software: profile validation, the AWS launch code, node rendering and the add-ons all read
//! it.

/// EFA network interfaces of an instance type: how many network cards carry an EFA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EfaLayout {
    pub network_cards: u32,
}

/// The documented layout, for the instance types k8sforge launches with EFA.
pub fn layout(instance_type: &str) -> Option<EfaLayout> {
    match instance_type {
        // 32 network cards, 3200 Gbps.
        "p5.48xlarge" | "p5e.48xlarge" => Some(EfaLayout { network_cards: 32 }),
        _ => None,
    }
}

/// Label k8sforge puts on nodes launched with EFA interfaces (worker groups with `aws.efa`);
/// the EFA device plugin selects on it. kubelet sets it itself (`k8sforge.io/` is not a
/// restricted prefix).
pub const EFA_LABEL_KEY: &str = "k8sforge.io/efa";
pub const EFA_LABEL_VALUE: &str = "true";

/// The EFA installer release whose host part (kernel module and rdma-core, `--minimal`) GPU
/// nodes with EFA get. Its SHA-256 is the one AWS ParallelCluster pins for the same release
/// (aws/aws-parallelcluster-cookbook, `cookbooks/aws-parallelcluster-environment/attributes/
/// environment.rb`, `default['cluster']['efa']['sha256']`, PR #2953 "Upgrade EFA installer to
/// 1.41.0"); the tarball's upstream URL is AWS's documented one (EC2 User Guide, "Get started
/// with EFA and NCCL", step "Install the EFA software").
pub const EFA_INSTALLER_VERSION: &str = "1.41.0";
pub const EFA_INSTALLER_SHA256: &str =
    "3506354cdfbe31ff552fe75f5d0d9bb7efd29cf79bd99457347d29c751c38f9f";

/// Upstream URL of an EFA installer release.
pub fn efa_installer_url(version: &str) -> String {
    format!("https://efa-installer.amazonaws.com/aws-efa-installer-{version}.tar.gz")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installer_pin_is_well_formed() {
        assert_eq!(EFA_INSTALLER_SHA256.len(), 64);
        assert!(EFA_INSTALLER_SHA256
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert!(
            efa_installer_url(EFA_INSTALLER_VERSION).ends_with("aws-efa-installer-1.41.0.tar.gz")
        );
    }
}
