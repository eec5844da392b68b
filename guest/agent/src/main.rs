//! husk-agent: the guest's ttrpc server for `husk.agent.v1` and `husk.health.v1` on vsock
//! port [`husk_protocols::ports::AGENT_PORT`]. husk-init starts it and restarts it if it dies.
//!
//! This file owns start-up, the listener and signal handling. Request handling lives in
//! [`rpc`]; it must never run here.

mod confine;
mod container;
mod guest_info;
mod network;
mod rpc;
mod sandbox;

use anyhow::Context;
use husk_protocols::ports::AGENT_PORT;

/// The vsock address the agent listens on (any CID).
fn listen_address() -> String {
    std::env::args()
        .skip_while(|a| a != "--listen")
        .nth(1)
        .unwrap_or_else(|| format!("vsock://-1:{AGENT_PORT}"))
}

/// How long in-flight requests get to finish when the agent stops.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// `husk.agent.claim_major=N` on the kernel command line (compatibility tests only).
fn claimed_major() -> Option<u32> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    let major =
        husk_protocols::cmdline::lookup(&cmdline, husk_protocols::cmdline::AGENT_CLAIM_MAJOR)?
            .parse()
            .ok()?;
    tracing::warn!(
        major,
        "announcing another protocol major, as the kernel command line asks"
    );
    Some(major)
}

fn main() -> anyhow::Result<()> {
    // The agent's binary started again as a container's jail process (rustjail::launch).
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(rustjail::jail::ARG)) {
        rustjail::jail::main();
    }
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("husk-agent {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    // How containers are confined with seccomp (the image builder records it).
    if std::env::args().nth(1).as_deref() == Some("--seccomp") {
        println!("{}", rustjail::seccomp::describe());
        return Ok(());
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    // Before the agent confines itself: the batch thread is started here.
    let telemetry =
        husk_telemetry::init_guest_logging(&cmdline, Some(husk_telemetry::service::AGENT));
    // Containers and hooks are forked on the launcher thread, outside the agent's own filter.
    rustjail::launcher::start().context("starting the launcher thread")?;
    let mode = confine::Mode::from_cmdline(&cmdline).map_err(anyhow::Error::msg)?;
    confine::apply(mode).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let served = runtime.block_on(serve(&listen_address()));
    // husk-init stops the tracer only after the agent has gone: hand it every span first.
    if let Some(t) = &telemetry {
        if !t.flush(FLUSH_TIMEOUT) {
            tracing::warn!("not every span reached husk-tracer before the agent stopped");
        }
    }
    served
}

/// How long the agent waits at its end for its spans to reach husk-tracer.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

async fn serve(address: &str) -> anyhow::Result<()> {
    let containers = std::sync::Arc::new(container::Containers::new(container::Paths::guest()));
    let sandbox = std::sync::Arc::new(sandbox::Sandbox::new("/etc"));
    // `--no-stdio` runs the RPC server alone, e.g. on a host without vsock as a benchmark's
    // reference; in the guest the stdio listener is part of the agent and its failure is fatal.
    let stdio = if std::env::args().any(|a| a == "--no-stdio") {
        tokio::spawn(std::future::pending())
    } else {
        tokio::spawn(container::stdio::serve(containers.clone()))
    };
    let mut server = ttrpc::r#async::Server::new()
        .bind(address)
        .with_context(|| format!("listening on {address}"))?
        .register_service(
            rpc::AgentService::new("/", containers, sandbox)
                .claiming_major(claimed_major())
                .services(),
        );
    server.start().await.context("starting the ttrpc server")?;
    tracing::info!(address, "husk-agent {} serving", env!("CARGO_PKG_VERSION"));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("stopping"),
        r = stdio => anyhow::bail!("the stdio listener stopped: {r:?}"),
    }
    // In-flight long polls (GetOOMEvent) never finish by themselves: do not wait for them
    // past a moment, or husk-init's grace period runs out and the VM's shutdown takes seconds.
    match tokio::time::timeout(SHUTDOWN_GRACE, server.shutdown()).await {
        Ok(r) => r.context("stopping the ttrpc server")?,
        Err(_) => tracing::info!("requests still open at shutdown were dropped"),
    }
    Ok(())
}
