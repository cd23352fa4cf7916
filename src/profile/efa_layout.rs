//! The EFA network-card layout AWS documents per instance type: profile validation and the AWS
//! launch code both read it.

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
