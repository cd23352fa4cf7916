//! OCI image archives built without a registry (k8sforge's own packer, `artifacts::oci_pack`),
//! for `ctr images import` on nodes: containers and the pause image never come from a registry.

pub use k8sforge::artifacts::oci_pack::{build_archive, build_archive_with_entrypoint};
