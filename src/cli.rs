//! Command-line definitions. `main.rs` parses these and `commands` carries them out.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::phases::PhaseName;

const ABOUT: &str =
    "k8sforge builds a production Kubernetes cluster for GPU training, the hard way, automated.";

const EXAMPLES: &str = "\
Examples:
  # Write every file each node of the default profile (local-3) would receive
  k8sforge plan --out ./bundle

  # Build a cluster on local systemd-nspawn nodes
  k8sforge up --profile local-3

  # Check certificate expiry from cron (non-zero exit under 30 days)
  k8sforge certs check --warn-days 30

  # Remove every resource the cluster owns
  k8sforge teardown --profile gpu-1000";

#[derive(Debug, Parser)]
#[command(name = "k8sforge", version, about = ABOUT, after_help = EXAMPLES, propagate_version = true)]
pub struct Cli {
    /// More log output on stderr (-v, -vv)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// State directory (one sub-directory per cluster)
    #[arg(long, global = true, env = "K8SFORGE_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// How to pick the profile: built-in name or YAML file, plus field overrides.
#[derive(Debug, Clone, Args)]
pub struct ProfileArgs {
    /// Built-in profile name or path to a profile YAML file
    #[arg(short, long, default_value = crate::profile::builtin::DEFAULT, value_name = "NAME|FILE")]
    pub profile: String,

    /// Override one profile field, e.g. --set workers[0].count=8 (repeatable)
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub sets: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compute the cluster offline: PKI, kubeconfigs and every node's files, written to a directory
    #[command(
        after_help = "Examples:\n  k8sforge plan --out ./bundle\n  k8sforge plan --profile gpu-1000 --set provider.kind=gcp --out /tmp/gpu"
    )]
    Plan {
        #[command(flatten)]
        profile: ProfileArgs,
        /// Write the per-node bundle here (default: <state dir>/bundle)
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
    },

    /// Provision machines and run every phase; each phase is skipped when its inputs are unchanged
    #[command(
        after_help = "Examples:\n  k8sforge up --profile local-3\n  k8sforge up --only etcd\n  k8sforge up --from workers --mirror /srv/mirror"
    )]
    Up {
        #[command(flatten)]
        profile: ProfileArgs,
        /// Run only this phase
        #[arg(long, value_enum, conflicts_with = "from")]
        only: Option<PhaseName>,
        /// Resume from this phase (it and every later phase run)
        #[arg(long, value_enum)]
        from: Option<PhaseName>,
        /// Artifact mirror: a directory or URL laid out as <mirror>/<host>/<upstream path>
        #[arg(long, value_name = "DIR|URL")]
        mirror: Option<String>,
        /// Run phases even when their inputs are unchanged (re-converge every node)
        #[arg(long)]
        force: bool,
        /// Verify artifacts against the mirror's own k8sforge-artifacts.json instead of the pinned sums
        #[arg(long)]
        trust_mirror_checksums: bool,
        /// Delete and re-create adopted workers whose instance type, image or disk differ from the profile (default: refuse and list them)
        #[arg(long)]
        replace_drifted: bool,
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
    },

    /// Build an air-gap artifact mirror for a profile: pinned binaries and images, verified
    #[command(
        after_help = "Examples:\n  k8sforge mirror --out /srv/mirror --profile gpu-1000\n  k8sforge up --profile gpu-1000 --mirror /srv/mirror"
    )]
    Mirror {
        #[command(flatten)]
        profile: ProfileArgs,
        /// Directory to write (or complete: what is present and verified is kept)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Take binaries from this mirror (directory or URL) instead of upstream
        #[arg(long, value_name = "DIR|URL")]
        from: Option<String>,
        /// Verify binaries against the source mirror's own k8sforge-artifacts.json
        #[arg(long)]
        trust_mirror_checksums: bool,
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
    },

    /// Inspect and renew certificates
    #[command(subcommand)]
    Certs(CertsCommand),

    /// Add or remove worker nodes, touching only them and their route peers
    #[command(subcommand)]
    Node(NodeCommand),

    /// Move the cluster to another Kubernetes release (one minor at a time), node by node
    #[command(
        after_help = "Order: etcd (when the release row changes it), control planes one by one, then kubelet/kube-proxy (control planes first, workers in batches, cordoned and drained). Preflight: version skew, deprecated APIs in use. Resumes after a crash.\n\nExamples:\n  k8sforge upgrade --to v1.28.8 --dry-run\n  k8sforge upgrade --to v1.28.8 --batch 5 --output json"
    )]
    Upgrade {
        #[command(flatten)]
        profile: ProfileArgs,
        /// Target Kubernetes version (a built-in release row or one of kubernetes.extraReleases)
        #[arg(long, value_name = "vX.Y.Z")]
        to: String,
        /// Worker nodes per batch (each batch is cordoned and drained together)
        #[arg(long, default_value_t = 1, value_name = "N")]
        batch: usize,
        /// Run the preflight, print the plan and change nothing
        #[arg(long)]
        dry_run: bool,
        /// Artifact mirror (directory or URL) to take the target's binaries from
        #[arg(long, value_name = "DIR|URL")]
        mirror: Option<String>,
        /// Verify binaries against the mirror's own k8sforge-artifacts.json
        #[arg(long)]
        trust_mirror_checksums: bool,
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
    },

    /// Delete every resource the cluster owns (found by its cluster tag), and nothing else
    Teardown {
        #[command(flatten)]
        profile: ProfileArgs,
        /// List what would be deleted without deleting
        #[arg(long)]
        dry_run: bool,
    },

    /// Show each node: reachable, phases applied, unit states
    Status {
        #[command(flatten)]
        profile: ProfileArgs,
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
    },

    /// List or show the built-in profiles
    #[command(subcommand)]
    Profiles(ProfilesCommand),

    /// Write or merge the cluster's admin kubeconfig into ~/.kube/config (or --out)
    Kubeconfig {
        #[command(flatten)]
        profile: ProfileArgs,
        /// Kubeconfig file to write or merge into
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },

    /// Open a shell on a node, or run a command there
    Ssh {
        #[command(flatten)]
        profile: ProfileArgs,
        /// Node name, e.g. controlplane-1
        node: String,
        /// Command to run instead of a shell
        #[arg(trailing_var_arg = true)]
        command: Vec<String>,
    },

    /// Internal: supervise one local node (started by the local provider, not by users)
    #[command(name = "local-node-launcher", hide = true)]
    LocalNodeLauncher {
        /// The node's directory under the local provider root
        node_dir: PathBuf,
    },

    /// Internal: the API load balancer of a local cluster with several control planes
    #[command(name = "local-api-proxy", hide = true)]
    LocalApiProxy {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long = "backend", required = true)]
        backends: Vec<std::net::SocketAddr>,
    },

    /// Teams: namespace, RBAC, GPU quota (ResourceQuota; Kueue queues where installed)
    #[command(subcommand)]
    Team(TeamCommand),

    /// Team users: client certificate through the CSR API and a namespaced kubeconfig
    #[command(subcommand)]
    User(UserCommand),

    /// Run the training smoke jobs in a team's namespace, report pass/fail per job, clean up
    #[command(
        after_help = "Examples:\n  k8sforge team add smoke --gpus 0 && k8sforge smoke --team smoke\n  k8sforge smoke --jobs pytorch,tf --workers 3 --mirror /srv/mirror\n  k8sforge smoke --profile gpu-dev --nccl-image REGISTRY/nccl-tests:TAG"
    )]
    Smoke(SmokeArgs),

    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Args)]
pub struct SmokeArgs {
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// The team whose namespace, quota and checkpoint PVC the jobs use (`team add` it first)
    #[arg(long, default_value = "smoke")]
    pub team: String,
    /// Jobs to run, comma-separated: pytorch, tf, trainjob, nccl (default: what the cluster's
    /// operators and GPUs allow)
    #[arg(long, value_delimiter = ',')]
    pub jobs: Vec<String>,
    /// Workers besides rank 0 (PyTorch master, TF parameter server)
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Epochs of the smoke program (a checkpoint each; a re-run resumes after the newest)
    #[arg(long, default_value_t = 3)]
    pub epochs: u32,
    /// Seconds to wait for each job
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Artifact mirror listing the k8sforge-smoke image (as given to `up`)
    #[arg(long, value_name = "DIR|URL")]
    pub mirror: Option<String>,
    /// Verify against the mirror's own k8sforge-artifacts.json
    #[arg(long)]
    pub trust_mirror_checksums: bool,
    /// Image with mpirun and nccl-tests' all_reduce_perf, for the NCCL job on GPU clusters
    #[arg(long)]
    pub nccl_image: Option<String>,
    /// Pack this static k8sforge-smoke binary as the smoke image into the directory given by
    /// --mirror (its images list), then exit; `up --only runtime --mirror DIR` ships it
    #[arg(long, value_name = "BINARY")]
    pub pack_image: Option<std::path::PathBuf>,
    /// Leave the jobs in place after the run (default: delete them; the checkpoint PVC stays)
    #[arg(long)]
    pub keep: bool,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Provision N more nodes in a worker group and join them (the other nodes only learn
    /// their routes)
    #[command(after_help = "Examples:\n  k8sforge node add --group worker --count 1")]
    Add {
        #[command(flatten)]
        profile: ProfileArgs,
        /// Worker group (`workers[].name` in the profile)
        #[arg(long, value_name = "NAME")]
        group: String,
        #[arg(long, default_value_t = 1, value_name = "N")]
        count: u32,
        /// Artifact source as for `up` (directory or URL), overriding the profile's
        #[arg(long, value_name = "DIR|URL")]
        mirror: Option<String>,
        /// Verify artifacts against the mirror's own k8sforge-artifacts.json
        #[arg(long)]
        trust_mirror_checksums: bool,
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Drain, stop and deprovision worker nodes and remove their routes from every other node
    #[command(after_help = "Examples:\n  k8sforge node remove worker-3")]
    Remove {
        #[command(flatten)]
        profile: ProfileArgs,
        /// Node names (the last nodes of their group: local nodes are addressed by position)
        #[arg(required = true, num_args = 1.., value_name = "NODE")]
        nodes: Vec<String>,
        /// Artifact source as for `up` (directory or URL), overriding the profile's
        #[arg(long, value_name = "DIR|URL")]
        mirror: Option<String>,
        /// Verify artifacts against the mirror's own k8sforge-artifacts.json
        #[arg(long)]
        trust_mirror_checksums: bool,
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Table of every certificate: subject, SANs, issuer, expiry; non-zero exit when expiring
    #[command(
        after_help = "Examples:\n  k8sforge certs check\n  k8sforge certs check --warn-days 30 --output json\n  k8sforge certs check --textfile-dir /var/lib/prometheus/node-exporter"
    )]
    Check {
        #[command(flatten)]
        profile: ProfileArgs,
        /// Exit non-zero when a certificate expires within this many days
        #[arg(long, default_value_t = 30)]
        warn_days: u32,
        /// Check the state directory only (by default the certificates deployed on every
        /// provisioned node are read over SSH too)
        #[arg(long)]
        offline: bool,
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
        /// Also write the result as metrics for node-exporter's textfile collector (a
        /// directory: writes k8sforge_certificates.prom in it, atomically)
        #[arg(long, value_name = "DIR")]
        textfile_dir: Option<std::path::PathBuf>,
    },
    /// Re-issue leaf certificates and roll them out node by node without downtime
    #[command(
        after_help = "Examples:\n  k8sforge certs rotate --dry-run\n  k8sforge certs rotate --within 30d\n  k8sforge certs rotate --only apiserver etcd/server --output json\n  k8sforge certs rotate --ca --dry-run\n  k8sforge certs rotate --ca --only-ca etcd\n  k8sforge certs rotate --sa-keys        (later: --sa-keys --finish)"
    )]
    Rotate {
        #[command(flatten)]
        profile: ProfileArgs,
        /// Only these certificates (table names, e.g. apiserver, kubelet-worker-1, or a family:
        /// kubelet, etcd/server, etcd/peer)
        #[arg(long, num_args = 1.., value_name = "NAME")]
        only: Vec<String>,
        /// Only certificates expiring within this long (e.g. 30d, 12h)
        #[arg(long, value_name = "DURATION")]
        within: Option<String>,
        /// Rotate the CAs in stages: new CA into every trust bundle, leaves re-issued from it,
        /// old CA removed last; resumable (run it again after a failure or crash)
        #[arg(long, conflicts_with_all = ["only", "within", "sa_keys"])]
        ca: bool,
        /// With --ca: only these CAs (repeatable; default all three)
        #[arg(long, value_enum, value_name = "CA", requires = "ca")]
        only_ca: Vec<CaName>,
        /// Rotate the service-account signing key: the apiservers accept the old and the new
        /// public key, then the new key signs; the old key stays accepted until --finish
        #[arg(long, conflicts_with_all = ["only", "within"])]
        sa_keys: bool,
        /// With --sa-keys: stop accepting the previous service-account public key (tokens
        /// signed by it stop working)
        #[arg(long, requires = "sa_keys")]
        finish: bool,
        /// Print the plan (certificates, nodes, files, units, order) and change nothing
        #[arg(long)]
        dry_run: bool,
        /// Nodes per kubelet/kube-proxy batch
        #[arg(long, default_value_t = 10, value_name = "N")]
        batch: usize,
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
    },
}

/// A CA, as `--only-ca` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CaName {
    /// The cluster CA (pki/ca): apiserver, kubelets, clients, service-account tokens' ca.crt
    Kubernetes,
    /// The etcd CA (pki/etcd/ca): etcd members and the apiservers' etcd client
    Etcd,
    /// The front-proxy CA (pki/front-proxy-ca): the aggregation layer
    FrontProxy,
}

#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// Names and one-line descriptions of the built-in profiles
    List,
    /// Print a profile as YAML after defaults and --set overrides
    Show {
        /// Built-in profile name or path to a profile YAML file
        #[arg(value_name = "NAME|FILE")]
        name: String,
        /// Override one profile field, e.g. --set workers[0].count=8 (repeatable)
        #[arg(long = "set", value_name = "PATH=VALUE")]
        sets: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TeamCommand {
    /// Create or update a team: namespace, Role/RoleBinding, ResourceQuota, LimitRange, queues
    #[command(
        after_help = "Examples:\n  k8sforge team add vision --gpus 16 --cpu 128 --memory 1Ti\n  k8sforge team add nlp --gpus 8 --cohort research --borrowing-limit 8"
    )]
    Add {
        #[command(flatten)]
        profile: ProfileArgs,
        /// Team name (names its namespace and ClusterQueue)
        name: String,
        /// GPUs the team may request in total (nominal quota)
        #[arg(long)]
        gpus: u32,
        /// Total CPU requests, e.g. 64 or 500m
        #[arg(long)]
        cpu: Option<String>,
        /// Total memory requests, e.g. 256Gi
        #[arg(long)]
        memory: Option<String>,
        /// Kueue cohort: queues of one cohort borrow each other's unused quota
        #[arg(long)]
        cohort: Option<String>,
        /// GPUs the team may borrow from its cohort beyond its quota (default: no limit)
        #[arg(long)]
        borrowing_limit: Option<u32>,
        /// Size of the team's dataset PVC (where the cluster has a dataset StorageClass)
        #[arg(long)]
        dataset_size: Option<String>,
        /// Size of the team's checkpoint PVC (where the cluster has a checkpoint StorageClass)
        #[arg(long)]
        checkpoint_size: Option<String>,
    },
    /// Teams with their GPU quota and use
    List {
        #[command(flatten)]
        profile: ProfileArgs,
        #[arg(short, long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Delete a team: its ClusterQueue and its namespace with everything in it
    Remove {
        #[command(flatten)]
        profile: ProfileArgs,
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Issue a client certificate for a team user and write their kubeconfig (0600)
    #[command(
        after_help = "Examples:\n  k8sforge user add alice --team vision\n  k8sforge user add bob --team nlp --out ./bob.kubeconfig --days 30"
    )]
    Add {
        #[command(flatten)]
        profile: ProfileArgs,
        /// User name (the certificate's CN)
        user: String,
        /// The user's team
        #[arg(long)]
        team: String,
        /// Where to write the kubeconfig (default: <state dir>/users/USER.kubeconfig)
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Certificate lifetime in days (1-365)
        #[arg(long, default_value_t = 90)]
        days: u32,
    },
}
