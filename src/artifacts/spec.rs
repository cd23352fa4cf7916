//! The profile's `artifacts` section (re-exported by `profile`): where artifacts come from, how
//! they reach the nodes, and containerd's registry mirrors. It lives here, below `profile`, so
//! that artifacts code reads it without importing upward.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactsSpec {
    /// Directory or URL laid out as `<mirror>/<host>/<upstream path>`. Default: upstream URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// Use the mirror's own checksum list instead of the pinned sums (explicit opt-in).
    #[serde(default)]
    pub trust_mirror_checksums: bool,
    /// How binaries and image archives reach the nodes. Default per provider: `push` for
    /// local nodes, `fetch` for everything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// Seed nodes in `delivery: seed` (the first nodes of the inventory). Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<u32>,
    /// Port seed nodes serve artifacts on (cluster network only). Default 8079.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_port: Option<u16>,
    /// Registry mirrors for containerd (`/etc/containerd/certs.d/<registry>/hosts.toml`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registry_mirrors: Vec<RegistryMirror>,
    /// Replace the release's image references (each must stay pinned by digest).
    #[serde(default, skip_serializing_if = "ImageOverrides::is_empty")]
    pub images: ImageOverrides,
}

/// How artifacts reach the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Delivery {
    /// The operator's machine uploads every binary and archive over SSH.
    Push,
    /// Each node downloads from the artifact source and verifies the checksum itself.
    Fetch,
    /// A few seed nodes get each artifact (from the source, or pushed when the source is a
    /// directory on the operator's machine) and serve it to the others over the cluster network.
    Seed,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Push => "push",
            Delivery::Fetch => "fetch",
            Delivery::Seed => "seed",
        }
    }
}

/// One registry's mirrors, rendered as containerd `hosts.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryMirror {
    /// The registry the images name, e.g. `registry.k8s.io`, `docker.io`, `nvcr.io` (with
    /// `:port` when it has one), or `_default` for every registry.
    pub registry: String,
    /// Mirror base URLs (`https://host[:port][/path]`, or `http://` for a plain-HTTP mirror),
    /// tried in order.
    pub endpoints: Vec<String>,
    /// PEM CA bundle (a file on the operator's machine) that signs the mirrors' certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Basic-auth user name for the mirrors; the password is read from `passwordFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File on the operator's machine holding the password (first line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// Skip TLS verification of the mirrors (not recommended).
    #[serde(default)]
    pub skip_verify: bool,
    /// Fall back to the registry itself when every mirror fails. Default true; air-gapped
    /// sites set false so no pull ever leaves the site.
    #[serde(default = "yes")]
    pub fallback_to_upstream: bool,
}

fn yes() -> bool {
    true
}

/// Image references that replace the release's (for a private copy under another name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImageOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coredns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvidia_device_plugin: Option<String>,
    /// The training stack's controllers (phase `training`); a digest-pinned reference here also
    /// lets `k8sforge mirror` mirror an image the release table has no pin for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainer_controller_manager: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kueue: Option<String>,
}

impl ImageOverrides {
    pub fn is_empty(&self) -> bool {
        self.all().iter().all(|(_, o)| o.is_none())
    }

    /// Every override with its field name in the profile (`artifacts.images.<field>`).
    pub fn all(&self) -> [(&'static str, &Option<String>); 7] {
        [
            ("pause", &self.pause),
            ("coredns", &self.coredns),
            ("nvidiaDevicePlugin", &self.nvidia_device_plugin),
            ("trainingOperator", &self.training_operator),
            ("trainerControllerManager", &self.trainer_controller_manager),
            ("jobset", &self.jobset),
            ("kueue", &self.kueue),
        ]
    }
}
