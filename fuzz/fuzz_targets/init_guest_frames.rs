//! The host reading `husk.init.v1` frames from an untrusted guest: never panics, never
//! allocates past the frame limit.
#![no_main]

use husk_protocols::frame::read_frame;
use husk_protocols::init::GuestMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while read_frame::<_, GuestMessage>(&mut r).is_ok() {}
});
