//! The CLI's tracing (`[tracing] enabled`): `husk run` traces its sandbox as the shim does a
//! pod (its own spans, and its guest's, to the local store and the OTLP collector), and
//! `husk exec` hands its context to the guest console.
//!
//! Owns the process-wide layer, installed empty at start-up and filled in once a command has
//! read the configuration. Must never trace a command that did not ask (`husk ps`, `husk
//! trace`), and never fail one: a pipeline that cannot start is a warning, and tracing stays
//! off.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use husk_telemetry::{service, SpanSink, Telemetry};
use husk_trace::{Pipeline, PipelineConfig};
use opentelemetry_sdk::trace::SdkTracer;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::filter::{FilterFn, Filtered};
use tracing_subscriber::{reload, Registry};

/// How long the CLI waits at its end for its spans to be stored and exported.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

type OtelLayer = Filtered<OpenTelemetryLayer<Registry, SdkTracer>, FilterFn, Registry>;

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

static HANDLE: OnceLock<reload::Handle<Option<OtelLayer>, Registry>> = OnceLock::new();
static TRACING: OnceLock<CliTracing> = OnceLock::new();

/// The (empty) tracing layer for the process's subscriber; [`start`] fills it in.
pub fn layer() -> reload::Layer<Option<OtelLayer>, Registry> {
    let (layer, handle) = reload::Layer::new(None);
    let _ = HANDLE.set(handle);
    layer
}

/// Turns tracing on when `config` asks for it; the tracing, when on.
pub fn start(config: &husk_config::Config) -> Option<&'static CliTracing> {
    if let Some(t) = TRACING.get() {
        return Some(t);
    }
    if !config.tracing.enabled {
        return None;
    }
    let pipeline = match Pipeline::start(PipelineConfig::from(config)) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "tracing is on but its pipeline cannot start: not tracing");
            return None;
        }
    };
    let sink: Arc<dyn SpanSink> = pipeline.clone();
    let telemetry = Telemetry::new(service::CLI, sink);
    HANDLE.get()?.reload(Some(telemetry.layer())).ok()?;
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
