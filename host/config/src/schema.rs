//! The keys: every section and key husk's configuration has, its TOML type, the values it
//! accepts, how it is stored in [`Config`] and how it is shown back.
//!
//! Owns the list of keys (the one place a key is added), the per-file check (unknown sections
//! and keys, wrong types) and the per-key value check. Must never read files or the environment.

use std::path::{Path, PathBuf};

use toml::Value;

use crate::{Backend, Config, ConfigError, OtlpProtocol, SharedFs, LOG_LEVELS};

/// The sections, in the order they are shown.
pub(crate) const SECTIONS: [&str; 4] = ["hypervisor", "agent", "runtime", "tracing"];

/// The TOML type a key takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    Int,
    Str,
    StrArray,
}

/// One key.
#[derive(Debug)]
pub(crate) struct KeySpec {
    pub section: &'static str,
    pub name: &'static str,
    pub kind: Kind,
    /// What is accepted, for error messages ("an integer from 1 to 255").
    pub expected: &'static str,
    /// Stores a value of the right [`Kind`] in the configuration; `false` if it is not allowed.
    pub apply: fn(&mut Config, &Value) -> bool,
    /// The current value, as TOML.
    pub get: fn(&Config) -> Value,
}

impl KeySpec {
    /// `section.name`.
    pub fn key(&self) -> String {
        format!("{}.{}", self.section, self.name)
    }
}

/// Every key, in the order they are shown.
pub(crate) static KEYS: &[KeySpec] = &[
    // [hypervisor]
    KeySpec {
        section: "hypervisor",
        name: "backend",
        kind: Kind::Str,
        expected: "one of \"auto\", \"qemu\", \"builtin\"",
        apply: |c, v| {
            set(
                &mut c.hypervisor.backend,
                v.as_str().and_then(Backend::parse),
            )
        },
        get: |c| Value::from(c.hypervisor.backend.name()),
    },
    KeySpec {
        section: "hypervisor",
        name: "kernel",
        kind: Kind::Str,
        expected: "an absolute path",
        apply: |c, v| set(&mut c.hypervisor.kernel, absolute(v)),
        get: |c| path_value(&c.hypervisor.kernel),
    },
    KeySpec {
        section: "hypervisor",
        name: "image",
        kind: Kind::Str,
        expected:
            "an absolute path, or the name of an image in $HUSK_HOME/images (`default`, `debug`)",
        apply: |c, v| set(&mut c.hypervisor.image, absolute_or_image_name(v)),
        get: |c| path_value(&c.hypervisor.image),
    },
    KeySpec {
        section: "hypervisor",
        name: "vcpus",
        kind: Kind::Int,
        expected: "an integer from 1 to 255",
        apply: |c, v| set(&mut c.hypervisor.vcpus, int_in(v, 1, 255)),
        get: |c| Value::from(i64::from(c.hypervisor.vcpus)),
    },
    KeySpec {
        section: "hypervisor",
        name: "memory_mib",
        kind: Kind::Int,
        expected: "an integer of MiB from 64 to 4294967295",
        apply: |c, v| set(&mut c.hypervisor.memory_mib, int_in(v, 64, u32::MAX.into())),
        get: |c| Value::from(i64::from(c.hypervisor.memory_mib)),
    },
    KeySpec {
        section: "hypervisor",
        name: "kernel_params",
        kind: Kind::StrArray,
        expected: "an array of kernel command-line words (non-empty, no spaces)",
        apply: |c, v| set(&mut c.hypervisor.kernel_params, kernel_words(v)),
        get: |c| string_array(&c.hypervisor.kernel_params),
    },
    // [agent]
    KeySpec {
        section: "agent",
        name: "debug_console",
        kind: Kind::Bool,
        expected: "true or false",
        apply: |c, v| set(&mut c.agent.debug_console, v.as_bool()),
        get: |c| Value::from(c.agent.debug_console),
    },
    KeySpec {
        section: "agent",
        name: "log_level",
        kind: Kind::Str,
        expected: "one of \"error\", \"warn\", \"info\", \"debug\", \"trace\"",
        apply: |c, v| {
            let level = v.as_str().filter(|s| LOG_LEVELS.contains(s));
            set(&mut c.agent.log_level, level.map(str::to_owned))
        },
        get: |c| Value::from(c.agent.log_level.as_str()),
    },
    KeySpec {
        section: "agent",
        name: "selinux",
        kind: Kind::Bool,
        expected: "true or false",
        apply: |c, v| set(&mut c.agent.selinux, v.as_bool()),
        get: |c| Value::from(c.agent.selinux),
    },
    KeySpec {
        section: "agent",
        name: "ready_timeout_secs",
        kind: Kind::Int,
        expected: "a whole number of seconds from 1 to 86400",
        apply: |c, v| set(&mut c.agent.ready_timeout_secs, int_in(v, 1, 86_400)),
        get: |c| secs_value(c.agent.ready_timeout_secs),
    },
    KeySpec {
        section: "agent",
        name: "dial_timeout_secs",
        kind: Kind::Int,
        expected: "a whole number of seconds from 1 to 86400",
        apply: |c, v| set(&mut c.agent.dial_timeout_secs, int_in(v, 1, 86_400)),
        get: |c| secs_value(c.agent.dial_timeout_secs),
    },
    // [runtime]
    KeySpec {
        section: "runtime",
        name: "state_dir",
        kind: Kind::Str,
        expected: "an absolute path",
        apply: |c, v| set(&mut c.runtime.state_dir, absolute(v)),
        get: |c| path_value(&c.runtime.state_dir),
    },
    KeySpec {
        section: "runtime",
        name: "run_root",
        kind: Kind::Str,
        expected: "an absolute path",
        apply: |c, v| set(&mut c.runtime.run_root, absolute(v)),
        get: |c| path_value(&c.runtime.run_root),
    },
    KeySpec {
        section: "runtime",
        name: "log_root",
        kind: Kind::Str,
        expected: "an absolute path",
        apply: |c, v| set(&mut c.runtime.log_root, absolute(v)),
        get: |c| path_value(&c.runtime.log_root),
    },
    KeySpec {
        section: "runtime",
        name: "shared_fs",
        kind: Kind::Str,
        expected: "\"virtio-fs\" (the only shared file system so far)",
        apply: |c, v| {
            set(
                &mut c.runtime.shared_fs,
                v.as_str().and_then(SharedFs::parse),
            )
        },
        get: |c| Value::from(c.runtime.shared_fs.name()),
    },
    // [tracing]
    KeySpec {
        section: "tracing",
        name: "enabled",
        kind: Kind::Bool,
        expected: "true or false",
        apply: |c, v| set(&mut c.tracing.enabled, v.as_bool()),
        get: |c| Value::from(c.tracing.enabled),
    },
    KeySpec {
        section: "tracing",
        name: "otlp_endpoint",
        kind: Kind::Str,
        expected: "an http:// URL (\"\" for none)",
        apply: |c, v| {
            let url = v
                .as_str()
                .filter(|s| s.is_empty() || s.starts_with("http://"));
            set(&mut c.tracing.otlp_endpoint, url.map(str::to_owned))
        },
        get: |c| Value::from(c.tracing.otlp_endpoint.as_str()),
    },
    KeySpec {
        section: "tracing",
        name: "otlp_protocol",
        kind: Kind::Str,
        expected: "\"http/protobuf\" or \"grpc\"",
        apply: |c, v| {
            set(
                &mut c.tracing.otlp_protocol,
                v.as_str().and_then(OtlpProtocol::parse),
            )
        },
        get: |c| Value::from(c.tracing.otlp_protocol.name()),
    },
    KeySpec {
        section: "tracing",
        name: "store",
        kind: Kind::Bool,
        expected: "true or false",
        apply: |c, v| set(&mut c.tracing.store, v.as_bool()),
        get: |c| Value::from(c.tracing.store),
    },
];

/// The index in [`KEYS`] of `section.name`.
pub(crate) fn index(section: &str, name: &str) -> Option<usize> {
    KEYS.iter()
        .position(|k| k.section == section && k.name == name)
}

fn set<T>(slot: &mut T, value: Option<T>) -> bool {
    match value {
        Some(v) => {
            *slot = v;
            true
        }
        None => false,
    }
}

fn absolute(v: &Value) -> Option<PathBuf> {
    v.as_str()
        .map(Path::new)
        .filter(|p| p.is_absolute())
        .map(Path::to_path_buf)
}

/// An absolute path, or an image name kept relative for [`crate::load`] to place under the
/// artifact root.
fn absolute_or_image_name(v: &Value) -> Option<PathBuf> {
    absolute(v).or_else(|| {
        v.as_str()
            .filter(|s| crate::annotations::valid_image_name(s))
            .map(PathBuf::from)
    })
}

fn int_in<T: TryFrom<i64>>(v: &Value, lo: i64, hi: i64) -> Option<T> {
    v.as_integer()
        .filter(|n| (lo..=hi).contains(n))
        .and_then(|n| T::try_from(n).ok())
}

fn kernel_words(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|w| {
            w.as_str()
                .filter(|s| !s.is_empty() && !s.chars().any(char::is_whitespace))
                .map(str::to_owned)
        })
        .collect()
}

fn path_value(p: &Path) -> Value {
    Value::from(p.to_string_lossy().into_owned())
}

fn secs_value(secs: u64) -> Value {
    Value::from(i64::try_from(secs).unwrap_or(i64::MAX))
}

fn string_array(words: &[String]) -> Value {
    Value::Array(words.iter().map(|w| Value::from(w.as_str())).collect())
}

/// `a string ("2")`: the type and value found, for wrong-type messages.
fn describe(v: &Value) -> String {
    let kind = match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    };
    let mut shown = v.to_string();
    if shown.chars().count() > 40 {
        shown = shown.chars().take(37).collect::<String>() + "...";
    }
    format!("{kind} ({shown})")
}

fn kind_matches(kind: Kind, v: &Value) -> Result<(), String> {
    let ok = match kind {
        Kind::Bool => v.is_bool(),
        Kind::Int => v.is_integer(),
        Kind::Str => v.is_str(),
        Kind::StrArray => {
            let Some(items) = v.as_array() else {
                return Err(describe(v));
            };
            if let Some((i, bad)) = items.iter().enumerate().find(|(_, w)| !w.is_str()) {
                return Err(format!("an array whose item {i} is {}", describe(bad)));
            }
            true
        }
    };
    if ok {
        Ok(())
    } else {
        Err(describe(v))
    }
}

/// Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

/// ` (did you mean `x`?)` for the closest candidate within two edits, or empty.
fn did_you_mean<'a>(wrong: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    candidates
        .map(|c| (distance(wrong, c), c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

fn known_sections() -> String {
    SECTIONS.map(|s| format!("[{s}]")).join(", ")
}

/// Checks one file on its own: only known sections and keys, each of the right type. Returns
/// the keys it sets, as indices in [`KEYS`], with their values.
pub(crate) fn check_file(path: &Path, text: &str) -> Result<Vec<(usize, Value)>, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
    let mut out = Vec::new();
    for (section, body) in table {
        if !SECTIONS.contains(&section.as_str()) {
            if body.is_table() {
                return Err(ConfigError::UnknownSection {
                    path: path.to_owned(),
                    hint: did_you_mean(&section, SECTIONS.iter().copied()),
                    section,
                    known: known_sections(),
                });
            }
            let keys: Vec<String> = KEYS.iter().map(KeySpec::key).collect();
            let hint = match KEYS.iter().find(|k| k.name == section) {
                Some(k) => format!(" (did you mean `{}` under [{}]?)", k.name, k.section),
                None => did_you_mean(&section, keys.iter().map(String::as_str)),
            };
            return Err(ConfigError::TopLevelKey {
                path: path.to_owned(),
                key: section,
                hint,
                known: known_sections(),
            });
        }
        let Value::Table(body) = body else {
            return Err(ConfigError::WrongType {
                path: path.to_owned(),
                expected: "a table (a [section] header)",
                found: describe(&body),
                key: section,
            });
        };
        for (name, value) in body {
            let Some(i) = index(&section, &name) else {
                let names = KEYS.iter().filter(|k| k.section == section).map(|k| k.name);
                return Err(ConfigError::UnknownKey {
                    path: path.to_owned(),
                    key: format!("{section}.{name}"),
                    hint: did_you_mean(&name, names.clone()),
                    known: names.collect::<Vec<_>>().join(", "),
                    section,
                });
            };
            let spec = &KEYS[i];
            if let Err(found) = kind_matches(spec.kind, &value) {
                return Err(ConfigError::WrongType {
                    path: path.to_owned(),
                    key: spec.key(),
                    expected: spec.expected,
                    found,
                });
            }
            out.push((i, value));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("memroy_mib", "memory_mib"), 2);
        assert_eq!(distance("vcpu", "vcpus"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(
            did_you_mean("hypervisr", SECTIONS.iter().copied()),
            " (did you mean `hypervisor`?)"
        );
        assert_eq!(did_you_mean("zzz", SECTIONS.iter().copied()), "");
    }

    #[test]
    fn keys_are_unique_and_in_known_sections() {
        for (i, k) in KEYS.iter().enumerate() {
            assert!(SECTIONS.contains(&k.section), "{}", k.key());
            assert_eq!(index(k.section, k.name), Some(i), "{} twice", k.key());
        }
    }

    #[test]
    fn every_default_passes_its_own_check() {
        // What `get` shows must be accepted back by `apply` (so `husk env` output is valid).
        let mut c = Config::builtin(Path::new("/var/lib/husk"));
        for k in KEYS {
            let v = (k.get)(&c);
            assert!(kind_matches(k.kind, &v).is_ok(), "{}", k.key());
            assert!((k.apply)(&mut c, &v), "{}", k.key());
        }
    }

    #[test]
    fn wrong_array_item_named() {
        let v: Value = Value::Array(vec![Value::from("quiet"), Value::from(3)]);
        assert_eq!(
            kind_matches(Kind::StrArray, &v).unwrap_err(),
            "an array whose item 1 is an integer (3)"
        );
    }
}
