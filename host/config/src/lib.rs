//! husk's runtime configuration: `/etc/husk/config.toml` (or the file `--config` or
//! `$HUSK_CONFIG` names), then the drop-ins in `config.d/` beside it, over defaults that work on
//! a fresh machine. Sections `[hypervisor]`, `[agent]`, `[runtime]` and `[tracing]`; every key is described
//! in `docs/config.md`.
//!
//! Owns the typed configuration, its defaults and where each value came from. Must never act on
//! the configuration (boot, create directories, dial): callers do that with what it returns. An
//! unknown key, a wrong type or a value out of range is an error naming the file and the key,
//! never silently ignored or clamped.

mod annotations;
mod error;
mod load;
mod schema;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use annotations::{DEBUG_CONSOLE_ANNOTATION, IMAGE_ANNOTATION};
pub use error::{ConfigError, Origin};

/// The base configuration file when neither `--config` nor [`CONFIG_ENV`] names one.
pub const DEFAULT_CONFIG: &str = "/etc/husk/config.toml";
/// Names the base configuration file (a `--config` flag wins over it).
pub const CONFIG_ENV: &str = "HUSK_CONFIG";
/// The drop-in directory, beside the base file.
pub const DROP_IN_DIR: &str = "config.d";
/// Moves the default of `runtime.state_dir`.
pub const STATE_DIR_ENV: &str = "HUSK_STATE_DIR";
/// The default of `runtime.state_dir`.
pub const DEFAULT_STATE_DIR: &str = "/run/husk/sandboxes";
/// The default of `agent.ready_timeout_secs` (as `--timeout` today).
pub const DEFAULT_READY_TIMEOUT_SECS: u64 = 60;
/// The default of `agent.dial_timeout_secs` (as `--timeout` today).
pub const DEFAULT_DIAL_TIMEOUT_SECS: u64 = 60;
/// The values `agent.log_level` accepts.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Which hypervisor back end boots the VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The best this host has (see `husk check`).
    #[default]
    Auto,
    /// An external QEMU (KVM or TCG).
    Qemu,
    /// The embedded VMM.
    Builtin,
}

impl Backend {
    /// The name used in the file.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Qemu => "qemu",
            Backend::Builtin => "builtin",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Backend::Auto, Backend::Qemu, Backend::Builtin]
            .into_iter()
            .find(|b| b.name() == s)
    }
}

impl From<Backend> for husk_hypervisor::BackendChoice {
    fn from(b: Backend) -> Self {
        match b {
            Backend::Auto => Self::Auto,
            Backend::Qemu => Self::Qemu,
            Backend::Builtin => Self::Builtin,
        }
    }
}

/// How container root filesystems and volumes reach the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum SharedFs {
    /// virtio-fs, one virtiofsd per shared directory.
    #[default]
    #[serde(rename = "virtio-fs")]
    VirtioFs,
}

impl SharedFs {
    /// The name used in the file.
    pub fn name(self) -> &'static str {
        match self {
            SharedFs::VirtioFs => "virtio-fs",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        (s == "virtio-fs").then_some(SharedFs::VirtioFs)
    }
}

/// `[hypervisor]`: the VM each sandbox runs in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HypervisorConfig {
    /// `backend`: which back end boots the VM.
    pub backend: Backend,
    /// `kernel`: the guest kernel (default `$HUSK_HOME/kernel/vmlinux`).
    pub kernel: PathBuf,
    /// `image`: the guest image (default `$HUSK_HOME/images/default.cpio`, or `debug.cpio`
    /// with `agent.debug_console`).
    pub image: PathBuf,
    /// `vcpus`: virtual CPUs, 1-255.
    pub vcpus: u32,
    /// `memory_mib`: guest memory in MiB, at least 64.
    pub memory_mib: u32,
    /// `kernel_params`: extra kernel command-line words, appended last (so they win).
    pub kernel_params: Vec<String>,
}

/// `[agent]`: the guest agent and how long the host waits for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentConfig {
    /// `debug_console`: run husk-console in the guest (`husk exec`; `husk.console=1` on the
    /// kernel command line), and boot the debug image unless `hypervisor.image` is set.
    pub debug_console: bool,
    /// `log_level`: log level of the guest's husk components (`husk.log=` on the kernel
    /// command line); one of [`LOG_LEVELS`].
    pub log_level: String,
    /// `selinux`: the guest enforces husk's SELinux policy and labels containers; false adds
    /// `husk.selinux=0` to the kernel command line.
    pub selinux: bool,
    /// `ready_timeout_secs`: how long to wait for the guest's init to report ready.
    pub ready_timeout_secs: u64,
    /// `dial_timeout_secs`: how long to wait for the agent to accept a connection, and for
    /// each agent call.
    pub dial_timeout_secs: u64,
}

impl AgentConfig {
    /// `ready_timeout_secs` as a duration.
    pub fn ready_timeout(&self) -> Duration {
        Duration::from_secs(self.ready_timeout_secs)
    }

    /// `dial_timeout_secs` as a duration.
    pub fn dial_timeout(&self) -> Duration {
        Duration::from_secs(self.dial_timeout_secs)
    }
}

/// `[runtime]`: where the runtime keeps its state, and how files reach the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeConfig {
    /// `state_dir`: one record per running sandbox (`husk ps`).
    pub state_dir: PathBuf,
    /// `run_root`: parent of the per-VM socket directories.
    pub run_root: PathBuf,
    /// `log_root`: parent of the per-VM log directories.
    pub log_root: PathBuf,
    /// `shared_fs`: how root filesystems and volumes are shared into the guest.
    pub shared_fs: SharedFs,
}

/// How spans reach an OTLP collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies (`POST <endpoint>/v1/traces`; port 4318 by convention).
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP/gRPC (port 4317 by convention).
    #[serde(rename = "grpc")]
    Grpc,
}

impl OtlpProtocol {
    /// The name used in the file (OpenTelemetry's `OTEL_EXPORTER_OTLP_PROTOCOL` values).
    pub fn name(self) -> &'static str {
        match self {
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::Grpc => "grpc",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [OtlpProtocol::HttpProtobuf, OtlpProtocol::Grpc]
            .into_iter()
            .find(|p| p.name() == s)
    }
}

/// `[tracing]`: one trace per sandbox, from the shim's Task API calls down to the guest's
/// agent and jail (ARCHITECTURE.md §5). Off by default; off costs nothing: no tracer in the
/// guest, no spans exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TracingConfig {
    /// `enabled`: trace sandboxes (their VMs get `husk.tracing=1` on the kernel command line,
    /// which starts husk-tracer in the guest).
    pub enabled: bool,
    /// `otlp_endpoint`: an OTLP collector (Jaeger, the OpenTelemetry Collector) to export to,
    /// e.g. `http://127.0.0.1:4318`; empty: none.
    pub otlp_endpoint: String,
    /// `otlp_protocol`: how to reach `otlp_endpoint`.
    pub otlp_protocol: OtlpProtocol,
    /// `store`: keep every trace in `<runtime.state_dir>/traces` for `husk trace`.
    pub store: bool,
}

/// Where a key's effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// husk's built-in default.
    Default,
    /// A default moved by this environment variable (`HUSK_HOME`, `HUSK_STATE_DIR`, …).
    Env(&'static str),
    /// Set in this file.
    File(PathBuf),
    /// Set for one pod by this annotation.
    Annotation(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::Env(var) => write!(f, "env {var}"),
            Source::File(path) => write!(f, "{}", path.display()),
            Source::Annotation(key) => write!(f, "annotation {key}"),
        }
    }
}

impl Serialize for Source {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One key of the effective configuration, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub section: &'static str,
    pub name: &'static str,
    /// The value as TOML (`"auto"`, `256`, `["quiet"]`), so it can be pasted into a file.
    pub value: String,
    pub source: Source,
}

impl Entry {
    /// The full dotted key, e.g. `hypervisor.memory_mib`.
    pub fn key(&self) -> String {
        format!("{}.{}", self.section, self.name)
    }
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    pub hypervisor: HypervisorConfig,
    pub agent: AgentConfig,
    pub runtime: RuntimeConfig,
    pub tracing: TracingConfig,
    /// Which layer set each key (full dotted key → source); every key is present.
    #[serde(skip)]
    pub sources: BTreeMap<String, Source>,
    /// The base file consulted (it may not exist if it is the default one).
    #[serde(skip)]
    pub base: PathBuf,
    /// The files read, in the order they were applied.
    #[serde(skip)]
    pub files: Vec<PathBuf>,
    /// The artifact root images are named under (`$HUSK_HOME`).
    #[serde(skip)]
    pub home: PathBuf,
}

impl Config {
    /// Loads the configuration: the base file is `explicit` (`--config`) if given, else the
    /// file `$HUSK_CONFIG` names, else [`DEFAULT_CONFIG`]; the first two must exist, the default
    /// one may be absent. Then every `config.d/*.toml` beside it, in lexical order.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with(explicit, &process_env)
    }

    /// As [`Config::load`], looking environment variables up with `env` instead of in the
    /// process environment.
    pub fn load_with(
        explicit: Option<&Path>,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<Config, ConfigError> {
        let (base, origin) = load::resolve_base(explicit, env);
        load::load(&base, origin, env)
    }

    /// Loads `base` and its drop-ins, ignoring `$HUSK_CONFIG`; `required`: whether `base` must
    /// exist.
    pub fn load_from(base: &Path, required: bool) -> Result<Config, ConfigError> {
        let origin = if required {
            Origin::Explicit
        } else {
            Origin::Default
        };
        load::load(base, origin, &process_env)
    }

    /// The built-in defaults, with the guest kernel and image under the artifact root `home`.
    fn builtin(home: &Path) -> Config {
        let sources = schema::KEYS
            .iter()
            .map(|k| (k.key(), Source::Default))
            .collect();
        Config {
            hypervisor: HypervisorConfig {
                backend: Backend::Auto,
                kernel: load::kernel_in(home),
                image: load::image_in(home, false),
                vcpus: 1,
                memory_mib: husk_hypervisor::config::DEFAULT_MEMORY_MIB,
                kernel_params: Vec::new(),
            },
            agent: AgentConfig {
                debug_console: false,
                log_level: "info".to_owned(),
                selinux: true,
                ready_timeout_secs: DEFAULT_READY_TIMEOUT_SECS,
                dial_timeout_secs: DEFAULT_DIAL_TIMEOUT_SECS,
            },
            runtime: RuntimeConfig {
                state_dir: DEFAULT_STATE_DIR.into(),
                run_root: husk_hypervisor::config::DEFAULT_RUN_ROOT.into(),
                log_root: husk_hypervisor::config::DEFAULT_LOG_ROOT.into(),
                shared_fs: SharedFs::VirtioFs,
            },
            tracing: TracingConfig {
                enabled: false,
                otlp_endpoint: String::new(),
                otlp_protocol: OtlpProtocol::HttpProtobuf,
                store: true,
            },
            sources,
            base: PathBuf::new(),
            files: Vec::new(),
            home: home.to_owned(),
        }
    }

    /// The kernel command-line words every VM gets: the guest's log level
    /// (`agent.log_level`), the console when `agent.debug_console` is on, SELinux off when
    /// `agent.selinux` is false, then
    /// `hypervisor.kernel_params` (last, so they win).
    pub fn kernel_params(&self) -> Vec<String> {
        use husk_protocols::cmdline;
        let mut words = vec![format!("{}={}", cmdline::LOG_LEVEL, self.agent.log_level)];
        if self.agent.debug_console {
            words.push(format!("{}=1", cmdline::CONSOLE));
        }
        if !self.agent.selinux {
            words.push(format!("{}={}", cmdline::SELINUX, cmdline::SELINUX_OFF));
        }
        words.extend(self.hypervisor.kernel_params.iter().cloned());
        words
    }

    /// Every key with its effective value and source, section by section in documentation
    /// order.
    pub fn entries(&self) -> Vec<Entry> {
        schema::KEYS
            .iter()
            .map(|k| Entry {
                section: k.section,
                name: k.name,
                value: (k.get)(self).to_string(),
                source: self
                    .sources
                    .get(&k.key())
                    .cloned()
                    .unwrap_or(Source::Default),
            })
            .collect()
    }

    /// The source of one key (full dotted key), if it is a key.
    pub fn source(&self, key: &str) -> Option<&Source> {
        self.sources.get(key)
    }

    /// The section names, in documentation order.
    pub fn sections() -> &'static [&'static str] {
        &schema::SECTIONS
    }

    /// Every key (full dotted), in documentation order.
    pub fn keys() -> Vec<String> {
        schema::KEYS.iter().map(schema::KeySpec::key).collect()
    }
}

fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}
