//! Kernel command-line keys the host sets and husk-init reads.
//!
//! The guest must treat every value as untrusted text: parse, bound and validate it.

/// Hostname for the guest (`husk.hostname=<name>`); default [`DEFAULT_HOSTNAME`].
pub const HOSTNAME: &str = "husk.hostname";

/// Log level of the guest's husk components (`husk.log=debug`); default `info`.
pub const LOG_LEVEL: &str = "husk.log";

/// Compatibility testing only (`husk.agent.claim_major=N`): husk-agent announces protocol major
/// N instead of its own, so a test can check that the host refuses an agent of another major.
pub const AGENT_CLAIM_MAJOR: &str = "husk.agent.claim_major";

/// Default guest hostname when the host gives none.
pub const DEFAULT_HOSTNAME: &str = "husk";

/// Longest hostname accepted (`HOST_NAME_MAX`).
pub const HOSTNAME_MAX: usize = 64;

/// Finds `key=value` in a kernel command line; the last occurrence wins, as in the kernel.
pub fn lookup<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_ascii_whitespace()
        .rev()
        .filter_map(|word| word.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Whether `name` is an acceptable hostname: 1..=64 bytes of `[A-Za-z0-9.-]`, no leading dash.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= HOSTNAME_MAX
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_last_value() {
        let c = "console=ttyS0 husk.hostname=a quiet husk.hostname=b";
        assert_eq!(lookup(c, HOSTNAME), Some("b"));
        assert_eq!(lookup(c, "missing"), None);
        assert_eq!(lookup("husk.hostnamex=1", HOSTNAME), None);
    }

    #[test]
    fn hostname_validation() {
        assert!(valid_hostname("pod-1.example"));
        assert!(!valid_hostname(""));
        assert!(!valid_hostname("-x"));
        assert!(!valid_hostname("a/b"));
        assert!(!valid_hostname(&"a".repeat(65)));
    }
}
