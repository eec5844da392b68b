//! The shim's tracing (`[tracing] enabled`): its spans, and its guests', go to husk-trace's
//! pipeline (the local store under the state directory, and the OTLP collector in the
//! configuration).
//!
//! Owns the process-wide set-up, made once at start-up before any span. Must never trace the
//! short-lived `start` and `delete` invocations (they have nothing to say), and never fail the
//! shim: a tracing set-up that cannot start is logged and left off.

use std::sync::OnceLock;

use husk_config::Config;
use husk_telemetry::service;
use husk_trace::HostTracing;
use tracing_subscriber::layer::SubscriberExt;

static TRACING: OnceLock<HostTracing> = OnceLock::new();

/// The shim's tracing, when on.
pub fn get() -> Option<&'static HostTracing> {
    TRACING.get()
}

/// Turns tracing on for the serving shim when the configuration asks for it.
pub fn install() {
    let action = std::env::args().skip(1).last().unwrap_or_default();
    if action == "start" || action == "delete" {
        return;
    }
    let Ok(config) = Config::load(None) else {
        return; // reported to containerd on Create
    };
    let traced = match HostTracing::start(service::SHIM, &config) {
        Ok(Some(t)) => t,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "tracing is on but its pipeline cannot start: tracing off");
            return;
        }
    };
    let subscriber = tracing_subscriber::registry().with(traced.telemetry.layer());
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        let _ = TRACING.set(traced);
    }
}
