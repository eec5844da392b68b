//! husk-init reading `husk.init.v1` frames from the host.
#![no_main]

use husk_protocols::frame::read_frame;
use husk_protocols::init::HostMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while read_frame::<_, HostMessage>(&mut r).is_ok() {}
});
