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

/// The guest console (`husk.console=1`): husk-init starts husk-console, which serves
/// `husk.console.v1` on vsock port 1026. Off unless set; the host sets it with
/// `agent.debug_console`. The debug image starts the console whatever this says.
pub const CONSOLE: &str = "husk.console";

/// Tracing (`husk.tracing=1`): husk-init starts husk-tracer, and the guest's husk processes
/// send their spans to it (ARCHITECTURE.md §5). Off unless set; the host sets it with
/// `tracing.enabled`. Off means no tracer process and no span export at all.
pub const TRACING: &str = "husk.tracing";

/// The trace the guest's boot belongs to (`husk.traceparent=00-…-…-01`, W3C form): husk-init's
/// spans become children of the host span that booted the VM. Parsed strictly
/// ([`crate::trace_context::TraceParent::parse`]); a malformed value starts no trace.
pub const TRACEPARENT: &str = "husk.traceparent";

/// The agent's own seccomp filter: `enforce` (default), `log` (log what it would refuse) or
/// `off` (`husk.agent.seccomp=log`).
pub const AGENT_SECCOMP: &str = "husk.agent.seccomp";
/// The builtin VMM's boot-timer register (`husk.boot_timer=0xc0000000`): husk-init writes
/// [`BOOT_TIMER_MAGIC`] there through /dev/mem when it is ready, so boot time is measured from
/// inside the guest (Firecracker's boot timer). Absent under QEMU.
pub const BOOT_TIMER: &str = "husk.boot_timer";

/// The byte that marks "guest booted" on the boot timer.
pub const BOOT_TIMER_MAGIC: u8 = 123;

/// Parses a [`BOOT_TIMER`] value: a page-aligned hexadecimal address (`0x...`).
pub fn parse_boot_timer(value: &str) -> Option<u64> {
    let hex = value.strip_prefix("0x")?;
    let addr = u64::from_str_radix(hex, 16).ok()?;
    (addr % 4096 == 0 && addr != 0).then_some(addr)
}

/// SELinux in the guest (`husk.selinux=0`): absent or `1`, husk-init loads the image's policy
/// and enforces it; `0` leaves SELinux off (no policy is loaded, labels are not applied);
/// `permissive` loads the policy but only logs denials (for writing policy). The host sets `0`
/// when its configuration turns SELinux off (`agent.selinux = false`).
pub const SELINUX: &str = "husk.selinux";

/// The [`SELINUX`] value that turns SELinux off.
pub const SELINUX_OFF: &str = "0";

/// What the guest does with SELinux, from the [`SELINUX`] key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelinuxMode {
    /// Load the policy and enforce it (the default).
    Enforcing,
    /// Load the policy, log denials, deny nothing.
    Permissive,
    /// Load nothing.
    Off,
}

impl SelinuxMode {
    /// The word for the mode, as husk-init reports it (`enforcing`, `permissive`, `off`).
    pub fn name(self) -> &'static str {
        match self {
            SelinuxMode::Enforcing => "enforcing",
            SelinuxMode::Permissive => "permissive",
            SelinuxMode::Off => "off",
        }
    }
}

/// The SELinux mode a kernel command line asks for: enforcing unless [`SELINUX`] says
/// otherwise. An unknown value is `Err` with the value, for the caller to report; it must then
/// treat it as enforcing (never weaker than asked for by mistake).
pub fn selinux_mode(cmdline: &str) -> Result<SelinuxMode, String> {
    match lookup(cmdline, SELINUX) {
        None | Some("1") => Ok(SelinuxMode::Enforcing),
        Some(SELINUX_OFF) => Ok(SelinuxMode::Off),
        Some("permissive") => Ok(SelinuxMode::Permissive),
        Some(other) => Err(other.to_owned()),
    }
}

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
    fn boot_timer_addresses_are_hex_and_page_aligned() {
        assert_eq!(parse_boot_timer("0xc0000000"), Some(0xc000_0000));
        assert_eq!(parse_boot_timer("0xc0000001"), None);
        assert_eq!(parse_boot_timer("3221225472"), None);
        assert_eq!(parse_boot_timer("0x0"), None);
        assert_eq!(parse_boot_timer("0xzz"), None);
    }

    #[test]
    fn selinux_is_enforcing_unless_turned_off() {
        assert_eq!(selinux_mode("console=ttyS0"), Ok(SelinuxMode::Enforcing));
        assert_eq!(selinux_mode("husk.selinux=1"), Ok(SelinuxMode::Enforcing));
        assert_eq!(
            selinux_mode(&format!("quiet {SELINUX}={SELINUX_OFF}")),
            Ok(SelinuxMode::Off)
        );
        assert_eq!(
            selinux_mode("husk.selinux=permissive"),
            Ok(SelinuxMode::Permissive)
        );
        assert_eq!(selinux_mode("husk.selinux=no"), Err("no".to_owned()));
        assert_eq!(
            selinux_mode("husk.selinux=0 husk.selinux=1"),
            Ok(SelinuxMode::Enforcing),
            "the last word wins"
        );
        assert_eq!(SelinuxMode::Off.name(), "off");
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
