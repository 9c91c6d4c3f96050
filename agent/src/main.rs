//! trunkline-agent: the node daemon's command line.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use trunkline_agent::{config::RunConfig, node::file::NodeSpec};

#[derive(Parser)]
#[command(
    name = "trunkline-agent",
    version,
    about = "trunkline node agent: eBPF pod networking for EKS nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load and pin the data path, attach it to the ENIs,
    /// serve the CNI plugin on a unix socket. Manages the interfaces of the
    /// network namespace it is started in.
    Run(RunArgs),
    /// Install trunkline-cni and its conflist into the host's CNI directories
    /// (the DaemonSet's init step; temp file + rename, never half-written).
    InstallCni {
        /// The plugin binary to install.
        #[arg(long, default_value = "/usr/local/bin/trunkline-cni")]
        plugin: PathBuf,
        #[arg(long, default_value = "/host/opt/cni/bin")]
        bin_dir: PathBuf,
        #[arg(long, default_value = "/host/etc/cni/net.d")]
        conf_dir: PathBuf,
        #[arg(long, env = "TRUNKLINE_MTU", default_value_t = 9001)]
        mtu: u32,
        #[arg(
            long,
            env = "TRUNKLINE_SOCKET",
            default_value = "/run/trunkline/agent.sock"
        )]
        socket: String,
    },
    /// Exit 0 if the agent answers SERVING on its socket (liveness/readiness probe).
    Health {
        #[arg(
            long,
            env = "TRUNKLINE_SOCKET",
            default_value = "/run/trunkline/agent.sock"
        )]
        socket: String,
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
    /// Take over a node that ran aws-node: adopt its pods from aws-node's
    /// checkpoint (keeping their established connections, SNAT ports
    /// included), then remove aws-node's chains, rules, tables and devices.
    /// Leaves the data path pinned for `run`, which finds the pods in its
    /// checkpoint.
    Migrate {
        #[command(flatten)]
        run: RunArgs,
        /// aws-node's IPAM checkpoint.
        #[arg(long, default_value = trunkline_agent::migrate::aws_node_checkpoint::DEFAULT_PATH)]
        aws_node_checkpoint: PathBuf,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Where aws-network-policy-agent pins its per-pod programs; any
        /// there blocks the migration (trunkline does not enforce
        /// NetworkPolicy yet).
        #[arg(long, env = "TRUNKLINE_NETWORK_POLICY_PINS", default_value = trunkline_agent::migrate::network_policy::DEFAULT_PINS)]
        network_policy_pins: PathBuf,
    },
    /// Probe the running kernel: the BPF features the data path needs and
    /// the attach mode it gets (TCX from 6.6, else clsact + cls_bpf). Exits
    /// non-zero with one line naming what is missing below the floor (6.1).
    CheckKernel {
        /// Also load every program into the verifier and print its cost.
        #[arg(long)]
        load: bool,
        /// The kernel object for `--load` (default: the embedded one).
        #[arg(long, env = "TRUNKLINE_EBPF_OBJECT")]
        ebpf_object: Option<PathBuf>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the pinned maps (works while the agent is down).
    Inspect {
        #[command(subcommand)]
        what: InspectWhat,
        /// The bpffs directory the maps are pinned under.
        #[arg(
            long,
            env = "TRUNKLINE_BPF_ROOT",
            default_value = "/sys/fs/bpf/trunkline",
            global = true
        )]
        bpf_root: PathBuf,
        /// JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Local mode: the node's ENIs, IPs and branch pods from a TOML file.
    /// Without it the agent runs in AWS mode: the node from IMDS, pod IPs
    /// from the EC2 warm pool (aws-node's WARM_* variables).
    #[arg(long, env = "TRUNKLINE_NODE_FILE")]
    node_file: Option<PathBuf>,
    /// The bpffs directory maps and links are pinned under.
    #[arg(
        long,
        env = "TRUNKLINE_BPF_ROOT",
        default_value = "/sys/fs/bpf/trunkline"
    )]
    bpf_root: PathBuf,
    /// The unix socket trunkline-cni connects to (created 0600).
    #[arg(long, env = "TRUNKLINE_SOCKET", default_value = trunkline_rpc::DEFAULT_AGENT_SOCKET)]
    socket: PathBuf,
    /// Where the checkpoint lives.
    #[arg(
        long,
        env = "TRUNKLINE_STATE_DIR",
        default_value = "/var/lib/trunkline"
    )]
    state_dir: PathBuf,
    /// Prometheus metrics listen address (GET /metrics).
    #[arg(long, env = "TRUNKLINE_METRICS_ADDR", default_value = "0.0.0.0:61678")]
    metrics_addr: String,
    /// Introspection API listen address (GET /v1/pods, /v1/enis, /v1/config).
    #[arg(
        long,
        env = "TRUNKLINE_INTROSPECTION_ADDR",
        default_value = "127.0.0.1:61679"
    )]
    introspection_addr: String,
    /// A kernel object other than the one the build embedded (the build
    /// script builds dataplane-ebpf; `cargo xtask build-ebpf --release`
    /// prints the path of a fresh one).
    #[arg(long, env = "TRUNKLINE_EBPF_OBJECT")]
    ebpf_object: Option<PathBuf>,
    /// MTU the CNI plugin gives pods when its config sets none.
    #[arg(long, env = "TRUNKLINE_MTU", default_value_t = 9001)]
    mtu: u32,
    /// Seconds a released pod IP waits before it is handed out again.
    #[arg(long, env = "TRUNKLINE_IP_COOLDOWN", default_value_t = 30)]
    ip_cooldown: u64,
    /// Entries of the conntrack and SNAT tables (each), applied when they
    /// are created. Default: 32,768 per CPU, at least 262,144.
    #[arg(long, env = "TRUNKLINE_CONNTRACK_MAX", value_parser = clap::value_parser!(u32).range(1024..=67_108_864))]
    conntrack_max: Option<u32>,
    /// At start, take over the pods of aws-node's checkpoint (as `migrate`
    /// does) if the file exists; it is renamed `*.migrated` afterwards.
    #[arg(
        long,
        env = "TRUNKLINE_MIGRATE_FROM_AWS_NODE",
        value_name = "IPAM_JSON",
        num_args = 0..=1,
        default_missing_value = trunkline_agent::migrate::aws_node_checkpoint::DEFAULT_PATH
    )]
    migrate_from_aws_node: Option<PathBuf>,
    /// Kubernetes mode (security groups for pods): the apiserver's
    /// kubeconfig. Unset: the in-cluster service account when running in a
    /// pod, else local mode.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// This node's name (`spec.nodeName` of its pods). Default: MY_NODE_NAME,
    /// else NODE_NAME.
    #[arg(long)]
    node_name: Option<String>,
    /// Seconds AddPod waits for the pod-eni annotation of a pod that
    /// requests vpc.amazonaws.com/pod-eni.
    #[arg(long, env = "TRUNKLINE_POD_ENI_WAIT", default_value_t = trunkline_agent::cloud::kube::DEFAULT_POD_ENI_WAIT_SECS)]
    pod_eni_wait: u64,
}

impl RunArgs {
    fn config(self) -> RunConfig {
        RunConfig {
            node_file: self.node_file.unwrap_or_default(),
            bpf_root: self.bpf_root,
            socket: self.socket,
            state_dir: self.state_dir,
            metrics_addr: self.metrics_addr,
            introspection_addr: self.introspection_addr,
            ebpf_object: self.ebpf_object,
            mtu: self.mtu,
            ip_cooldown: Duration::from_secs(self.ip_cooldown),
            conntrack_max: self.conntrack_max,
            migrate_from_aws_node: self.migrate_from_aws_node,
            kube: trunkline_agent::config::KubeSettings {
                kubeconfig: self.kubeconfig,
                node_name: self.node_name.or_else(|| {
                    trunkline_agent::cloud::kube::node_name_from_env(|k| std::env::var(k).ok())
                }),
                pod_eni_wait: Duration::from_secs(self.pod_eni_wait),
                in_cluster: std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
            },
        }
    }
}

use trunkline_agent::dataplane::kernel;

/// Refuses to go on below the floor, with the probe's one line.
fn supported_kernel() -> anyhow::Result<()> {
    let k = kernel::probe().map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(kernel = %k.version, attach = ?k.attach, "kernel supported");
    Ok(())
}

fn check_kernel(load: bool, object: Option<&std::path::Path>, json: bool) -> anyhow::Result<()> {
    let k = kernel::probe().map_err(|e| anyhow::anyhow!("{e}"))?;
    let costs = if load {
        let bytes = trunkline_agent::object::load(object)?;
        let costs = kernel::load_report(&bytes)
            .map_err(|e| anyhow::anyhow!("kernel {}: {e}", k.version))?;
        Some(costs)
    } else {
        None
    };
    if json {
        let v = serde_json::json!({
            "kernel": k.version,
            "attach": format!("{:?}", k.attach).to_lowercase(),
            "programs": costs,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "kernel {}: supported, attach mode {}",
        k.version,
        format!("{:?}", k.attach).to_lowercase()
    );
    if let Some(costs) = costs {
        println!(
            "{:<10} {:>14} {:>13} {:>12} {:>10}",
            "program", "verified insns", "xlated bytes", "jited bytes", "load ms"
        );
        for c in &costs {
            let opt = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
            println!(
                "{:<10} {:>14} {:>13} {:>12} {:>10.1}",
                c.program,
                opt(c.verified_insns),
                opt(c.xlated_bytes),
                c.jited_bytes,
                c.load_us as f64 / 1e3
            );
        }
    }
    Ok(())
}

#[derive(Subcommand, Clone, Copy)]
enum InspectWhat {
    /// PODS: pod IP → host veth, pod MAC, owning ENI, VLAN, branch MAC.
    Pods,
    /// ENIS: ifindex → role, MAC, primary IP, gateway.
    Enis,
    /// CT: the conntrack table.
    Ct,
    /// SNAT_REV: reply tuple → original tuple.
    Nat,
    /// Packet counters by program: verdicts, what the parser saw, drops by reason.
    Stats,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(a) => {
            supported_kernel()?;
            let aws = a.node_file.is_none();
            let config = a.config();
            if aws {
                let (config, mut found) = trunkline_agent::cloud::aws::prepare(config)?;
                trunkline_agent::cloud::aws::bring_up(&mut found)?;
                let node = found.spec.clone();
                trunkline_agent::serve::run_with(
                    config,
                    node,
                    Box::new(move |agent| trunkline_agent::cloud::aws::spawn(agent, found)),
                )?
            } else {
                let node = NodeSpec::load(&config.node_file)?;
                trunkline_agent::serve::run(config, node)?
            }
        }
        Command::Migrate {
            run,
            aws_node_checkpoint,
            dry_run,
            network_policy_pins,
        } => {
            if !dry_run {
                supported_kernel()?;
            }
            let aws = run.node_file.is_none();
            let (config, node) = if aws {
                // The node from IMDS.
                let (config, mut found) = trunkline_agent::cloud::aws::prepare(run.config())?;
                if !dry_run {
                    trunkline_agent::cloud::aws::bring_up(&mut found)?;
                }
                (config, found.spec)
            } else {
                let config = run.config();
                let node = NodeSpec::load(&config.node_file)?;
                (config, node)
            };
            if dry_run {
                let policy_api = trunkline_agent::migrate::network_policy::check_api_blocking(
                    config.kube.access(),
                    node.node.primary_ip,
                );
                let plan = trunkline_agent::migrate::plan(
                    &node,
                    |ip| trunkline_agent::migrate::pool_of(&node, ip),
                    &aws_node_checkpoint,
                    &network_policy_pins,
                    &policy_api,
                )?;
                println!("migration plan (dry run, nothing changed):\n{plan}");
                if !plan.blockers.is_empty() {
                    anyhow::bail!("{} blocker(s)", plan.blockers.len());
                }
            } else {
                let report = trunkline_agent::migrate::run_once(
                    config,
                    node,
                    &aws_node_checkpoint,
                    &network_policy_pins,
                )?;
                println!(
                    "migrated: {} pod(s) adopted, {} SNAT and {} via-stack connection(s) copied, {} legacy object(s) removed",
                    report.adopted, report.snat_flows, report.via_stack_flows, report.removed
                );
            }
        }
        Command::InstallCni {
            plugin,
            bin_dir,
            conf_dir,
            mtu,
            socket,
        } => {
            trunkline_agent::install_cni::install(&plugin, &bin_dir, &conf_dir, mtu, &socket)
                .context("installing the CNI plugin")?;
            println!(
                "installed {} and {}",
                bin_dir.join("trunkline-cni").display(),
                conf_dir
                    .join(trunkline_agent::install_cni::CONFLIST)
                    .display()
            );
        }
        Command::Health {
            socket,
            timeout_secs,
        } => {
            if let Err(why) = trunkline_agent::serve::health::check(
                &socket,
                std::time::Duration::from_secs(timeout_secs),
            ) {
                // An agent that refused this kernel never opens its socket:
                // say why, not only that nobody answers.
                if let Err(kernel) = kernel::probe() {
                    anyhow::bail!("{kernel}");
                }
                anyhow::bail!("{why}");
            }
        }
        Command::CheckKernel {
            load,
            ebpf_object,
            json,
        } => check_kernel(load, ebpf_object.as_deref(), json)?,
        Command::Inspect {
            what,
            bpf_root,
            json,
        } => {
            use trunkline_agent::inspect;
            let out = match what {
                InspectWhat::Pods => inspect::pods(&bpf_root, json),
                InspectWhat::Enis => inspect::enis(&bpf_root, json),
                InspectWhat::Ct => inspect::ct(&bpf_root, json),
                InspectWhat::Nat => inspect::nat(&bpf_root, json),
                InspectWhat::Stats => inspect::stats::stats(&bpf_root, json),
            }
            .with_context(|| format!("reading maps pinned under {}", bpf_root.display()))?;
            println!("{out}");
        }
    }
    Ok(())
}
