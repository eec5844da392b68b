//! The client's `Open` frame, checked: what a session may run, with which environment, where.
//!
//! Owns the validation of untrusted input (argument and environment shapes, working directory,
//! window size, container id, protocol major). Must never touch the system: it only turns an
//! `Open` into a [`Request`] or a [`SessionError`] with a message that names the fault.

use husk_protocols::console::{major_of, Open, MAJOR, PROTOCOL};
use husk_protocols::container_record::valid_id;

use crate::error::SessionError;

/// Most arguments a session's program may get.
pub const MAX_ARGS: usize = 4096;
/// Most environment entries the client may add.
pub const MAX_ENV: usize = 4096;
/// Longest working directory accepted (`PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// Largest terminal dimension accepted (rows or columns).
pub const MAX_DIMENSION: u32 = 10_000;
/// The terminal size when the client gives none (or 0x0, a terminal it could not measure).
pub const DEFAULT_SIZE: WinSize = WinSize { rows: 24, cols: 80 };

/// A terminal's size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WinSize {
    pub rows: u16,
    pub cols: u16,
}

impl WinSize {
    /// A size from a `resize` frame: `None` if it is zero or absurd (the frame is then ignored).
    pub fn checked(rows: u32, cols: u32) -> Option<Self> {
        if rows == 0 || cols == 0 || rows > MAX_DIMENSION || cols > MAX_DIMENSION {
            return None;
        }
        Some(Self {
            rows: rows as u16,
            cols: cols as u16,
        })
    }
}

/// A session as the client asked for it, every field checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Program and arguments; empty: the default shell.
    pub args: Vec<String>,
    pub tty: bool,
    /// `(key, value)` entries to add to or replace in the default environment.
    pub env: Vec<(String, String)>,
    /// An absolute working directory, if the client gave one.
    pub cwd: Option<String>,
    /// The initial terminal size (tty sessions).
    pub size: WinSize,
    /// The container to enter, if any (a valid record id).
    pub container_id: Option<String>,
    /// Who opened the session, printable and short, for the log.
    pub client: String,
    /// The client's trace context, when it sent a valid one.
    pub traceparent: Option<String>,
}

/// Checks an `Open` frame.
pub fn validate(open: Open) -> Result<Request, SessionError> {
    check_protocol(&open.protocol)?;
    if open.args.len() > MAX_ARGS {
        return Err(bad(format!(
            "too many arguments: {} (at most {MAX_ARGS})",
            open.args.len()
        )));
    }
    if let Some(first) = open.args.first() {
        if first.is_empty() {
            return Err(bad("the program name (first argument) is empty"));
        }
    }
    if let Some(i) = open.args.iter().position(|a| a.contains('\0')) {
        return Err(bad(format!("argument {i} contains a NUL byte")));
    }
    if open.env.len() > MAX_ENV {
        return Err(bad(format!(
            "too many environment entries: {} (at most {MAX_ENV})",
            open.env.len()
        )));
    }
    let env = open
        .env
        .iter()
        .map(|e| parse_env(e))
        .collect::<Result<Vec<_>, _>>()?;
    let cwd = match open.cwd.as_str() {
        "" => None,
        c if !c.starts_with('/') => {
            return Err(bad(format!(
                "working directory {c:?} is not an absolute path"
            )))
        }
        c if c.len() > MAX_PATH || c.contains('\0') => {
            return Err(bad("working directory is too long or contains a NUL byte"))
        }
        c => Some(c.to_owned()),
    };
    let size = match open.size.as_ref() {
        None => DEFAULT_SIZE,
        Some(s) if s.rows == 0 && s.cols == 0 => DEFAULT_SIZE,
        Some(s) => WinSize::checked(s.rows, s.cols).ok_or_else(|| {
            bad(format!(
                "window size {}x{} is invalid (rows and columns 1-{MAX_DIMENSION})",
                s.rows, s.cols
            ))
        })?,
    };
    let container_id = match open.container_id.as_str() {
        "" => None,
        id if valid_id(id) => Some(id.to_owned()),
        id => {
            return Err(SessionError::NoContainer(format!(
                "{:?} is not a container id (1-128 of A-Z a-z 0-9 _ . -, not starting with '.')",
                printable(id, 140)
            )))
        }
    };
    Ok(Request {
        args: open.args,
        tty: open.tty,
        env,
        cwd,
        size,
        container_id,
        client: printable(&open.client, 128),
        traceparent: husk_protocols::trace_context::TraceParent::parse(&open.traceparent)
            .map(|tp| tp.to_string()),
    })
}

fn check_protocol(protocol: &str) -> Result<(), SessionError> {
    match major_of(protocol) {
        Some(MAJOR) => Ok(()),
        _ => Err(SessionError::Protocol(format!(
            "the client speaks {:?}, this husk-console speaks {PROTOCOL} (major {MAJOR}); \
             use a husk of the same major version",
            printable(protocol, 64)
        ))),
    }
}

/// Splits a `KEY=VALUE` entry; the key is non-empty and neither holds a NUL byte.
fn parse_env(entry: &str) -> Result<(String, String), SessionError> {
    let shown = || printable(entry, 64);
    let Some((key, value)) = entry.split_once('=') else {
        return Err(bad(format!(
            "environment entry {:?} is not KEY=VALUE",
            shown()
        )));
    };
    if key.is_empty() {
        return Err(bad(format!(
            "environment entry {:?} has an empty name",
            shown()
        )));
    }
    if entry.contains('\0') {
        return Err(bad(format!(
            "environment entry {:?} contains a NUL byte",
            shown()
        )));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// `text` cut to `max` characters with control characters replaced, safe for a log line.
pub fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn bad(message: impl Into<String>) -> SessionError {
    SessionError::BadRequest(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocols::console::WindowSize;

    fn open() -> Open {
        let mut o = Open::new();
        o.protocol = PROTOCOL.into();
        o.args = vec!["true".into()];
        o
    }

    #[test]
    fn a_plain_open_is_accepted_with_defaults() {
        let r = validate(open()).unwrap();
        assert_eq!(r.args, ["true"]);
        assert_eq!(r.size, DEFAULT_SIZE);
        assert_eq!(r.cwd, None);
        assert_eq!(r.container_id, None);
    }

    #[test]
    fn protocol_majors() {
        let mut o = open();
        o.protocol = "husk.console.v2".into();
        let e = validate(o).unwrap_err();
        assert!(matches!(e, SessionError::Protocol(_)));
        assert!(e.to_string().contains("husk.console.v2") && e.to_string().contains(PROTOCOL));
        let mut o = open();
        o.protocol = String::new();
        assert!(matches!(validate(o), Err(SessionError::Protocol(_))));
    }

    #[test]
    fn environment_entries() {
        let mut o = open();
        o.env = vec!["A=1".into(), "B=x=y".into(), "C=".into()];
        let r = validate(o).unwrap();
        assert_eq!(
            r.env,
            [
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into()),
                ("C".into(), String::new())
            ]
        );
        for bad in ["NOEQUALS", "=value", "A=b\0c"] {
            let mut o = open();
            o.env = vec![bad.into()];
            assert!(
                matches!(validate(o), Err(SessionError::BadRequest(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn arguments_cwd_and_sizes() {
        let mut o = open();
        o.args = vec![String::new()];
        assert!(matches!(validate(o), Err(SessionError::BadRequest(_))));
        let mut o = open();
        o.args = vec!["a\0b".into()];
        assert!(matches!(validate(o), Err(SessionError::BadRequest(_))));
        let mut o = open();
        o.cwd = "relative/dir".into();
        assert!(matches!(validate(o), Err(SessionError::BadRequest(_))));
        let mut o = open();
        o.cwd = "/tmp".into();
        assert_eq!(validate(o).unwrap().cwd.as_deref(), Some("/tmp"));

        let sized = |rows, cols| {
            let mut o = open();
            let mut s = WindowSize::new();
            s.rows = rows;
            s.cols = cols;
            o.size = Some(s).into();
            validate(o)
        };
        assert_eq!(sized(0, 0).unwrap().size, DEFAULT_SIZE);
        assert_eq!(
            sized(33, 101).unwrap().size,
            WinSize {
                rows: 33,
                cols: 101
            }
        );
        assert!(sized(0, 80).is_err());
        assert!(sized(24, 1_000_000).is_err());
    }

    #[test]
    fn container_ids() {
        let mut o = open();
        o.container_id = "c1".into();
        assert_eq!(validate(o).unwrap().container_id.as_deref(), Some("c1"));
        for bad in ["../etc/passwd", ".x", "a b"] {
            let mut o = open();
            o.container_id = bad.into();
            assert!(
                matches!(validate(o), Err(SessionError::NoContainer(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn printable_strips_control_characters() {
        assert_eq!(printable("a\x1b[2Jb\n", 100), "a?[2Jb?");
        assert_eq!(printable("abcdef", 3), "abc");
    }
}
