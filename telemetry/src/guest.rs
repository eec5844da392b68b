//! The logging and tracing every husk process in the guest sets up the same way (husk-init,
//! the agent, the console): logs to stderr, which is the serial console, at the level
//! `husk.log=` asks for (INFO by default); with `husk.tracing=1`, spans to husk-tracer too.
//!
//! Owns that one set-up. Must never start tracing the command line did not ask for: without
//! `husk.tracing=1` there is no span layer, no batch thread and no socket.

use std::sync::Arc;

use husk_protocols::cmdline;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::{Telemetry, TracerSocket};

/// Installs the process's subscriber for the guest's kernel command line `cmdline_text`; the
/// process's tracing, when the command line turns it on and the process traces at all
/// (`service`: its `service.name`; none for husk-tracer, which forwards spans and makes none).
/// Call once, after blocking any signals the process takes through a signalfd: the batch
/// thread inherits the caller's mask.
pub fn init_guest_logging(cmdline_text: &str, service: Option<&'static str>) -> Option<Telemetry> {
    let level = cmdline::lookup(cmdline_text, cmdline::LOG_LEVEL)
        .and_then(|l| l.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_filter(level);
    let telemetry = service
        .filter(|_| cmdline::lookup(cmdline_text, cmdline::TRACING) == Some("1"))
        .map(|service| Telemetry::new(service, Arc::new(TracerSocket::new())));
    tracing_subscriber::registry()
        .with(fmt)
        .with(telemetry.as_ref().map(|t| t.layer()))
        .init();
    telemetry
}
