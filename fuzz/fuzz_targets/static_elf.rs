//! The image builder checking that an input binary is a static x86-64 executable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = husk_image::elf::check_static_x86_64(data);
});
