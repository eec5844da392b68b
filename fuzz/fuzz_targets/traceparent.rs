//! The agent parsing a `traceparent` from ttrpc request metadata: whatever parses must print
//! back as itself.
#![no_main]

use husk_protocols::trace_context::TraceParent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(tp) = TraceParent::parse(text) {
            assert_eq!(tp.to_string(), text);
        }
    }
});
