//! husk-init parsing the image manifest and validating its services.
#![no_main]

use husk_protocols::manifest::ImageManifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<ImageManifest>(data) {
        for s in &m.services {
            let _ = s.validate();
        }
    }
});
