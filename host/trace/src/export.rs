//! `husk trace export`: a stored trace as the JSON Jaeger UI imports ("JSON File" upload: the
//! shape of its query API, `{"data": [trace]}`), or as OTLP JSON (an `ExportTraceServiceRequest`
//! in the protobuf JSON mapping, which OTLP/HTTP receivers accept).
//!
//! Owns both encodings. Must never invent data: what the store did not keep (span kinds,
//! events, typed attribute values) is left out, and attributes travel as strings.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use serde_json::{json, Value};

use crate::model::SpanRecord;

fn tag(key: &str, value: &str) -> Value {
    json!({ "key": key, "type": "string", "value": value })
}

/// Jaeger's JSON for one trace (microseconds, one process per service).
pub fn jaeger_json(trace_id: &str, spans: &[SpanRecord]) -> Value {
    let mut processes: BTreeMap<&str, String> = BTreeMap::new();
    for s in spans {
        let n = processes.len() + 1;
        processes
            .entry(&s.service)
            .or_insert_with(|| format!("p{n}"));
    }
    let jspans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let mut tags: Vec<Value> = s.attributes.iter().map(|(k, v)| tag(k, v)).collect();
            if let Some(e) = &s.error {
                tags.push(json!({ "key": "error", "type": "bool", "value": true }));
                tags.push(tag("otel.status_description", e));
            }
            let references: Vec<Value> = s
                .parent_span_id
                .iter()
                .map(|p| json!({ "refType": "CHILD_OF", "traceID": trace_id, "spanID": p }))
                .collect();
            json!({
                "traceID": trace_id,
                "spanID": s.span_id,
                "operationName": s.name,
                "references": references,
                "startTime": s.start_unix_nano / 1000,
                "duration": s.duration_nanos() / 1000,
                "tags": tags,
                "logs": [],
                "processID": processes[s.service.as_str()],
                "warnings": null,
            })
        })
        .collect();
    let procs: serde_json::Map<String, Value> = processes
        .iter()
        .map(|(service, id)| (id.clone(), json!({ "serviceName": service, "tags": [] })))
        .collect();
    json!({ "data": [{ "traceID": trace_id, "spans": jspans, "processes": procs, "warnings": null }] })
}

fn bytes_of(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// The trace as one OTLP export request, a resource per service.
pub fn otlp_request(spans: &[SpanRecord]) -> ExportTraceServiceRequest {
    let mut by_service: BTreeMap<&str, Vec<Span>> = BTreeMap::new();
    for s in spans {
        by_service.entry(&s.service).or_default().push(Span {
            trace_id: bytes_of(&s.trace_id),
            span_id: bytes_of(&s.span_id),
            parent_span_id: s
                .parent_span_id
                .as_deref()
                .map(bytes_of)
                .unwrap_or_default(),
            name: s.name.clone(),
            start_time_unix_nano: s.start_unix_nano,
            end_time_unix_nano: s.end_unix_nano,
            attributes: s.attributes.iter().map(|(k, v)| string_kv(k, v)).collect(),
            status: s.error.as_ref().map(|e| Status {
                message: e.clone(),
                code: StatusCode::Error as i32,
            }),
            ..Default::default()
        });
    }
    ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![string_kv("service.name", service)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// The trace as OTLP JSON.
pub fn otlp_json(spans: &[SpanRecord]) -> Value {
    serde_json::to_value(otlp_request(spans)).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::records_from_request;
    use crate::model::tests::{request, span};

    fn records() -> Vec<SpanRecord> {
        let mut req = request("shim", vec![span(7, 1, 0, "Create", 1_000_000, 9_000_000)]);
        req.resource_spans.extend(
            request(
                "husk-agent",
                vec![span(7, 2, 1, "CreateContainer", 2_000_000, 3_000_000)],
            )
            .resource_spans,
        );
        let mut recs = records_from_request(&req);
        recs[1].error = Some("boom".into());
        recs
    }

    #[test]
    fn jaeger_json_has_processes_references_and_microseconds() {
        let id = "07".repeat(16);
        let v = jaeger_json(&id, &records());
        let t = &v["data"][0];
        assert_eq!(t["traceID"], id.as_str());
        assert_eq!(t["spans"][0]["startTime"], 1000);
        assert_eq!(t["spans"][0]["duration"], 8000);
        assert_eq!(t["spans"][1]["references"][0]["spanID"], "0101010101010101");
        assert_eq!(t["spans"][1]["references"][0]["refType"], "CHILD_OF");
        let p = t["spans"][1]["processID"].as_str().expect("process id");
        assert_eq!(t["processes"][p]["serviceName"], "husk-agent");
        assert!(t["spans"][1]["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .any(|tag| tag["key"] == "error"));
    }

    #[test]
    fn otlp_round_trips_through_the_store_model() {
        let recs = records();
        let back = records_from_request(&otlp_request(&recs));
        let mut want = recs.clone();
        want.sort_by(|a, b| a.service.cmp(&b.service));
        assert_eq!(back, want);
        let v = otlp_json(&recs);
        assert!(
            v["resourceSpans"].as_array().is_some_and(|a| a.len() == 2),
            "{v}"
        );
    }
}
