//! Container images of the add-ons, from one place. Nodes never pull: the images are imported
//! from OCI archives into containerd (workers phase), so these references must equal the
//! archives' names. A mirror or an air-gapped site overrides them per image.

use serde::Serialize;

use crate::artifacts::Release;

/// NVIDIA device plugin release, pinned for every Kubernetes release (it talks the stable
/// device-plugin v1beta1 API, served by every supported kubelet).
pub const DEVICE_PLUGIN_VERSION: &str = "v0.18.2";

pub const COREDNS_REPOSITORY: &str = "registry.k8s.io/coredns/coredns";
pub const DEVICE_PLUGIN_REPOSITORY: &str = "nvcr.io/nvidia/k8s-device-plugin";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddonImages {
    pub coredns: String,
    pub device_plugin: String,
}

impl AddonImages {
    /// The upstream references pinned with `release`.
    pub fn for_release(release: &Release) -> AddonImages {
        AddonImages {
            coredns: format!("{COREDNS_REPOSITORY}:{}", release.coredns),
            device_plugin: format!("{DEVICE_PLUGIN_REPOSITORY}:{DEVICE_PLUGIN_VERSION}"),
        }
    }

    /// These images with the given references replaced (e.g. from an image mirror's list).
    pub fn with_overrides(
        mut self,
        coredns: Option<String>,
        device_plugin: Option<String>,
    ) -> AddonImages {
        if let Some(c) = coredns {
            self.coredns = c;
        }
        if let Some(d) = device_plugin {
            self.device_plugin = d;
        }
        self
    }
}
