//! `husk exec` reading `husk.console.v1` frames from the guest console (an untrusted guest).
#![no_main]

use husk_protocols::console::{read_frame, ServerFrame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while read_frame::<_, ServerFrame>(&mut r).is_ok() {}
});
