//! The shim's tracing (`[tracing] enabled`): its spans, and its guests', go to husk-trace's
//! pipeline (the local store under the state directory, and the OTLP collector in the
//! configuration).
//!
//! Owns the process-wide set-up, made once at start-up before any span. Must never trace the
//! short-lived `start` and `delete` invocations (they have nothing to say), and never fail the
//! shim: a tracing set-up that cannot start is logged and left off.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use husk_config::Config;
use husk_telemetry::{service, SpanSink, Telemetry};
use husk_trace::{Pipeline, PipelineConfig};
use tracing_subscriber::layer::SubscriberExt;

/// How long the shim waits at its end for its spans to be stored and exported.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The serving shim's tracing.
#[derive(Debug, Clone)]
pub struct ShimTracing {
    pub telemetry: Telemetry,
    pub pipeline: Arc<Pipeline>,
}

impl ShimTracing {
    /// Exports what has ended and waits for the pipeline to store and send it.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.telemetry.flush(timeout) && self.pipeline.flush(timeout)
    }
}

static TRACING: OnceLock<ShimTracing> = OnceLock::new();

/// The shim's tracing, when on.
pub fn get() -> Option<&'static ShimTracing> {
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
    if !config.tracing.enabled {
        return;
    }
    let pipeline = match Pipeline::start(PipelineConfig::from(&config)) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "tracing is on but its pipeline cannot start: tracing off");
            return;
        }
    };
    let sink: Arc<dyn SpanSink> = pipeline.clone();
    let telemetry = Telemetry::new(service::SHIM, sink);
    let subscriber = tracing_subscriber::registry().with(telemetry.layer());
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        return;
    }
    let _ = TRACING.set(ShimTracing {
        telemetry,
        pipeline,
    });
}
