//! `husk trace list | show | export`: the traces in husk's local trace store
//! (`<runtime.state_dir>/traces`, [`husk_trace`]).
//!
//! Owns the commands' flags and output. Must never change the store.

use std::path::PathBuf;
use std::process::ExitCode;

use husk_trace::TraceStore;

/// `husk trace` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TraceCommand {
    /// The stored traces, most recent first.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Configuration file (for the state directory).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// One trace as a waterfall: service, span, start offset, duration, attributes; failed
    /// spans marked.
    Show {
        /// The trace id, or a unique prefix of it.
        #[arg(value_name = "TRACE_ID")]
        trace: String,
        /// Configuration file (for the state directory).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// One trace as JSON: `jaeger-json` (Jaeger UI's "JSON File" upload) or `otlp-json`.
    Export {
        #[arg(long, value_enum, default_value = "jaeger-json")]
        format: Format,
        /// The trace id, or a unique prefix of it.
        #[arg(value_name = "TRACE_ID")]
        trace: String,
        /// Configuration file (for the state directory).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

/// Export formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    JaegerJson,
    OtlpJson,
}

fn store(config: Option<&std::path::Path>) -> anyhow::Result<TraceStore> {
    let config = husk_config::Config::load(config)?;
    Ok(TraceStore::in_state_dir(&config.runtime.state_dir))
}

pub fn run(cmd: &TraceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TraceCommand::List { json, config } => {
            let store = store(config.as_deref())?;
            let traces = store.list();
            if *json {
                println!("{}", serde_json::to_string_pretty(&traces)?);
                return Ok(ExitCode::SUCCESS);
            }
            if traces.is_empty() {
                println!("no traces in {}", store.dir().display());
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = traces
                .iter()
                .map(|t| {
                    vec![
                        t.trace_id.clone(),
                        t.root.clone(),
                        t.spans.to_string(),
                        t.errors.to_string(),
                        crate::table::ms(std::time::Duration::from_nanos(t.duration_nanos)),
                        t.services.join(", "),
                    ]
                })
                .collect();
            let header = [
                "TRACE ID",
                "ROOT SPAN",
                "SPANS",
                "ERRORS",
                "DURATION",
                "SERVICES",
            ];
            print!("{}", crate::table::columns(&header, &rows));
        }
        TraceCommand::Show { trace, config } => {
            let (id, spans) = store(config.as_deref())?.load(trace)?;
            let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
            print!("{}", husk_trace::render(&id, &spans, color));
        }
        TraceCommand::Export {
            format,
            trace,
            config,
        } => {
            let (id, spans) = store(config.as_deref())?.load(trace)?;
            let v = match format {
                Format::JaegerJson => husk_trace::jaeger_json(&id, &spans),
                Format::OtlpJson => husk_trace::otlp_json(&spans),
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
