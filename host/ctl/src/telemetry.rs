//! The CLI's tracing (`[tracing] enabled`): `husk run` traces its sandbox as the shim does a
//! pod (its own spans, and its guest's, to the local store and the OTLP collector), and
//! `husk exec` hands its context to the guest console.
//!
//! Owns the CLI's pipeline and SDK, made before logging is set up (the tracing layer is part of
//! the process's subscriber). Must never trace a command that does not make sandboxes or
//! sessions (`husk ps`, `husk trace`), and never fail one: a pipeline that cannot start is a
//! warning, and tracing stays off.

use std::sync::OnceLock;

use husk_telemetry::service;
use husk_trace::HostTracing;

static TRACING: OnceLock<HostTracing> = OnceLock::new();

/// Turns tracing on when the configuration (`--config FILE`, or the usual one) asks for it;
/// the tracing, when on. Called before logging is set up, as the tracing layer is part of the
/// process's subscriber: a configuration that does not load is left to the command to report.
pub fn start(config: Option<&std::path::Path>) -> Option<&'static HostTracing> {
    let config = husk_config::Config::load(config).ok()?;
    match HostTracing::start(service::CLI, &config) {
        Ok(Some(t)) => {
            let _ = TRACING.set(t);
            TRACING.get()
        }
        Ok(None) => None,
        Err(e) => {
            eprintln!(
                "husk: warning: tracing is on but its pipeline cannot start ({e}): not tracing"
            );
            None
        }
    }
}

/// The CLI's tracing, when a command turned it on.
pub fn get() -> Option<&'static HostTracing> {
    TRACING.get()
}
