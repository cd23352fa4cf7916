//! A client from a kubeconfig file (the cluster's admin kubeconfig on the host), checked by one
//! request so that a wrong address fails here with the URL, not later inside an apply.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::{Client, Config};

use super::KubeError;

/// Connecting is quick on a LAN; a silent firewall should not hang `up` for minutes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A connected client and where it points.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    /// The API server URL from the kubeconfig.
    pub url: String,
    pub kubeconfig: PathBuf,
}

/// Read `kubeconfig` (its current context) and check the API answers `/version`.
pub async fn connect(kubeconfig: &Path) -> Result<Cluster, KubeError> {
    connect_to(kubeconfig, None).await
}

/// Like [`connect`], and when the kubeconfig's server does not answer, try each of `fallbacks`
/// (URLs of the same API with the same credentials: e.g. each control plane directly, when the
/// kubeconfig names a per-node proxy on 127.0.0.1 that exists only on the nodes). The error
/// names every URL tried.
pub async fn connect_with_fallbacks(
    kubeconfig: &Path,
    fallbacks: &[String],
) -> Result<Cluster, KubeError> {
    let first = match connect_to(kubeconfig, None).await {
        Ok(c) => return Ok(c),
        Err(e @ KubeError::Unreachable { .. }) if !fallbacks.is_empty() => e,
        Err(e) => return Err(e),
    };
    let mut tried = vec![first.to_string()];
    for url in fallbacks {
        match connect_to(kubeconfig, Some(url)).await {
            Ok(c) => return Ok(c),
            Err(e) => tried.push(e.to_string()),
        }
    }
    let KubeError::Unreachable { url, path, .. } = first else {
        return Err(first);
    };
    Err(KubeError::Unreachable {
        url,
        path,
        message: format!("every address failed:\n  {}", tried.join("\n  ")),
    })
}

async fn connect_to(kubeconfig: &Path, server: Option<&str>) -> Result<Cluster, KubeError> {
    if !kubeconfig.exists() {
        return Err(KubeError::NoKubeconfig {
            path: kubeconfig.to_path_buf(),
        });
    }
    let bad = |message: String| KubeError::Kubeconfig {
        path: kubeconfig.to_path_buf(),
        message,
    };
    let kc = Kubeconfig::read_from(kubeconfig).map_err(|e| bad(e.to_string()))?;
    let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    if let Some(server) = server {
        config.cluster_url = server
            .parse()
            .map_err(|e| bad(format!("server URL {server}: {e}")))?;
    }
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    let url = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let client = Client::try_from(config).map_err(|e| bad(format!("{e:#}")))?;
    let unreachable = |message: String| KubeError::Unreachable {
        url: url.clone(),
        path: kubeconfig.to_path_buf(),
        message,
    };
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, client.apiserver_version()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(unreachable(error_chain(&e))),
        Err(_) => return Err(unreachable("no answer to GET /version".into())),
    }
    Ok(Cluster {
        client,
        url,
        kubeconfig: kubeconfig.to_path_buf(),
    })
}

/// An error with its causes ("a: b: c"): kube's errors keep the useful part (connection
/// refused, certificate unknown) in the source chain.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
