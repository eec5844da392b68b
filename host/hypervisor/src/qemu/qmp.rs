//! A minimal QMP client for the commands husk needs (`stop`, `cont`).
//!
//! Owns one short-lived connection per command. Must never wait without a timeout or buffer an
//! unbounded reply line.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longest QMP line accepted.
const MAX_LINE: u64 = 64 * 1024;

fn read_line<R: BufRead>(r: &mut R) -> std::io::Result<serde_json::Value> {
    let mut line = String::new();
    Read::take(&mut *r, MAX_LINE).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "QMP closed",
        ));
    }
    serde_json::from_str(&line).map_err(std::io::Error::other)
}

/// Reads until the reply to the last command (skipping asynchronous events).
fn read_reply(r: &mut impl BufRead) -> Result<(), String> {
    loop {
        let v = read_line(r).map_err(|e| e.to_string())?;
        if v.get("return").is_some() {
            return Ok(());
        }
        if let Some(err) = v.get("error") {
            return Err(err.to_string());
        }
    }
}

/// Runs one QMP command on the socket at `path`.
pub fn execute(path: &Path, command: &str, timeout: Duration) -> Result<(), String> {
    let s = UnixStream::connect(path).map_err(|e| format!("QMP {}: {e}", path.display()))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    read_line(&mut r).map_err(|e| format!("QMP greeting: {e}"))?;
    for cmd in ["qmp_capabilities", command] {
        writeln!(w, "{{\"execute\":\"{cmd}\"}}").map_err(|e| e.to_string())?;
        read_reply(&mut r).map_err(|e| format!("QMP {cmd}: {e}"))?;
    }
    Ok(())
}
