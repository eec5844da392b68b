//! A host process's tracing (the shim, the CLI): its own spans through the OpenTelemetry SDK
//! and its guests' from [`crate::GuestReceiver`], into one [`Pipeline`] (the local store and
//! the OTLP collector `[tracing]` names).
//!
//! Owns that pairing and its flush. Must never install a subscriber: the process composes its
//! own, with [`Telemetry::layer`], as its logging needs.

use std::sync::Arc;
use std::time::Duration;

use husk_telemetry::{SpanSink, Telemetry};

use crate::{Pipeline, PipelineConfig, TraceError};

/// How long a host process waits at its end for its spans to be stored and exported.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A host process's tracing.
#[derive(Debug, Clone)]
pub struct HostTracing {
    pub telemetry: Telemetry,
    pub pipeline: Arc<Pipeline>,
}

impl HostTracing {
    /// The tracing `config` asks for, for the process `service`
    /// (`husk_telemetry::service`); none when `[tracing] enabled` is off.
    pub fn start(
        service: &'static str,
        config: &husk_config::Config,
    ) -> Result<Option<Self>, TraceError> {
        if !config.tracing.enabled {
            return Ok(None);
        }
        let pipeline = Pipeline::start(PipelineConfig::from(config))?;
        let sink: Arc<dyn SpanSink> = pipeline.clone();
        Ok(Some(Self {
            telemetry: Telemetry::new(service, sink),
            pipeline,
        }))
    }

    /// Where a guest's spans go ([`crate::receive_guest_spans`]).
    pub fn sink(&self) -> Arc<dyn SpanSink> {
        self.pipeline.clone()
    }

    /// Exports what has ended and waits up to [`FLUSH_TIMEOUT`] for the pipeline to store
    /// and send it; whether everything went.
    pub fn flush(&self) -> bool {
        self.telemetry.flush(FLUSH_TIMEOUT) && self.pipeline.flush(FLUSH_TIMEOUT)
    }
}
