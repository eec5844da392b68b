//! The host parsing a hybrid-vsock `CONNECT` reply line from the VMM's socket.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = husk_hypervisor::vsock::parse_reply(data);
});
