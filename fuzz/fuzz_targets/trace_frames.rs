//! The host reading a trace frame from a guest's husk-tracer: decode, drop invalid ids, move to
//! the host's clock by any offset, then everything `husk trace` does with stored spans (the
//! span model, the waterfall, the Jaeger and OTLP exports). Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (offset, body) = match data.split_first_chunk::<8>() {
        Some((o, rest)) => (i64::from_le_bytes(*o), rest),
        None => (0, data),
    };
    let Ok((mut request, kept, _dropped)) = husk_trace::check_guest_frame(body) else {
        return;
    };
    husk_trace::shift(&mut request, offset);
    let records = husk_trace::records_from_request(&request);
    assert!(records.len() as u64 <= kept);
    if let Some(first) = records.first() {
        let _ = husk_trace::render(&first.trace_id, &records, false);
        let _ = husk_trace::jaeger_json(&first.trace_id, &records);
    }
    let _ = husk_trace::otlp_json(&records);
});
