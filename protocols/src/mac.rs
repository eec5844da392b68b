//! MAC addresses as husk's messages carry them: "aa:bb:cc:dd:ee:ff" (lower-case on output).
//!
//! Owns the one parser and formatter both sides use (the shim writes them, the hypervisor puts
//! them on QEMU's command line, the agent finds NICs by them). Must never accept anything but
//! six two-digit hex bytes, since the text reaches a command line.

/// Parses "aa:bb:cc:dd:ee:ff" (either case).
pub fn parse(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// "aa:bb:cc:dd:ee:ff" for the bytes of an address.
pub fn format(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        assert_eq!(parse("02:00:0A:00:00:ff"), Some([2, 0, 10, 0, 0, 255]));
        assert_eq!(format(&[2, 0, 10, 0, 0, 255]), "02:00:0a:00:00:ff");
        for bad in [
            "",
            "02:00:0a:00:00",
            "02:00:0a:00:00:02:07",
            "zz:00:00:00:00:01",
            "+2:00:00:00:00:01",
            "02:00:0a:00:00:02,x=1",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
