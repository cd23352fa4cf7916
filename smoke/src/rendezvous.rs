//! Who am I and where is rank 0: read from the environment each training operator sets.
//!
//! - training-operator v1 PyTorchJob: `MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`, `RANK`.
//! - training-operator v1 TFJob: `TF_CONFIG` (`cluster` = role → `host:port` list, `task` =
//!   this replica's role and index). Ranks follow the order chief, master, ps, worker, and the
//!   first of them (the chief, or PS 0) is rank 0; each task listens on its own port.
//! - Kubeflow Trainer v2 torch runtime: `PET_NNODES`, `PET_NODE_RANK`, `PET_MASTER_ADDR`,
//!   `PET_MASTER_PORT` (one process per node: `PET_NPROC_PER_NODE` must be 1 when set).

use std::collections::BTreeMap;

use crate::json;

/// Which operator's convention the environment followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    PyTorch,
    TfConfig,
    TrainerV2,
}

impl Style {
    pub fn as_str(self) -> &'static str {
        match self {
            Style::PyTorch => "pytorch",
            Style::TfConfig => "tf_config",
            Style::TrainerV2 => "trainer-v2",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    pub style: Style,
    pub rank: u32,
    pub world: u32,
    /// Where rank 0 listens (`host`, `port`).
    pub master: (String, u16),
    /// The port rank 0 binds (all addresses).
    pub listen_port: u16,
    /// For messages: this replica's role (`master`, `worker`, `ps`, …).
    pub role: String,
}

/// TF_CONFIG roles in rank order; the first present role's first task is rank 0.
const TF_ROLES: [&str; 4] = ["chief", "master", "ps", "worker"];

fn split_host_port(s: &str, what: &str) -> Result<(String, u16), String> {
    let (h, p) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{what}: {s:?} is not host:port"))?;
    let port = p
        .parse()
        .map_err(|_| format!("{what}: port {p:?} of {s:?} is not a number"))?;
    Ok((h.to_string(), port))
}

fn parse_u32(env: &BTreeMap<String, String>, key: &str) -> Result<u32, String> {
    let v = env.get(key).ok_or_else(|| format!("{key} is not set"))?;
    v.trim()
        .parse()
        .map_err(|_| format!("{key}={v:?} is not a non-negative integer"))
}

fn parse_port(env: &BTreeMap<String, String>, key: &str) -> Result<u16, String> {
    let v = env.get(key).ok_or_else(|| format!("{key} is not set"))?;
    v.trim()
        .parse()
        .map_err(|_| format!("{key}={v:?} is not a port number"))
}

impl Rendezvous {
    /// Read the environment (`env`: name → value); the first convention present wins, in the
    /// order PyTorchJob, TF_CONFIG, Trainer v2.
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<Rendezvous, String> {
        let r = if env.contains_key("RANK") && env.contains_key("WORLD_SIZE") {
            let master = (
                env.get("MASTER_ADDR")
                    .cloned()
                    .ok_or("MASTER_ADDR is not set")?,
                parse_port(env, "MASTER_PORT")?,
            );
            let rank = parse_u32(env, "RANK")?;
            Rendezvous {
                style: Style::PyTorch,
                rank,
                world: parse_u32(env, "WORLD_SIZE")?,
                listen_port: master.1,
                master,
                role: if rank == 0 { "master" } else { "worker" }.into(),
            }
        } else if let Some(tf) = env.get("TF_CONFIG") {
            Self::from_tf_config(tf)?
        } else if env.contains_key("PET_NODE_RANK") {
            if let Some(n) = env.get("PET_NPROC_PER_NODE") {
                if n.trim() != "1" {
                    return Err(format!(
                        "PET_NPROC_PER_NODE={n:?}: the smoke program runs one process per node (set numProcPerNode: 1)"
                    ));
                }
            }
            let master = (
                env.get("PET_MASTER_ADDR")
                    .cloned()
                    .ok_or("PET_MASTER_ADDR is not set")?,
                parse_port(env, "PET_MASTER_PORT")?,
            );
            let rank = parse_u32(env, "PET_NODE_RANK")?;
            Rendezvous {
                style: Style::TrainerV2,
                rank,
                world: parse_u32(env, "PET_NNODES")?,
                listen_port: master.1,
                master,
                role: "node".into(),
            }
        } else {
            return Err(
                "no rendezvous environment: expected RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT \
                 (PyTorchJob), TF_CONFIG (TFJob) or PET_NODE_RANK/PET_NNODES/PET_MASTER_ADDR/\
                 PET_MASTER_PORT (Trainer v2)"
                    .into(),
            );
        };
        if r.world == 0 || r.rank >= r.world {
            return Err(format!(
                "rank {} is not below the world size {}",
                r.rank, r.world
            ));
        }
        Ok(r)
    }

    fn from_tf_config(text: &str) -> Result<Rendezvous, String> {
        let v = json::parse(text).map_err(|e| format!("TF_CONFIG is not JSON: {e}"))?;
        let cluster = v.get("cluster").ok_or("TF_CONFIG has no \"cluster\"")?;
        let task = v.get("task").ok_or("TF_CONFIG has no \"task\"")?;
        let role = task
            .get("type")
            .and_then(json::Json::as_str)
            .ok_or("TF_CONFIG task has no \"type\"")?
            .to_string();
        let index = task
            .get("index")
            .and_then(json::Json::as_u64)
            .ok_or("TF_CONFIG task has no \"index\"")?;
        let mut ordered: Vec<(String, String)> = Vec::new();
        for r in TF_ROLES {
            if let Some(json::Json::Array(a)) = cluster.get(r) {
                for (i, addr) in a.iter().enumerate() {
                    let addr = addr
                        .as_str()
                        .ok_or_else(|| format!("TF_CONFIG cluster.{r}[{i}] is not a string"))?;
                    ordered.push((format!("{r}-{i}"), addr.to_string()));
                }
            }
        }
        let me = format!("{role}-{index}");
        let rank = ordered.iter().position(|(n, _)| *n == me).ok_or_else(|| {
            format!(
                "TF_CONFIG task {role} {index} is not in cluster (roles read: {})",
                TF_ROLES.join(", ")
            )
        })?;
        let master = split_host_port(&ordered[0].1, "TF_CONFIG")?;
        let own = split_host_port(&ordered[rank].1, "TF_CONFIG")?;
        Ok(Rendezvous {
            style: Style::TfConfig,
            rank: rank as u32,
            world: ordered.len() as u32,
            master,
            listen_port: own.1,
            role,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pytorch_tf_and_trainer_conventions() {
        let r = Rendezvous::from_env(&env(&[
            ("MASTER_ADDR", "job-master-0"),
            ("MASTER_PORT", "23456"),
            ("WORLD_SIZE", "3"),
            ("RANK", "2"),
        ]))
        .unwrap();
        assert_eq!(
            (r.style, r.rank, r.world, r.master.1),
            (Style::PyTorch, 2, 3, 23456)
        );
        let r = Rendezvous::from_env(&env(&[(
            "TF_CONFIG",
            r#"{"cluster":{"worker":["w0:2222","w1:2222"],"ps":["p0:2222"]},"task":{"type":"worker","index":1}}"#,
        )]))
        .unwrap();
        assert_eq!((r.rank, r.world), (2, 3));
        assert_eq!(r.master, ("p0".to_string(), 2222));
        let r = Rendezvous::from_env(&env(&[
            ("PET_NNODES", "2"),
            ("PET_NODE_RANK", "0"),
            ("PET_NPROC_PER_NODE", "1"),
            ("PET_MASTER_ADDR", "n0"),
            ("PET_MASTER_PORT", "29400"),
        ]))
        .unwrap();
        assert_eq!((r.style, r.rank, r.world), (Style::TrainerV2, 0, 2));
    }

    #[test]
    fn mistakes_are_named() {
        let e = Rendezvous::from_env(&env(&[])).unwrap_err();
        assert!(e.contains("TF_CONFIG"), "{e}");
        let e = Rendezvous::from_env(&env(&[
            ("MASTER_ADDR", "m"),
            ("MASTER_PORT", "1"),
            ("WORLD_SIZE", "2"),
            ("RANK", "2"),
        ]))
        .unwrap_err();
        assert!(e.contains("rank 2 is not below the world size 2"), "{e}");
        let e = Rendezvous::from_env(&env(&[(
            "TF_CONFIG",
            r#"{"cluster":{"worker":["w0:2222"]},"task":{"type":"ps","index":0}}"#,
        )]))
        .unwrap_err();
        assert!(e.contains("task ps 0 is not in cluster"), "{e}");
    }
}
