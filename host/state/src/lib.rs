//! The runtime state directory (`runtime.state_dir`): one JSON record per running sandbox,
//! written by `husk run` and by the containerd shim, read by `husk ps` and `husk exec`.
//!
//! Owns the records' location (root-only, 0700), their schema, writing, updating, removal,
//! listing and finding one by id, name or unique id prefix. Must never keep a record past its
//! sandbox: records are removed by a guard, and records of dead husk processes are dropped when
//! read. Never starts or reaches a VM itself.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use husk_protocols::manifest::CONSOLE_SERVICE;
use serde::{Deserialize, Serialize};

/// Which husk process made the sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `husk run`.
    #[default]
    Run,
    /// containerd, through containerd-shim-husk-v2.
    Shim,
}

impl Origin {
    pub fn name(self) -> &'static str {
        match self {
            Origin::Run => "run",
            Origin::Shim => "containerd",
        }
    }
}

/// One running sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: String,
    /// The container image (`husk run`), or the containerd namespace's pod (`shim`).
    pub image: String,
    pub command: Vec<String>,
    /// The husk process that owns the sandbox (husk run, or the shim).
    pub pid: u32,
    /// Seconds since the epoch.
    pub created: u64,
    pub backend: String,
    #[serde(default)]
    pub origin: Origin,
    /// The VM's hybrid vsock socket, once its guest is up; none while it boots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<PathBuf>,
    /// Whether the guest runs husk-console (`husk exec` can reach it).
    #[serde(default)]
    pub console: bool,
    /// The guest image the VM booted.
    #[serde(default)]
    pub guest_image: PathBuf,
    /// The ids of the containers in the sandbox, as `husk exec --container` takes them.
    #[serde(default)]
    pub containers: Vec<String>,
}

impl Record {
    /// How messages name the sandbox: its name, with its id when they differ.
    pub fn label(&self) -> String {
        if self.name == self.id || self.name.is_empty() {
            self.id.clone()
        } else {
            format!("{} ({})", self.name, self.id)
        }
    }

    /// `running` once the guest is up, `booting` before.
    pub fn status(&self) -> &'static str {
        if self.vsock.is_some() {
            "running"
        } else {
            "booting"
        }
    }
}

/// Why a record could not be written or found.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot write the sandbox record in {}: {source}", dir.display())]
    Write {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("no sandbox {query:?} runs on this host{}; `husk ps` lists them (state directory {})", known_list(known), dir.display())]
    NotFound {
        query: String,
        known: Vec<String>,
        dir: PathBuf,
    },
    #[error("{query:?} matches several sandboxes ({}): give more of the id", matches.join(", "))]
    Ambiguous { query: String, matches: Vec<String> },
    #[error(
        "sandbox {sandbox} is not running: the husk process that held it (pid {pid}) has exited"
    )]
    NotRunning { sandbox: String, pid: u32 },
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        " (none run now)".into()
    } else {
        format!(" (running: {})", known.join(", "))
    }
}

/// The record of a sandbox; removed when dropped.
#[derive(Debug)]
pub struct Registered {
    path: PathBuf,
    record: Mutex<Record>,
}

impl Registered {
    /// Changes the record and writes it again (atomically: readers see the old or the new).
    pub fn update(&self, change: impl FnOnce(&mut Record)) -> Result<(), StateError> {
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut r);
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        write(dir, &r)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn record_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

fn write(dir: &Path, r: &Record) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        dir: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let tmp = dir.join(format!(".{}.json.tmp", r.id));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    serde_json::to_writer_pretty(&mut f, r).map_err(|e| err(e.into()))?;
    std::fs::rename(&tmp, record_path(dir, &r.id)).map_err(err)
}

/// Writes `r` in `dir` (created root-only) and returns its guard. The id must be a plain
/// file name (sandbox and VM ids are).
pub fn register(dir: &Path, r: &Record) -> Result<Registered, StateError> {
    if r.id.is_empty() || r.id.contains('/') || r.id.starts_with('.') {
        return Err(StateError::Write {
            dir: dir.to_owned(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("sandbox id {:?} is not a file name", r.id),
            ),
        });
    }
    write(dir, r)?;
    Ok(Registered {
        path: record_path(dir, &r.id),
        record: Mutex::new(r.clone()),
    })
}

/// Seconds since the epoch, as records keep `created`.
pub fn epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether a process exists and has not exited: a zombie (exited, not yet reaped by its
/// parent) counts as gone.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat.get(i + 1..))
            .and_then(|rest| rest.split_ascii_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Every record in `dir`, live or not, with its file.
fn read_all(dir: &Path) -> Vec<(PathBuf, Record)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Record)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .filter_map(|p| {
            let r = serde_json::from_slice::<Record>(&std::fs::read(&p).ok()?).ok()?;
            Some((p, r))
        })
        .collect();
    out.sort_by(|(_, a), (_, b)| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
    out
}

/// The records of live sandboxes; records whose husk process is gone are removed.
pub fn list(dir: &Path) -> Vec<Record> {
    read_all(dir)
        .into_iter()
        .filter_map(|(path, r)| {
            if alive(r.pid) {
                Some(r)
            } else {
                let _ = std::fs::remove_file(&path);
                None
            }
        })
        .collect()
}

/// The sandbox `query` names: its id, its name, or a prefix of exactly one id.
pub fn find(dir: &Path, query: &str) -> Result<Record, StateError> {
    let all = read_all(dir);
    let pick = all
        .iter()
        .find(|(_, r)| r.id == query)
        .or_else(|| all.iter().find(|(_, r)| r.name == query))
        .cloned();
    let (path, r) = match pick {
        Some(found) => found,
        None => {
            let matches: Vec<&(PathBuf, Record)> = all
                .iter()
                .filter(|(_, r)| !query.is_empty() && r.id.starts_with(query))
                .collect();
            match matches.as_slice() {
                [one] => (*one).clone(),
                [] => {
                    return Err(StateError::NotFound {
                        query: query.to_owned(),
                        known: list(dir).into_iter().map(|r| r.id).collect(),
                        dir: dir.to_owned(),
                    })
                }
                many => {
                    return Err(StateError::Ambiguous {
                        query: query.to_owned(),
                        matches: many.iter().map(|(_, r)| r.id.clone()).collect(),
                    })
                }
            }
        }
    };
    if !alive(r.pid) {
        let _ = std::fs::remove_file(&path);
        return Err(StateError::NotRunning {
            sandbox: r.label(),
            pid: r.pid,
        });
    }
    Ok(r)
}

/// Whether a VM booting `image` with kernel command-line words `cmdline` runs husk-console:
/// its manifest (beside the image) lists a `console` service that the command line enables,
/// by the rule husk-init applies.
pub fn console_enabled(image: &Path, cmdline: &[String]) -> bool {
    use husk_protocols::manifest::{manifest_path_for, ImageManifest};
    let Some(m) = std::fs::read(manifest_path_for(image))
        .ok()
        .and_then(|b| serde_json::from_slice::<ImageManifest>(&b).ok())
    else {
        return false;
    };
    let line = cmdline.join(" ");
    m.services
        .iter()
        .any(|s| s.name == CONSOLE_SERVICE && s.enabled(&line))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, name: &str, pid: u32) -> Record {
        Record {
            id: id.into(),
            name: name.into(),
            image: "busybox".into(),
            command: vec!["sh".into()],
            pid,
            created: 1,
            backend: "qemu".into(),
            origin: Origin::Run,
            vsock: None,
            console: false,
            guest_image: PathBuf::new(),
            containers: vec!["main".into()],
        }
    }

    #[test]
    fn records_are_found_by_id_name_and_unique_prefix() {
        let d = tempfile::tempdir().expect("tempdir");
        let me = std::process::id();
        let _a = register(d.path(), &record("abc123", "web", me)).expect("register");
        let b = register(d.path(), &record("abd456", "db", me)).expect("register");
        assert_eq!(find(d.path(), "abc123").expect("id").name, "web");
        assert_eq!(find(d.path(), "db").expect("name").id, "abd456");
        assert_eq!(find(d.path(), "abc").expect("prefix").id, "abc123");
        let e = find(d.path(), "ab").expect_err("ambiguous");
        assert!(e.to_string().contains("abc123, abd456"), "{e}");
        let e = find(d.path(), "zzz").expect_err("unknown");
        assert!(matches!(e, StateError::NotFound { .. }), "{e}");
        assert!(e.to_string().contains("husk ps"), "{e}");
        b.update(|r| r.vsock = Some("/run/x/vsock.sock".into()))
            .expect("update");
        assert_eq!(find(d.path(), "db").expect("name").status(), "running");
        drop(b);
        assert!(
            find(d.path(), "db").is_err(),
            "the guard removes its record"
        );
    }

    #[test]
    fn a_dead_owner_means_not_running() {
        let d = tempfile::tempdir().expect("tempdir");
        // A pid that cannot exist (above pid_max's ceiling).
        let reg = register(d.path(), &record("dead1", "x", 4_194_305)).expect("register");
        let e = find(d.path(), "dead1").expect_err("dead");
        assert!(matches!(e, StateError::NotRunning { .. }), "{e}");
        assert!(list(d.path()).is_empty());
        drop(reg);
        let e = register(d.path(), &record("../x", "y", 1)).expect_err("bad id");
        assert!(e.to_string().contains("not a file name"), "{e}");
    }

    #[test]
    fn the_console_follows_the_manifest_and_command_line() {
        use husk_protocols::manifest::{ImageManifest, ServiceSpec, ServiceStdio};
        let d = tempfile::tempdir().expect("tempdir");
        let image = d.path().join("default.cpio");
        let service = |gate: Option<&str>| ServiceSpec {
            name: CONSOLE_SERVICE.into(),
            argv: vec!["/usr/bin/husk-console".into()],
            env: vec![],
            stdio: ServiceStdio::Log,
            enabled_by: gate.map(str::to_owned),
        };
        let write = |services: Vec<ServiceSpec>| {
            let m = ImageManifest {
                schema: 1,
                build_id: "x".into(),
                flavour: "default".into(),
                components: Default::default(),
                services,
                selinux: None,
            };
            std::fs::write(
                d.path().join("default.cpio.manifest.json"),
                serde_json::to_vec(&m).expect("json"),
            )
            .expect("write");
        };
        assert!(!console_enabled(&image, &[]), "no manifest: no console");
        write(vec![service(Some("husk.console"))]);
        assert!(!console_enabled(&image, &["quiet".into()]));
        assert!(console_enabled(&image, &["husk.console=1".into()]));
        write(vec![service(None)]);
        assert!(console_enabled(&image, &[]));
    }
}
