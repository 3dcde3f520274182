//! pytier node agent.
//!
//! `node-agent serve` is the DaemonSet process (see `serve`). Standalone mode
//! (`node-agent run -- python3 app.py`) works on one machine without
//! Kubernetes: it prints the NUMA topology, runs the program under the
//! interposer and prints what the interposer sees, with the same control
//! client and stats types.

mod cgroups;
mod control;
mod decide;
mod metrics;
mod outlook;
mod processes;
mod report;
mod serve;
mod shim;
mod sockets;
mod standalone;
mod topology;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use pytier_crds::node::NumaNode;

#[derive(Parser)]
#[command(name = "node-agent", version, about = "pytier node agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Cluster mode, the DaemonSet process: tier the pods this node's
    /// TieringNode lists, report status and serve metrics.
    Serve(Box<serve::ServeArgs>),
    /// Standalone mode: print this machine's memory tiers, then run PROGRAM
    /// (a Python command) under the interposer and print its statistics.
    Run {
        #[command(flatten)]
        topology: TopologyArgs,
        /// Directory of the interposer shim (default: `pytier-shim` beside this
        /// binary's directory, where `interposer/build-shim.sh` puts it).
        #[arg(long, env = "PYTIER_SHIM")]
        shim: Option<PathBuf>,
        /// Interposer settings as JSON, in the TieringPolicy's shape, e.g.
        /// '{"tracking": {"hotThreshold": 2}}'.
        #[arg(long)]
        config: Option<String>,
        /// Seconds between two statistics lines.
        #[arg(long, default_value_t = 2.0)]
        every: f64,
        /// DRAM budget per process: a share of its heap (`25%`, the default)
        /// or bytes (`512MiB`). Without a CXL node, the screen shows what CXL
        /// would do under it.
        #[arg(long)]
        dram_budget: Option<String>,
        /// CXL's extra latency over DRAM, in nanoseconds per access that
        /// misses the CPU caches (about +70 to 90 ns).
        #[arg(long, default_value_t = outlook::DEFAULT_CXL_EXTRA_NS)]
        cxl_extra_ns: f64,
        /// Print one JSON document at exit (every look and the last stats)
        /// instead of lines.
        #[arg(long)]
        json: bool,
        /// Write a picture of the run at exit: temperatures over time and
        /// bytes per tier (`FILE.html`, or `FILE.svg` for the picture alone).
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// The program to run, after `--`.
        #[arg(last = true)]
        program: Vec<String>,
    },
    /// Install the interposer shim into the host directory pods mount (what
    /// `serve` does at start), and print the version made current.
    InstallShim {
        /// The shim to install (default: `pytier-shim` beside this binary's directory).
        #[arg(long, env = "PYTIER_SHIM")]
        shim: Option<PathBuf>,
        /// Host directory the webhook mounts into pods as the shim.
        #[arg(long, default_value = "/var/lib/pytier/shim")]
        shim_host_dir: PathBuf,
    },
    /// Print the NUMA nodes and the tier each is assigned.
    Topology {
        #[command(flatten)]
        topology: TopologyArgs,
        /// Print JSON (the TieringNode status `numaNodes` format).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct TopologyArgs {
    /// NUMA nodes to treat as DRAM whatever discovery finds (for example `0,1`).
    #[arg(long, value_delimiter = ',')]
    dram_nodes: Vec<u32>,
    /// NUMA nodes to treat as CXL whatever discovery finds.
    #[arg(long, value_delimiter = ',')]
    cxl_nodes: Vec<u32>,
    /// Root of sysfs to read.
    #[arg(long, default_value = "/sys", hide = true)]
    sysfs: PathBuf,
}

impl TopologyArgs {
    fn discover(&self) -> Result<Vec<NumaNode>> {
        let facts = topology::read_facts(&self.sysfs)?;
        let overrides = topology::Overrides {
            dram: self.dram_nodes.iter().copied().collect(),
            cxl: self.cxl_nodes.iter().copied().collect(),
        };
        topology::classify(&facts, &overrides)
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("node-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            pytier_admin::init_logging();
            let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
            runtime.block_on(serve::run(*args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::InstallShim { shim, shim_host_dir } => {
            let installed = shim::install(&standalone::find_shim(shim)?, &shim_host_dir)?;
            let what = if installed.switched { "now current" } else { "already current" };
            println!("shim {} {what} in {}", installed.version, shim_host_dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Topology { topology, json } => {
            let nodes = topology.discover()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                print_table(&nodes);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { topology, shim, config, every, dram_budget, cxl_extra_ns, json, report, program } => {
            let nodes = topology.discover()?;
            let has_cxl = nodes.iter().any(|n| n.tier == pytier_crds::node::Tier::Cxl);
            if !json {
                print_table(&nodes);
                if !has_cxl {
                    println!("no CXL node found: showing what CXL would do (+{cxl_extra_ns} ns per access)");
                }
            }
            if program.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            if every.is_nan() || every <= 0.0 {
                anyhow::bail!("--every must be a positive number of seconds");
            }
            if !(cxl_extra_ns.is_finite() && cxl_extra_ns >= 0.0) {
                anyhow::bail!("--cxl-extra-ns must be a number of nanoseconds, 0 or more");
            }
            let config = standalone::settings(config.as_deref(), dram_budget.as_deref())?;
            let shim = standalone::find_shim(shim)?;
            let screen = standalone::Screen {
                every: std::time::Duration::from_secs_f64(every),
                has_cxl,
                cxl_extra_ns,
                json,
                report,
            };
            standalone::run(&program, &shim, config.as_deref(), &screen)
        }
    }
}

fn print_table(nodes: &[NumaNode]) {
    println!("{:<5} {:<5} {:<14} {:<10} {:>12} {:>12}", "NODE", "TIER", "SOURCE", "CPUS", "CAPACITY", "FREE");
    for n in nodes {
        let cpus = if n.cpus.is_empty() { "-" } else { &n.cpus };
        println!(
            "{:<5} {:<5} {:<14} {:<10} {:>12} {:>12}",
            n.id,
            metrics::api_name(&n.tier),
            metrics::api_name(&n.source),
            cpus,
            mib(n.capacity_bytes),
            mib(n.free_bytes)
        );
    }
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}
