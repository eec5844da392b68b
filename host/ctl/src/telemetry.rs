//! The CLI's tracing (`[tracing] enabled`): `husk run` traces its sandbox as the shim does a
//! pod (its own spans, and its guest's, to the local store and the OTLP collector), and
//! `husk exec` hands its context to the guest console.
//!
//! Owns the CLI's pipeline and SDK, made before logging is set up (the tracing layer is part of
//! the process's subscriber). Must never trace a command that does not make sandboxes or
//! sessions (`husk ps`, `husk trace`), and never fail one: a pipeline that cannot start is a
//! warning, and tracing stays off.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use husk_telemetry::{service, SpanSink, Telemetry};
use husk_trace::{Pipeline, PipelineConfig};

/// How long the CLI waits at its end for its spans to be stored and exported.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The CLI's tracing, once a command turned it on.
#[derive(Debug, Clone)]
pub struct CliTracing {
    pub telemetry: Telemetry,
    pub pipeline: Arc<Pipeline>,
}

impl CliTracing {
    /// Exports what has ended and waits for the pipeline to store and send it.
    pub fn flush(&self) -> bool {
        self.telemetry.flush(FLUSH_TIMEOUT) && self.pipeline.flush(FLUSH_TIMEOUT)
    }
}

static TRACING: OnceLock<CliTracing> = OnceLock::new();

/// Turns tracing on when the configuration (`--config FILE`, or the usual one) asks for it;
/// the tracing, when on. Called before logging is set up, as the tracing layer is part of the
/// process's subscriber: a configuration that does not load is left to the command to report.
pub fn start(config: Option<&std::path::Path>) -> Option<&'static CliTracing> {
    let config = husk_config::Config::load(config).ok()?;
    if !config.tracing.enabled {
        return None;
    }
    let pipeline = match Pipeline::start(PipelineConfig::from(&config)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!(
                "husk: warning: tracing is on but its pipeline cannot start ({e}): not tracing"
            );
            return None;
        }
    };
    let sink: Arc<dyn SpanSink> = pipeline.clone();
    let telemetry = Telemetry::new(service::CLI, sink);
    let _ = TRACING.set(CliTracing {
        telemetry,
        pipeline,
    });
    TRACING.get()
}

/// The CLI's tracing, when a command turned it on.
pub fn get() -> Option<&'static CliTracing> {
    TRACING.get()
}
