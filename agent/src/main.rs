//! trunkline-agent: the node daemon's command line.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

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

#[derive(Subcommand, Clone, Copy)]
enum InspectWhat {
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
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Inspect {
            what,
            bpf_root,
            json,
        } => {
            let out = match what {
                InspectWhat::Stats => trunkline_agent::inspect::stats(&bpf_root, json),
            }
            .with_context(|| format!("reading maps pinned under {}", bpf_root.display()))?;
            println!("{out}");
        }
    }
    Ok(())
}
