//! A process's standard streams between containerd and the guest: containerd's FIFOs (or
//! `file://` paths) on one side, the agent's `husk.stdio.v1` vsock streams on the other.
//!
//! Owns the copying and its end: [`Copies::wait`] returns once every byte of output reached
//! containerd's side, so the exit event can follow it. Must never lose output when containerd
//! restarts: the stdout/stderr FIFOs are opened read-write, so they stay open with no reader.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;

use husk_protocols::stdio::StreamKind;

/// Where containerd wants one stream: nothing, a FIFO (or plain path), or a file URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    None,
    Fifo(String),
    File(String),
}

/// Why an I/O target is refused.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("stdio URI {0:?} is not supported: use a FIFO path or file://")]
    Scheme(String),
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
}

impl Target {
    /// Reads containerd's stdio value: empty, a path (a FIFO), `file://PATH`, or (unsupported
    /// as yet) `binary://`.
    pub fn parse(value: &str) -> Result<Self, IoError> {
        if value.is_empty() {
            return Ok(Target::None);
        }
        if let Some(path) = value.strip_prefix("file://") {
            return Ok(Target::File(path.to_owned()));
        }
        if value.starts_with('/') || value.strip_prefix("fifo://").is_some() {
            let path = value.strip_prefix("fifo://").unwrap_or(value);
            return Ok(Target::Fifo(path.to_owned()));
        }
        Err(IoError::Scheme(value.to_owned()))
    }

    fn open_output(&self) -> Result<Option<File>, IoError> {
        let open = |path: &str, o: &mut OpenOptions| {
            o.open(path).map(Some).map_err(|source| IoError::Open {
                path: path.to_owned(),
                source,
            })
        };
        match self {
            Target::None => Ok(None),
            // Read-write: the open does not wait for a reader, and the FIFO stays open (its
            // buffer kept) while containerd restarts.
            Target::Fifo(p) => open(p, OpenOptions::new().read(true).write(true)),
            Target::File(p) => open(p, OpenOptions::new().create(true).append(true)),
        }
    }
}

/// The copies of one process.
#[derive(Debug, Default)]
pub struct Copies {
    outputs: Vec<JoinHandle<()>>,
}

fn copy_out(mut from: UnixStream, mut to: File) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Err(e) = to.write_all(&buf[..n]) {
                        tracing::warn!(error = %e, "writing container output");
                        break;
                    }
                }
            }
        }
    })
}

/// Opens the process's streams in the guest (before it starts) and starts copying.
/// `open` opens one stream of the process.
pub fn attach(
    stdin: &Target,
    stdout: &Target,
    stderr: &Target,
    terminal: bool,
    mut open: impl FnMut(StreamKind) -> anyhow::Result<UnixStream>,
) -> anyhow::Result<Copies> {
    let mut copies = Copies::default();
    let outputs = if terminal {
        vec![(StreamKind::Stdout, stdout)]
    } else {
        vec![(StreamKind::Stdout, stdout), (StreamKind::Stderr, stderr)]
    };
    for (kind, target) in outputs {
        if let Some(file) = target.open_output()? {
            copies.outputs.push(copy_out(open(kind)?, file));
        }
    }
    let input = match stdin {
        Target::None => None,
        Target::Fifo(p) | Target::File(p) => Some(p.clone()),
    };
    if let Some(path) = input {
        let mut stream = open(StreamKind::Stdin)?;
        std::thread::spawn(move || {
            // Blocks until containerd's side opens it for writing; ends at its close.
            match File::open(&path) {
                Ok(mut f) => {
                    let _ = std::io::copy(&mut f, &mut stream);
                }
                Err(e) => tracing::warn!(path, error = %e, "opening stdin"),
            }
            // The guest reads this as the end of input, after the last byte.
            let _ = stream.shutdown(Shutdown::Write);
        });
    }
    Ok(copies)
}

impl Copies {
    /// Waits until every output stream ended and was written out.
    pub fn wait(self) {
        for t in self.outputs {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(Target::parse("").unwrap(), Target::None);
        assert_eq!(
            Target::parse("/run/containerd/fifo/1/x-stdout").unwrap(),
            Target::Fifo("/run/containerd/fifo/1/x-stdout".into())
        );
        assert_eq!(
            Target::parse("file:///var/log/x").unwrap(),
            Target::File("/var/log/x".into())
        );
        assert!(matches!(
            Target::parse("binary:///usr/bin/logger"),
            Err(IoError::Scheme(_))
        ));
    }
}
