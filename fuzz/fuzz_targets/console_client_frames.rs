//! husk-console reading `husk.console.v1` frames from the host, and the records it reads to
//! enter a container.
#![no_main]

use husk_protocols::console::{major_of, read_frame, ClientFrame};
use husk_protocols::container_record::{start_time_from_stat, valid_id};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while let Ok(f) = read_frame::<_, ClientFrame>(&mut r) {
        if let Some(husk_protocols::console::client_frame::Frame::Open(o)) = f.frame {
            let _ = major_of(&o.protocol);
            let _ = valid_id(&o.container_id);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = start_time_from_stat(text);
    }
});
