//! husk-tracer: receives OTLP spans from the guest's husk processes on the local socket
//! `/run/husk/tracer.sock` and forwards them to the host over vsock port 10240, each batch
//! kept until the host acknowledges it (ARCHITECTURE.md §5; the wire: `husk_protocols::trace_wire`).
//!
//! Started by husk-init only when the kernel command line sets `husk.tracing=1`, as
//! `/usr/bin/husk-tracer` without arguments, before the other services; stopped last, with
//! SIGTERM, after the services whose spans it forwards have exited: it then flushes
//! ([`tracer::Tracer::shutdown`]) and exits 0.
//!
//! This file owns arguments, logging, signals and the exit line. It must never create spans of
//! its own (no OpenTelemetry layer: the tracer forwarding its own spans would feed itself).

mod buffer;
mod error;
mod forwarder;
mod listener;
mod ratelimit;
mod tracer;
mod uplink;

use std::process::ExitCode;

use anyhow::Context;
use nix::sys::signal::{SigSet, Signal};

use crate::tracer::{Config, Tracer};
use crate::uplink::{Uplink, Vsock};

const USAGE: &str = "usage: husk-tracer [--version]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {}
        [v] if v == "--version" => {
            println!("husk-tracer {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("husk-tracer: unknown arguments {args:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    // Logs at `husk.log=`'s level (two lines in a tracer's life, started and stopped, and
    // warnings when spans are lost); no spans of its own.
    husk_telemetry::init_guest_logging(
        &std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
        None,
    );
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    // Blocked before any thread starts, so every thread inherits the mask and the signals wait
    // for `wait` below.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals
        .thread_block()
        .context("blocking SIGTERM and SIGINT")?;
    let config = Config::default();
    let socket = config.socket.clone();
    let tracer = Tracer::start(config, Vsock::HOST)?;
    tracing::info!(
        "husk-tracer {} listening on {}, forwarding to {}",
        env!("CARGO_PKG_VERSION"),
        socket.display(),
        Vsock::HOST.describe()
    );
    let signal = signals.wait().context("waiting for SIGTERM")?;
    let s = tracer.shutdown();
    let lost = if s.undelivered > 0 {
        format!(
            " ({} of them not acknowledged by the deadline)",
            s.undelivered
        )
    } else {
        String::new()
    };
    tracing::info!(
        "husk-tracer stopped on {signal}: {} spans forwarded, {} dropped{lost}",
        s.forwarded,
        s.dropped + s.undelivered
    );
    Ok(())
}
