//! `husk env`: the effective configuration, every key with its value and where it came from,
//! as a TOML document (itself a valid configuration file) or JSON.
//!
//! Owns presentation only; loading, merging and checking are `husk_config`'s. Must never act on
//! the configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use husk_config::{Config, Source};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct EnvArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Configuration file (default: $HUSK_CONFIG, else /etc/husk/config.toml); the drop-ins in
    /// config.d/ beside it are read too.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct JsonOut<'a> {
    base: &'a std::path::Path,
    files: &'a [PathBuf],
    config: &'a Config,
    sources: &'a BTreeMap<String, Source>,
}

pub fn run(args: &EnvArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref())?;
    if args.json {
        let out = JsonOut {
            base: &config.base,
            files: &config.files,
            config: &config,
            sources: &config.sources,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", render(&config));
    }
    Ok(ExitCode::SUCCESS)
}

/// The configuration as TOML, each key followed by its source in an aligned comment.
fn render(config: &Config) -> String {
    let mut out = String::from("# husk's effective configuration\n");
    let base_read = config.files.first() == Some(&config.base);
    out += &format!(
        "# base file: {}{}\n",
        config.base.display(),
        if base_read { "" } else { " (absent: defaults)" }
    );
    for f in config.files.iter().skip(usize::from(base_read)) {
        out += &format!("# drop-in:   {}\n", f.display());
    }
    let entries = config.entries();
    let lines: Vec<String> = entries
        .iter()
        .map(|e| format!("{} = {}", e.name, e.value))
        .collect();
    let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let mut section = "";
    for (e, line) in entries.iter().zip(&lines) {
        if e.section != section {
            section = e.section;
            out += &format!("\n[{section}]\n");
        }
        out += &format!("{line:<width$}  # {}\n", e.source);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned_toml_with_sources() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("config.toml");
        std::fs::write(&base, "[hypervisor]\nvcpus = 2\n").unwrap();
        let config = Config::load_from(&base, true).unwrap();
        let text = render(&config);
        assert!(text.starts_with(&format!(
            "# husk's effective configuration\n# base file: {}\n\n[hypervisor]\n",
            base.display()
        )));
        let vcpus = text.lines().find(|l| l.starts_with("vcpus = 2")).unwrap();
        assert!(
            vcpus.ends_with(&format!("  # {}", base.display())),
            "{vcpus}"
        );
        assert!(text.contains("\n[agent]\n") && text.contains("\n[runtime]\n"));
        // Sources line up.
        let columns: Vec<usize> = text.lines().filter_map(|l| l.find("  # ")).collect();
        assert_eq!(columns.len(), Config::keys().len());
        assert!(columns.windows(2).all(|w| w[0] == w[1]), "{text}");
    }
}
