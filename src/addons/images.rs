//! Container images of the add-ons: pulled by digest (the release's pins or the profile's
//! `artifacts.images`), or, when the artifact mirror ships OCI archives, the archives' names
//! (imported into containerd by the runtime phase). They come from one place,
//! `artifacts::images`; this is the renderer's plain input, so a caller can override each
//! reference.

use serde::Serialize;

use crate::artifacts::images::{ClusterImage, ImageRefs};
use crate::artifacts::Release;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddonImages {
    pub coredns: String,
    pub device_plugin: String,
    /// The holder container of DaemonSets whose work is done by an init container.
    pub pause: String,
}

impl AddonImages {
    /// The upstream references paired with `release`.
    pub fn for_release(release: &Release) -> AddonImages {
        AddonImages {
            coredns: ClusterImage::CoreDns.default_reference(release),
            device_plugin: ClusterImage::NvidiaDevicePlugin.default_reference(release),
            pause: ClusterImage::Pause.default_reference(release),
        }
    }

    /// These images with the given references replaced.
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

impl From<&ImageRefs> for AddonImages {
    /// What the nodes hold (the artifact source's images).
    fn from(refs: &ImageRefs) -> AddonImages {
        AddonImages {
            coredns: refs.coredns.clone(),
            device_plugin: refs.nvidia_device_plugin.clone(),
            pause: refs.pause.clone(),
        }
    }
}
