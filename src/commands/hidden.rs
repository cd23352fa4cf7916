//! Hidden verbs: processes the local provider starts on the user's machine (not for users).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::provider::local::{api_proxy, launcher};

/// `local-api-proxy`: the API load balancer of a local cluster with several control planes.
pub fn local_api_proxy(listen: SocketAddr, backends: Vec<SocketAddr>) -> Result<ExitCode> {
    Ok(exit_code(api_proxy::run(listen, backends)))
}

/// `local-node-launcher`: supervises one local node.
pub fn local_node_launcher(node_dir: &Path) -> Result<ExitCode> {
    Ok(exit_code(launcher::run(node_dir)))
}

fn exit_code(status: i32) -> ExitCode {
    ExitCode::from(status.clamp(0, 255) as u8)
}
