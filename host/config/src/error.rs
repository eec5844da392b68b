//! What can be wrong with a configuration, worded for the person who has to fix it.
//!
//! Owns the error type and its messages: every message names the file (or environment variable)
//! at fault, the key as a full dotted path and what would be accepted. Must never decide what is
//! valid (that is [`crate::schema`]'s job) or read files.

use std::fmt;
use std::path::PathBuf;

use crate::Source;

/// Where the base configuration file's path came from; decides whether it may be missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Named by the caller (`--config`): it must exist.
    Explicit,
    /// Named by the `HUSK_CONFIG` environment variable: it must exist.
    Env,
    /// The default path, `/etc/husk/config.toml`: missing means defaults.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Explicit => "given with --config",
            Origin::Env => "named by $HUSK_CONFIG",
            Origin::Default => "the default configuration file",
        })
    }
}

impl Origin {
    fn fix(self) -> &'static str {
        match self {
            Origin::Explicit => "pass an existing file to --config",
            Origin::Env => "point HUSK_CONFIG at an existing file or unset it",
            Origin::Default => "create it or leave it absent",
        }
    }
}

/// A configuration that cannot be used. The first problem found is reported.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A pod annotation husk reads has a value it cannot take.
    #[error("annotation {key}={value:?}: expected {expected}")]
    Annotation {
        key: &'static str,
        value: String,
        expected: &'static str,
    },

    /// A configuration file that must exist does not.
    #[error("configuration file {} ({origin}) does not exist; {}", path.display(), origin.fix())]
    Missing { path: PathBuf, origin: Origin },

    /// A configuration file exists but cannot be read.
    #[error("cannot read configuration file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },

    /// The drop-in directory exists but cannot be listed.
    #[error("cannot list drop-in directory {}: {error}", dir.display())]
    ReadDropIns { dir: PathBuf, error: std::io::Error },

    /// A file is not valid TOML.
    #[error("{} is not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },

    /// A table at the top level that is not one of the sections.
    #[error(
        "unknown section `[{section}]` in {}{hint}; known sections: {known}",
        path.display()
    )]
    UnknownSection {
        path: PathBuf,
        section: String,
        /// ` (did you mean …?)` or empty.
        hint: String,
        known: String,
    },

    /// A plain key at the top level, outside any section.
    #[error(
        "unknown key `{key}` in {}{hint}; keys belong in a section: {known}",
        path.display()
    )]
    TopLevelKey {
        path: PathBuf,
        key: String,
        /// ` (did you mean …?)` or empty.
        hint: String,
        known: String,
    },

    /// A key a section does not have.
    #[error(
        "unknown key `{key}` in {}{hint}; known keys in [{section}]: {known}",
        path.display()
    )]
    UnknownKey {
        path: PathBuf,
        /// The full dotted path, e.g. `hypervisor.memroy_mib`.
        key: String,
        section: String,
        /// ` (did you mean …?)` or empty.
        hint: String,
        known: String,
    },

    /// A key whose value has the wrong TOML type.
    #[error("`{key}` in {} must be {expected}, not {found}", path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        /// The type and value found, e.g. `a string ("2")`.
        found: String,
    },

    /// A value of the right type that is not allowed, found after merging every file.
    #[error("invalid value {value} for `{key}` in {set_by}; expected {expected}")]
    InvalidValue {
        key: String,
        /// The value as TOML.
        value: String,
        /// The file (or environment variable) that set it.
        set_by: Source,
        expected: &'static str,
    },
}
