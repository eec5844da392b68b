//! Finding and reading the configuration: the base file (`--config`, `$HUSK_CONFIG` or
//! `/etc/husk/config.toml`), then `config.d/*.toml` beside it in lexical order, on top of the
//! defaults and the environment variables that move them; merging, then checking every value.
//!
//! Owns the load order and which layer set each key. Must never write files, and must never
//! read the process environment itself: every lookup goes through the `env` function it is
//! given, so tests stay independent of each other and of the machine.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use husk_hypervisor::artifacts::{DEFAULT_HOME, HOME_ENV, LOG_ROOT_ENV, RUN_ROOT_ENV};
use toml::Value;

use crate::schema::{self, KEYS};
use crate::{
    Config, ConfigError, Origin, Source, CONFIG_ENV, DEFAULT_CONFIG, DROP_IN_DIR, STATE_DIR_ENV,
};

/// Looks up an environment variable.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// A variable's value, with empty meaning unset (as everywhere else in husk).
fn var(env: Env<'_>, name: &str) -> Option<OsString> {
    env(name).filter(|v| !v.is_empty())
}

/// The base file and why it is that one: the caller's path wins over `$HUSK_CONFIG`, which
/// wins over [`DEFAULT_CONFIG`].
pub(crate) fn resolve_base(explicit: Option<&Path>, env: Env<'_>) -> (PathBuf, Origin) {
    if let Some(p) = explicit {
        return (p.to_owned(), Origin::Explicit);
    }
    if let Some(p) = var(env, CONFIG_ENV) {
        return (PathBuf::from(p), Origin::Env);
    }
    (PathBuf::from(DEFAULT_CONFIG), Origin::Default)
}

/// The drop-in directory that belongs to `base`.
pub(crate) fn drop_in_dir(base: &Path) -> PathBuf {
    match base.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(DROP_IN_DIR),
        _ => PathBuf::from(".").join(DROP_IN_DIR),
    }
}

/// The drop-ins, in lexical order of their names: regular files (or links to them) named
/// `*.toml`, not hidden. A missing directory means none.
fn drop_ins(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(ConfigError::ReadDropIns {
                dir: dir.to_owned(),
                error,
            })
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| ConfigError::ReadDropIns {
            dir: dir.to_owned(),
            error,
        })?;
        let name = entry.file_name();
        let bytes = name.as_bytes();
        if bytes.starts_with(b".") || !bytes.ends_with(b".toml") {
            continue;
        }
        if entry.path().is_file() {
            names.push(name);
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// The text of `path`, or `None` when it does not exist and may not.
fn read(path: &Path, origin: Origin) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == ErrorKind::NotFound => match origin {
            Origin::Default => Ok(None),
            Origin::Explicit | Origin::Env => Err(ConfigError::Missing {
                path: path.to_owned(),
                origin,
            }),
        },
        Err(error) => Err(ConfigError::Read {
            path: path.to_owned(),
            error,
        }),
    }
}

/// Loads `base` (which must exist unless `origin` is [`Origin::Default`]) and its drop-ins.
pub(crate) fn load(base: &Path, origin: Origin, env: Env<'_>) -> Result<Config, ConfigError> {
    // Every layer's keys, later layers overriding earlier ones key by key.
    let mut merged: BTreeMap<usize, (Value, Source)> = BTreeMap::new();
    let mut set = |key: &str, value: Value, source: Source| {
        if let Some((section, name)) = key.split_once('.') {
            if let Some(i) = schema::index(section, name) {
                merged.insert(i, (value, source));
            }
        }
    };

    // The environment variables husk already honours move the defaults.
    let home = var(env, HOME_ENV).map(PathBuf::from);
    if let Some(home) = &home {
        let source = Source::Env(HOME_ENV);
        set(
            "hypervisor.kernel",
            path_value(&kernel_in(home)),
            source.clone(),
        );
        set(
            "hypervisor.image",
            path_value(&image_in(home, false)),
            source,
        );
    }
    for (name, key) in [
        (STATE_DIR_ENV, "runtime.state_dir"),
        (RUN_ROOT_ENV, "runtime.run_root"),
        (LOG_ROOT_ENV, "runtime.log_root"),
    ] {
        if let Some(v) = var(env, name) {
            set(key, path_value(Path::new(&v)), Source::Env(name));
        }
    }

    // Then the files, each checked on its own.
    let mut files = Vec::new();
    let mut layers = Vec::new();
    if let Some(text) = read(base, origin)? {
        layers.push((base.to_owned(), text));
    }
    for path in drop_ins(&drop_in_dir(base))? {
        // A drop-in removed since the listing is simply not there.
        if let Some(text) = read(&path, Origin::Default)? {
            layers.push((path, text));
        }
    }
    for (path, text) in layers {
        for (i, value) in schema::check_file(&path, &text)? {
            set(&KEYS[i].key(), value, Source::File(path.clone()));
        }
        files.push(path);
    }

    // Then every value, merged.
    let home = home.unwrap_or_else(|| PathBuf::from(DEFAULT_HOME));
    let mut config = Config::builtin(&home);
    for (i, (value, source)) in merged {
        let spec = &KEYS[i];
        if !(spec.apply)(&mut config, &value) {
            return Err(ConfigError::InvalidValue {
                key: spec.key(),
                value: value.to_string(),
                set_by: source,
                expected: spec.expected,
            });
        }
        config.sources.insert(spec.key(), source);
    }
    // An image given by name lives under the artifact root.
    if config.hypervisor.image.is_relative() {
        config.hypervisor.image = image_named(&home, &config.hypervisor.image.to_string_lossy());
    }
    // The debug console lives in the debug image: it is the default image when asked for.
    let image_from_file = matches!(
        config.sources.get("hypervisor.image"),
        Some(Source::File(_))
    );
    if config.agent.debug_console && !image_from_file {
        config.hypervisor.image = image_in(&home, true);
    }
    config.base = base.to_owned();
    config.files = files;
    config.home = home;
    Ok(config)
}

/// The guest kernel under an artifact root (as `husk_hypervisor::artifacts::kernel`).
pub(crate) fn kernel_in(home: &Path) -> PathBuf {
    home.join("kernel/vmlinux")
}

/// The guest image under an artifact root (as `husk_hypervisor::artifacts::image`).
pub(crate) fn image_in(home: &Path, debug: bool) -> PathBuf {
    image_named(home, if debug { "debug" } else { "default" })
}

/// The image called `name` under an artifact root.
pub(crate) fn image_named(home: &Path, name: &str) -> PathBuf {
    home.join("images").join(format!("{name}.cpio"))
}

fn path_value(p: &Path) -> Value {
    Value::from(p.to_string_lossy().into_owned())
}
