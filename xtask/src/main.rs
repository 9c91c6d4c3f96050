//! `cargo xtask ...`: the project's own build, test and demo driver. It
//! installs what a fresh machine lacks (nightly rust-src, bpf-linker built
//! against the nightly's LLVM, Debian packages) so that nobody has to.

mod ebpf;
mod packages;
mod paths;
mod pyvenv;
mod run;
mod toolchain;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing and build the kernel object (with BTF).
    BuildEbpf {
        /// Optimised object (what the agent ships and the tests load).
        #[arg(long)]
        release: bool,
    },
    /// Build the kernel object and the whole workspace.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Install what is missing, build, and run every test (host unit tests,
    /// golden-packet tests, network-namespace end-to-end tests).
    Test {
        /// Only the host kernel: skip the QEMU kernel matrix that runs after
        /// the host tests (it is also skipped when a test filter is given).
        #[arg(long)]
        host_only: bool,
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build what is missing and run the demo: a simulated node with real traffic.
    Demo,
    /// Run the test binaries on the kernels EKS nodes run: Debian's 6.1 and
    /// 6.12 LTS builds booted under QEMU (and 5.10, which the agent must
    /// refuse), and the host kernel; prints a kernel × suite table.
    VmTest {
        /// host, 6.1, 6.12, 5.10 or all (comma-separated list allowed).
        #[arg(long, default_value = "all")]
        kernel: String,
        /// verifier, golden, agent or all (comma-separated list allowed).
        #[arg(long, default_value = "all")]
        suite: String,
        /// A test name filter passed to every test binary.
        filter: Vec<String>,
    },
    /// Measure trunkline against the legacy plumbing and plain routing in one
    /// run (throughput, pps, connection rate, latency) and the per-packet
    /// program cost; results under bench/results/.
    Bench {
        /// Short measurements (2 s each).
        #[arg(long)]
        quick: bool,
        /// Only the conntrack costs (GC pass at 1M flows, port search
        /// attempts at 50/90/99 % occupancy), as JSON on stdout.
        #[arg(long)]
        conntrack: bool,
        /// Only CPU per packet under a fixed load (baseline, legacy,
        /// trunkline, interleaved rounds) and the programs' own cost.
        #[arg(long)]
        cpu: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::BuildEbpf { release } => {
            let obj = ebpf::build(release)?;
            println!("{}", obj.display());
        }
        Command::Build { release } => {
            let obj = ebpf::build(true)?;
            run::cargo_build_workspace(&obj, release)?;
        }
        Command::Test { host_only, args } => run::test(&args, host_only)?,
        Command::Demo => run::demo()?,
        Command::VmTest {
            kernel,
            suite,
            filter,
        } => vm::vm_test(&kernel, &suite, &filter)?,
        Command::Bench {
            quick,
            conntrack,
            cpu,
        } => run::bench(quick, conntrack, cpu)?,
    }
    Ok(())
}
