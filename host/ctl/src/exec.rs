//! `husk exec [-t] [-i] [--container ID] SANDBOX [-- CMD ARGS...]` and `husk console SANDBOX`:
//! a session in a running sandbox's guest through its console (`husk.console.v1`, vsock 1026).
//!
//! Owns finding the sandbox (id, name or unique prefix, through the state directory, whether
//! `husk run` or the containerd shim made it), the errors a person gets when it cannot be
//! reached, and the exit code. The session itself is [`crate::console_session`]. Must never
//! boot, stop or change a sandbox.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use husk_protocols::console::{ErrorKind, Open, PROTOCOL};
use husk_state::{Record, StateError};

use crate::console_session::{self, Ended};
use crate::run::{RunError, COMMAND_NOT_FOUND, RUN_FAILED};
use crate::terminal;

/// How long `husk exec` waits for a console that is enabled but not listening yet (husk-init
/// starts it beside the agent; it may also be restarting).
const CONSOLE_START_WAIT: Duration = Duration::from_secs(10);

/// Flags of `husk exec`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExecArgs {
    /// Give the session a terminal (a pty in the guest; husk's terminal in raw mode).
    #[arg(short, long)]
    pub tty: bool,
    /// Pass husk's stdin to the session (without it, the session's stdin is closed at once).
    #[arg(short, long)]
    pub interactive: bool,
    /// Enter this container of the sandbox (its namespaces, cgroup and root) instead of the
    /// guest's own root. `husk run` names its container `main`.
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,
    /// Set an environment variable in the session (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory in the session.
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Configuration file (for the state directory and timeouts).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The sandbox: its id, its name or a unique prefix of its id (`husk ps` lists them).
    #[arg(value_name = "SANDBOX")]
    pub sandbox: String,
    /// Command and arguments (after `--`); none: the guest's shell, interactive.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Flags of `husk console`: an interactive shell (`husk exec -t -i SANDBOX`).
#[derive(Debug, Clone, clap::Args)]
pub struct ConsoleArgs {
    /// Enter this container of the sandbox instead of the guest's own root.
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,
    /// Configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The sandbox: its id, its name or a unique prefix of its id.
    #[arg(value_name = "SANDBOX")]
    pub sandbox: String,
}

impl From<&ConsoleArgs> for ExecArgs {
    fn from(c: &ConsoleArgs) -> Self {
        ExecArgs {
            tty: true,
            interactive: true,
            container: c.container.clone(),
            env: Vec::new(),
            workdir: None,
            config: c.config.clone(),
            sandbox: c.sandbox.clone(),
            command: Vec::new(),
        }
    }
}

fn failed(message: String) -> anyhow::Error {
    RunError {
        code: RUN_FAILED,
        message,
    }
    .into()
}

/// What to do when the sandbox has no console.
fn no_console_fix(r: &Record) -> String {
    let how = match r.origin {
        husk_state::Origin::Run => "`husk run --debug …` (the debug image), or `[agent] debug_console = true` in /etc/husk/config.toml",
        husk_state::Origin::Shim => "the pod annotation io.husk.debug_console=true (or io.husk.image=debug), or `[agent] debug_console = true` in /etc/husk/config.toml",
    };
    format!(
        "sandbox {} has no console: its guest ({}) runs without husk-console, which is off unless enabled. Enable it with {how}, then start the sandbox again",
        r.label(),
        r.guest_image.display()
    )
}

/// The sandbox's record once its guest is up: a booting sandbox is waited for.
fn running_record(dir: &std::path::Path, query: &str, wait: Duration) -> anyhow::Result<Record> {
    let deadline = Instant::now() + wait;
    let mut told = false;
    loop {
        let r = husk_state::find(dir, query).map_err(|e| match e {
            StateError::NotFound { .. }
            | StateError::Ambiguous { .. }
            | StateError::NotRunning { .. } => failed(e.to_string()),
            other => anyhow::Error::new(other),
        })?;
        if r.vsock.is_some() {
            return Ok(r);
        }
        if Instant::now() >= deadline {
            return Err(failed(format!(
                "sandbox {} did not finish booting within {wait:?}",
                r.label()
            )));
        }
        if !told {
            eprintln!("husk: waiting for sandbox {} to boot", r.label());
            told = true;
        }
        // The record is rewritten when the guest is up; a short poll of one small file.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Opens a stream to the guest console, waiting a little for one that is starting.
fn connect(
    r: &Record,
    vsock: &std::path::Path,
    timeout: Duration,
) -> anyhow::Result<std::os::unix::net::UnixStream> {
    use husk_hypervisor::vsock::{connect, VsockError};
    let port = husk_protocols::ports::CONSOLE_PORT;
    let deadline = Instant::now() + CONSOLE_START_WAIT;
    loop {
        match connect(vsock, port, timeout) {
            Ok(s) => return Ok(s),
            Err(VsockError::NoListener { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(VsockError::NoListener { .. }) => {
                return Err(failed(format!(
                    "sandbox {}: nothing answers on the guest console's vsock port {port} after {CONSOLE_START_WAIT:?}; husk-console is enabled but not running (see the guest's log for `service exited`)",
                    r.label()
                )))
            }
            Err(e @ VsockError::Socket { .. }) => {
                return Err(failed(format!(
                    "sandbox {} is not running: its VM cannot be reached ({e})",
                    r.label()
                )))
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("reaching the console of sandbox {}", r.label())))
            }
        }
    }
}

pub fn run(args: &ExecArgs) -> anyhow::Result<ExitCode> {
    let config = husk_config::Config::load(args.config.as_deref())?;
    let traced = crate::telemetry::get();
    let span = tracing::info_span!(
        parent: None,
        "husk.exec",
        otel.name = "husk exec",
        sandbox = %args.sandbox,
        container.id = args.container.as_deref().unwrap_or(""),
    );
    let result = span.in_scope(|| exec_traced(args, &config));
    drop(span);
    if let Some(t) = traced {
        t.flush();
    }
    result
}

fn exec_traced(args: &ExecArgs, config: &husk_config::Config) -> anyhow::Result<ExitCode> {
    for kv in &args.env {
        if kv.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
            return Err(failed(format!("--env {kv:?}: expected KEY=VALUE")));
        }
    }
    let record = running_record(
        &config.runtime.state_dir,
        &args.sandbox,
        config.agent.ready_timeout(),
    )?;
    if !record.console {
        return Err(failed(no_console_fix(&record)));
    }
    let vsock = record
        .vsock
        .clone()
        .context("the sandbox's record has no vsock socket")?;
    // No command: the guest's shell, which wants input (and a terminal if husk has one).
    let shell = args.command.is_empty();
    let interactive = args.interactive || shell;
    let stdin_is_tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let tty = args.tty || (shell && stdin_is_tty);

    let mut open = Open::new();
    open.protocol = PROTOCOL.into();
    open.args = args.command.clone();
    open.tty = tty;
    open.env = args.env.clone();
    if tty {
        if let Ok(term) = std::env::var("TERM") {
            if !args.env.iter().any(|e| e.starts_with("TERM=")) {
                open.env.insert(0, format!("TERM={term}"));
            }
        }
        open.size = terminal::window_size().into();
    }
    open.cwd = args.workdir.clone().unwrap_or_default();
    open.container_id = args.container.clone().unwrap_or_default();
    open.client = format!("husk {}", env!("CARGO_PKG_VERSION"));
    // The guest's session span joins this command's trace (tracing on).
    open.traceparent = husk_telemetry::propagation::current_traceparent().unwrap_or_default();

    let stream = connect(&record, &vsock, config.agent.dial_timeout())?;
    let ended = console_session::run(stream, &open, interactive)
        .with_context(|| format!("the console session in sandbox {}", record.label()))?;
    match ended {
        Ended::Exit { code } => Ok(ExitCode::from(code.clamp(0, 255) as u8)),
        Ended::Refused { kind, message } => Err(RunError {
            code: match kind {
                ErrorKind::NOT_FOUND => COMMAND_NOT_FOUND,
                _ => RUN_FAILED,
            },
            message: match kind {
                ErrorKind::NO_CONTAINER => format!(
                    "sandbox {}: {message} (its containers: {})",
                    record.label(),
                    if record.containers.is_empty() {
                        "none recorded".into()
                    } else {
                        record.containers.join(", ")
                    }
                ),
                _ => format!("sandbox {}: {message}", record.label()),
            },
        }
        .into()),
    }
}
