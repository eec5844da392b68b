//! The host recognising a kernel image (ELF program headers, PVH notes, bzImage header).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = husk_hypervisor::boot_files::kernel_format(data);
});
