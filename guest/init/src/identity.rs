//! The guest's identity: hostname from the kernel command line.
//!
//! Owns choosing and setting the hostname. Must never trust the command line: an invalid name
//! falls back to the default and is logged, it never aborts boot.

use husk_protocols::cmdline;

use crate::syscalls::Syscalls;

/// The hostname to use for this command line.
pub fn hostname_from(cmdline_text: &str) -> &str {
    match cmdline::lookup(cmdline_text, cmdline::HOSTNAME) {
        Some(name) if cmdline::valid_hostname(name) => name,
        Some(name) => {
            tracing::warn!(
                name,
                "invalid {} on the command line, using the default",
                cmdline::HOSTNAME
            );
            cmdline::DEFAULT_HOSTNAME
        }
        None => cmdline::DEFAULT_HOSTNAME,
    }
}

/// Sets the hostname chosen by [`hostname_from`].
pub fn set_hostname(sys: &mut impl Syscalls, cmdline_text: &str) -> std::io::Result<String> {
    let name = hostname_from(cmdline_text).to_owned();
    sys.set_hostname(&name)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscalls::RecordingSyscalls;

    #[test]
    fn chooses_valid_name_or_default() {
        assert_eq!(hostname_from("quiet husk.hostname=pod-7"), "pod-7");
        assert_eq!(hostname_from("quiet"), "husk");
        assert_eq!(hostname_from("husk.hostname=../../etc"), "husk");
    }

    #[test]
    fn sets_it() {
        let mut sys = RecordingSyscalls::default();
        set_hostname(&mut sys, "husk.hostname=vm1").unwrap();
        assert_eq!(sys.calls, ["hostname vm1"]);
    }
}
