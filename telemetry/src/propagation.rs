//! Trace context in and out of a process as W3C `traceparent` (ARCHITECTURE.md §6): in ttrpc
//! request metadata (shim → agent), on the kernel command line (host → husk-init), in a console
//! `open` frame.
//!
//! Owns the bridge between `tracing` spans and [`TraceParent`]. Must never make up a context: a
//! span that is not being traced (tracing off, or no [`crate::Telemetry`] layer) yields none,
//! and a malformed incoming value is ignored, not half-used.

use husk_protocols::trace_context::TraceParent;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `traceparent` of `span`, when it is being traced.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8(),
        }
        .to_string()
    })
}

/// The `traceparent` of the current span, when it is being traced.
pub fn current_traceparent() -> Option<String> {
    traceparent(&tracing::Span::current())
}

/// Makes `span` a child of the remote span `value` names; whether `value` was a valid
/// `traceparent` (and `span` traced). Call before the span is first entered.
pub fn set_parent(span: &tracing::Span, value: &str) -> bool {
    let Some(tp) = TraceParent::parse(value) else {
        return false;
    };
    let sc = SpanContext::new(
        TraceId::from_bytes(tp.trace_id),
        SpanId::from_bytes(tp.span_id),
        TraceFlags::new(tp.flags),
        true,
        TraceState::default(),
    );
    span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc))
        .is_ok()
}

/// The trace id (32 hex digits) of `span`, when it is being traced: for log lines that point
/// at `husk trace show`.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}
