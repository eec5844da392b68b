//! A process's standard streams between containerd and the guest: containerd's FIFOs, `file://`
//! paths or a `binary://` logging program on one side, the agent's `husk.stdio.v1` vsock
//! streams on the other.
//!
//! Owns the copying and its end: [`Copies::wait`] returns once every byte of output reached
//! containerd's side, so the exit event can follow it. Must never lose output when containerd
//! restarts: the stdout/stderr FIFOs are opened read-write, so they stay open with no reader.

use std::fs::{File, OpenOptions};
use std::io::Read;
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
    /// containerd's logging-binary protocol: the program gets the process's stdout on fd 3,
    /// stderr on fd 4, closes fd 5 when it is ready, and `CONTAINER_ID`/`CONTAINER_NAMESPACE`.
    Binary {
        path: String,
        args: Vec<String>,
    },
}

/// Why an I/O target is refused.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("stdio URI {0:?} is not supported: use a FIFO path, file:// or binary://")]
    Scheme(String),
    #[error("the logging binary {path}: {detail}")]
    Binary { path: String, detail: String },
    #[error("opening {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
}

impl Target {
    /// Reads containerd's stdio value: empty, a path (a FIFO), `file://PATH`, or
    /// `binary://PATH?key=value&…` (arguments `key value …`, as containerd passes them).
    pub fn parse(value: &str) -> Result<Self, IoError> {
        if value.is_empty() {
            return Ok(Target::None);
        }
        if let Some(rest) = value.strip_prefix("binary://") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if !path.starts_with('/') {
                return Err(IoError::Scheme(value.to_owned()));
            }
            let args = query
                .split('&')
                .filter(|kv| !kv.is_empty())
                .flat_map(|kv| match kv.split_once('=') {
                    Some((k, v)) => vec![k.to_owned(), v.to_owned()],
                    None => vec![kv.to_owned()],
                })
                .collect();
            return Ok(Target::Binary {
                path: path.to_owned(),
                args,
            });
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
            Target::Binary { .. } => Ok(None),
        }
    }
}

/// How long a logging binary gets to say it is ready, and to finish after the output ends.
const BINARY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts a logging binary; returns it and the write ends for stdout and stderr.
fn start_binary(
    path: &str,
    args: &[String],
    id: &str,
    namespace: &str,
) -> Result<(std::process::Child, File, File), IoError> {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let err = |detail: String| IoError::Binary {
        path: path.to_owned(),
        detail,
    };
    let pipe = || -> Result<(OwnedFd, OwnedFd), IoError> {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| err(e.to_string()))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = std::process::Command::new(path);
    cmd.args(args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(std::process::Stdio::null());
    // SAFETY: dup2(2) only, between fork and exec: fds 3, 4 and 5 as the protocol says (dup2
    // clears close-on-exec on the copies).
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as libc::c_int) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| err(e.to_string()))?;
    drop((out_r, err_r, ready_w));
    // Ready when it closes fd 5 (end of file on our side), or exits.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1];
        let _ = File::from(ready_r).read(&mut buf);
        let _ = tx.send(());
    });
    rx.recv_timeout(BINARY_WAIT)
        .map_err(|_| err(format!("not ready (fd 5 still open) after {BINARY_WAIT:?}")))?;
    Ok((child, File::from(out_w), File::from(err_w)))
}

/// The copies of one process.
#[derive(Debug, Default)]
pub struct Copies {
    outputs: Vec<JoinHandle<()>>,
    /// A logging binary, waited for once the output ended.
    logger: Option<std::process::Child>,
}

/// Opens the process's streams in the guest (before it starts) and starts copying.
/// `open` opens one stream of the process.
pub fn attach(
    stdin: &Target,
    stdout: &Target,
    stderr: &Target,
    terminal: bool,
    (id, namespace): (&str, &str),
    mut open: impl FnMut(StreamKind) -> anyhow::Result<UnixStream>,
) -> anyhow::Result<Copies> {
    let mut copies = Copies::default();
    // One logging binary takes both streams (containerd gives it as stdout and stderr).
    let mut binary_ends = match stdout {
        Target::Binary { path, args } => {
            let (child, out, err) = start_binary(path, args, id, namespace)?;
            copies.logger = Some(child);
            Some((Some(out), Some(err)))
        }
        _ => None,
    };
    let outputs = if terminal {
        vec![(StreamKind::Stdout, stdout)]
    } else {
        vec![(StreamKind::Stdout, stdout), (StreamKind::Stderr, stderr)]
    };
    for (kind, target) in outputs {
        let file = match (&mut binary_ends, kind) {
            (Some((out, _)), StreamKind::Stdout) => out.take(),
            (Some((_, err)), StreamKind::Stderr) => err.take(),
            _ => target.open_output()?,
        };
        if let Some(file) = file {
            copies
                .outputs
                .push(husk_agent_client::copy_output(open(kind)?, file));
        }
    }
    let input = match stdin {
        Target::None | Target::Binary { .. } => None,
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
        // The copies dropped their write ends: the logging binary sees end of file and exits.
        if let Some(mut child) = self.logger {
            let pid = child.id();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = child.wait();
                let _ = tx.send(());
            });
            if rx.recv_timeout(BINARY_WAIT).is_err() {
                tracing::warn!(
                    pid,
                    "the logging binary did not exit after the output ended; killed"
                );
                // SAFETY: kill(2) on our child, not yet reaped (the waiting thread holds it).
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
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
        assert_eq!(
            Target::parse("binary:///usr/bin/logger?tag=web&level=info").unwrap(),
            Target::Binary {
                path: "/usr/bin/logger".into(),
                args: vec!["tag".into(), "web".into(), "level".into(), "info".into()],
            }
        );
        assert!(matches!(
            Target::parse("binary://relative"),
            Err(IoError::Scheme(_))
        ));
        assert!(matches!(Target::parse("http://x"), Err(IoError::Scheme(_))));
    }
}
