//! `husk`: the command-line tool. Checks whether this host can run husk, builds guest images,
//! boots VMs, runs containers, opens sessions in running sandboxes and benchmarks them.
//!
//! This file owns argument parsing, logging set-up and exit codes. Each subcommand lives in its
//! own module and must never call `std::process::exit` itself.

mod bench;
mod bench_run;
mod bench_vmm;
mod bench_vsock;
mod check;
mod console_session;
mod env;
mod exec;
mod exit;
mod image;
mod ps;
mod run;
mod table;
mod telemetry;
mod terminal;
mod trace;
mod vm;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use husk_hypervisor::BackendChoice;

#[derive(Debug, Parser)]
#[command(
    name = "husk",
    version,
    about = "husk: every container in its own lightweight VM"
)]
struct Cli {
    /// Log level for husk's own logs (error, warn, info, debug, trace); also RUST_LOG.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Can this host run husk, and how? (exit 0: yes, 3: no)
    Check {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run a command from an image in a fresh VM; its exit code becomes husk's.
    Run(Box<run::RunArgs>),
    /// List running sandboxes (from `husk run` and from containerd).
    Ps {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Configuration file (for the state directory).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run a command (or a shell) in a running sandbox's guest, through its console; the
    /// remote exit code becomes husk's.
    Exec(Box<exec::ExecArgs>),
    /// An interactive shell in a running sandbox's guest (`husk exec -t -i SANDBOX`).
    Console(exec::ConsoleArgs),
    /// Print the effective configuration: every key, its value and where it came from.
    Env(env::EnvArgs),
    /// Guest VMs.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Guest images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Traces in husk's local trace store: list, show as a waterfall, export as JSON.
    #[command(subcommand)]
    Trace(trace::TraceCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// Options shared by every command that boots a VM. Each one left out comes from husk's
/// configuration (`husk env` shows it).
#[derive(Debug, Clone, clap::Args)]
pub struct BootArgs {
    /// Configuration file (default: $HUSK_CONFIG, else /etc/husk/config.toml), with the
    /// drop-ins in config.d/ beside it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Boot the debug image (busybox and a shell on the serial console).
    #[arg(long)]
    pub debug: bool,
    /// Guest kernel (default: hypervisor.kernel).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Guest image (default: hypervisor.image, or the debug image with --debug).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Back end: auto, qemu or builtin (default: hypervisor.backend).
    #[arg(long)]
    pub backend: Option<BackendChoice>,
    /// Guest memory in MiB (default: hypervisor.memory_mib).
    #[arg(long)]
    pub memory: Option<u32>,
    /// Virtual CPUs (default: hypervisor.vcpus).
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Seconds to wait for the guest to report ready (default: agent.ready_timeout_secs).
    #[arg(long)]
    pub timeout: Option<u64>,
    /// Extra kernel command-line words, after hypervisor.kernel_params.
    #[arg(long = "append", value_name = "WORD")]
    pub append: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum VmCommand {
    /// Boot a VM, wait for init, print a boot report and shut it down cleanly.
    Boot {
        #[command(flatten)]
        boot: BootArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build a guest image (reproducible initramfs with husk-init and a manifest).
    Build(image::BuildArgs),
    /// Make a busybox container image (a root filesystem) from Debian's busybox-static.
    Busybox(image::BusyboxArgs),
    /// List the guest images in $HUSK_HOME/images with what their manifests say.
    List(image::ListArgs),
    /// Print one guest image's manifest: components, services, SELinux policy.
    Show(image::ShowArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Boot time: husk's image against the same kernel with a busybox-only initramfs.
    Boot(bench::BootBenchArgs),
    /// `husk run` latency, agent RPC round trip and stdout throughput against references.
    Run(bench_run::RunBenchArgs),
    /// husk's vhost-user vsock device against vhost-device-vsock: RPC latency, throughput.
    Vsock(bench_vsock::VsockBenchArgs),
    /// husk's KVM VMM against bare kvm-ioctls: build → first instruction, IO exits/s, memory.
    Vmm(bench_vmm::VmmBenchArgs),
}

fn init_logging(level: &str, traced: Option<&husk_trace::HostTracing>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_filter(filter);
    tracing_subscriber::registry()
        .with(fmt)
        .with(traced.map(|t| t.telemetry.layer()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The commands that make sandboxes or sessions trace them (`[tracing] enabled`).
    let traced = match &cli.command {
        Command::Run(args) => telemetry::start(args.boot.config.as_deref()),
        Command::Exec(args) => telemetry::start(args.config.as_deref()),
        Command::Console(args) => telemetry::start(args.config.as_deref()),
        _ => None,
    };
    init_logging(&cli.log, traced);
    terminal::restore_on_panic();
    let result = match cli.command {
        Command::Check { json } => check::run(json),
        // Every failure of husk itself is 125, so it never reads as the container's own code.
        Command::Run(args) => run::run(&args).map_err(|e| {
            if e.chain()
                .any(|c| c.downcast_ref::<run::RunError>().is_some())
            {
                e
            } else {
                anyhow::Error::new(run::RunError {
                    code: run::RUN_FAILED,
                    message: format!("{e:#}"),
                })
            }
        }),
        Command::Ps { json, config } => ps::run(json, config.as_deref()),
        Command::Exec(args) => exec::run(&args),
        Command::Console(args) => exec::run(&exec::ExecArgs::from(&args)),
        Command::Env(args) => env::run(&args),
        Command::Vm(VmCommand::Boot { boot, json }) => vm::boot(&boot, json),
        Command::Image(ImageCommand::Build(args)) => image::build(&args),
        Command::Image(ImageCommand::Busybox(args)) => image::busybox(&args),
        Command::Image(ImageCommand::List(args)) => image::list(&args),
        Command::Image(ImageCommand::Show(args)) => image::show(&args),
        Command::Trace(cmd) => trace::run(&cmd),
        Command::Bench(BenchCommand::Boot(args)) => bench::boot(&args),
        Command::Bench(BenchCommand::Run(args)) => bench_run::run(&args),
        Command::Bench(BenchCommand::Vsock(args)) => bench_vsock::run(&args),
        Command::Bench(BenchCommand::Vmm(args)) => bench_vmm::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("husk: error: {err:#}");
            exit::code_for(&err)
        }
    }
}
