//! Tests of loading, merging and checking, each in a temporary directory of its own.
//!
//! Owns nothing the crate uses. Must never read `/etc/husk` or mutate the process environment
//! (tests run in parallel): the environment is a map handed to the loader.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::load::load;
use crate::{Backend, Config, ConfigError, Origin, SharedFs, Source};

/// A directory holding `config.toml` and `config.d/`.
struct Dir(TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().expect("temp dir"))
    }

    fn base(&self) -> PathBuf {
        self.0.path().join("config.toml")
    }

    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
        path
    }

    /// Loads with the default origin (base may be absent) and no environment.
    fn load(&self) -> Result<Config, ConfigError> {
        self.load_env(&[])
    }

    fn load_env(&self, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env_of(vars);
        load(&self.base(), Origin::Default, &env)
    }
}

fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
    let map: HashMap<String, OsString> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
        .collect();
    move |k: &str| map.get(k).cloned()
}

fn file(p: &Path) -> Source {
    Source::File(p.to_owned())
}

#[test]
fn defaults_with_no_file() {
    let d = Dir::new();
    let c = d.load().unwrap();
    assert_eq!(c.hypervisor.backend, Backend::Auto);
    assert_eq!(
        c.hypervisor.kernel,
        Path::new("/var/lib/husk/kernel/vmlinux")
    );
    assert_eq!(
        c.hypervisor.image,
        Path::new("/var/lib/husk/images/default.cpio")
    );
    assert_eq!(c.hypervisor.vcpus, 1);
    assert_eq!(c.hypervisor.memory_mib, 256);
    assert!(c.hypervisor.kernel_params.is_empty());
    assert!(!c.agent.debug_console);
    assert!(!c.tracing.enabled);
    assert!(c.tracing.store);
    assert_eq!(c.tracing.otlp_protocol, crate::OtlpProtocol::HttpProtobuf);
    assert_eq!(c.agent.log_level, "info");
    assert!(c.agent.selinux);
    assert_eq!(c.agent.ready_timeout_secs, 60);
    assert_eq!(c.agent.dial_timeout_secs, 60);
    assert_eq!(c.runtime.state_dir, Path::new("/run/husk/sandboxes"));
    assert_eq!(c.runtime.run_root, Path::new("/run/husk/vms"));
    assert_eq!(c.runtime.log_root, Path::new("/var/log/husk/vms"));
    assert_eq!(c.runtime.shared_fs, SharedFs::VirtioFs);
    assert!(c.files.is_empty());
    assert_eq!(c.base, d.base());
    assert_eq!(c.sources.len(), Config::keys().len());
    assert!(c.sources.values().all(|s| *s == Source::Default));
}

#[test]
fn defaults_follow_the_environment() {
    let d = Dir::new();
    let c = d
        .load_env(&[
            ("HUSK_HOME", "/opt/husk"),
            ("HUSK_STATE_DIR", "/tmp/state"),
            ("HUSK_RUN_ROOT", ""), // empty means unset
        ])
        .unwrap();
    assert_eq!(c.hypervisor.kernel, Path::new("/opt/husk/kernel/vmlinux"));
    assert_eq!(
        c.hypervisor.image,
        Path::new("/opt/husk/images/default.cpio")
    );
    assert_eq!(c.runtime.state_dir, Path::new("/tmp/state"));
    assert_eq!(c.runtime.run_root, Path::new("/run/husk/vms"));
    assert_eq!(
        c.source("hypervisor.kernel"),
        Some(&Source::Env("HUSK_HOME"))
    );
    assert_eq!(
        c.source("runtime.state_dir"),
        Some(&Source::Env("HUSK_STATE_DIR"))
    );
    assert_eq!(c.source("runtime.run_root"), Some(&Source::Default));

    // A file wins over an environment-moved default.
    let base = d.write("config.toml", "[runtime]\nstate_dir = \"/srv/state\"\n");
    let c = d.load_env(&[("HUSK_STATE_DIR", "/tmp/state")]).unwrap();
    assert_eq!(c.runtime.state_dir, Path::new("/srv/state"));
    assert_eq!(c.source("runtime.state_dir"), Some(&file(&base)));
}

#[test]
fn drop_ins_override_in_lexical_order() {
    let d = Dir::new();
    let base = d.write(
        "config.toml",
        "[hypervisor]\nvcpus = 2\nmemory_mib = 512\nbackend = \"qemu\"\n",
    );
    let b = d.write("config.d/20-b.toml", "[hypervisor]\nmemory_mib = 1024\n");
    let a = d.write(
        "config.d/10-a.toml",
        "[hypervisor]\nmemory_mib = 768\nkernel_params = [\"quiet\", \"loglevel=3\"]\n\
         [tracing]\nenabled = true\n",
    );
    d.write("config.d/30-c.conf", "not toml at all [");
    d.write("config.d/.40-hidden.toml", "bogus = 1");
    std::fs::create_dir_all(d.0.path().join("config.d/50-dir.toml")).unwrap();

    let c = d.load().unwrap();
    assert_eq!(c.files, vec![base.clone(), a.clone(), b.clone()]);
    assert_eq!(c.hypervisor.vcpus, 2);
    assert_eq!(c.hypervisor.memory_mib, 1024);
    assert_eq!(c.hypervisor.backend, Backend::Qemu);
    assert_eq!(c.hypervisor.kernel_params, ["quiet", "loglevel=3"]);
    assert!(c.tracing.enabled);
    assert_eq!(c.source("hypervisor.vcpus"), Some(&file(&base)));
    assert_eq!(c.source("hypervisor.memory_mib"), Some(&file(&b)));
    assert_eq!(c.source("hypervisor.kernel_params"), Some(&file(&a)));
    assert_eq!(c.source("tracing.enabled"), Some(&file(&a)));
    assert_eq!(c.source("agent.debug_console"), Some(&Source::Default));
}

#[test]
fn drop_ins_apply_without_a_base_file() {
    let d = Dir::new();
    let p = d.write("config.d/mem.toml", "[hypervisor]\nmemory_mib = 128\n");
    let c = d.load().unwrap();
    assert_eq!(c.hypervisor.memory_mib, 128);
    assert_eq!(c.files, vec![p]);
}

#[test]
fn unknown_key_in_a_drop_in_names_key_and_file() {
    let d = Dir::new();
    d.write("config.toml", "[hypervisor]\nvcpus = 2\n");
    let p = d.write("config.d/10-mem.toml", "[hypervisor]\nmemroy_mib = 512\n");
    let err = d.load().unwrap_err();
    assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err:?}");
    let msg = err.to_string();
    assert_eq!(
        msg,
        format!(
            "unknown key `hypervisor.memroy_mib` in {} (did you mean `memory_mib`?); known keys \
             in [hypervisor]: backend, kernel, image, vcpus, memory_mib, kernel_params",
            p.display()
        )
    );
}

#[test]
fn unknown_sections_and_top_level_keys_named() {
    let d = Dir::new();
    let p = d.write("config.toml", "[hypervisr]\nvcpus = 2\n");
    let msg = d.load().unwrap_err().to_string();
    assert!(msg.contains("unknown section `[hypervisr]`"), "{msg}");
    assert!(msg.contains(&p.display().to_string()), "{msg}");
    assert!(msg.contains("did you mean `hypervisor`"), "{msg}");

    d.write("config.toml", "vcpus = 2\n");
    let msg = d.load().unwrap_err().to_string();
    assert!(msg.contains("unknown key `vcpus`"), "{msg}");
    assert!(msg.contains("under [hypervisor]"), "{msg}");

    d.write("config.toml", "agent = 3\n");
    let msg = d.load().unwrap_err().to_string();
    assert!(
        msg.contains("`agent`") && msg.contains("must be a table"),
        "{msg}"
    );

    d.write("config.toml", "[agent.extra]\nx = 1\n");
    let msg = d.load().unwrap_err().to_string();
    assert!(msg.contains("unknown key `agent.extra`"), "{msg}");
}

#[test]
fn wrong_type_named() {
    let d = Dir::new();
    let p = d.write("config.toml", "[hypervisor]\nvcpus = \"2\"\n");
    let err = d.load().unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "`hypervisor.vcpus` in {} must be an integer from 1 to 255, not a string (\"2\")",
            p.display()
        )
    );

    d.write("config.toml", "[agent]\ndebug_console = \"yes\"\n");
    let msg = d.load().unwrap_err().to_string();
    assert!(msg.contains("`agent.debug_console`") && msg.contains("true or false"));

    d.write(
        "config.toml",
        "[hypervisor]\nkernel_params = [\"quiet\", 3]\n",
    );
    let msg = d.load().unwrap_err().to_string();
    assert!(msg.contains("item 1 is an integer (3)"), "{msg}");

    d.write("config.toml", "[hypervisor]\nmemory_mib = 512.0\n");
    let msg = d.load().unwrap_err().to_string();
    assert!(msg.contains("not a float (512.0)"), "{msg}");
}

#[test]
fn invalid_values_named() {
    let cases = [
        (
            "[hypervisor]\nvcpus = 0\n",
            "hypervisor.vcpus",
            "from 1 to 255",
        ),
        (
            "[hypervisor]\nvcpus = 256\n",
            "hypervisor.vcpus",
            "from 1 to 255",
        ),
        (
            "[hypervisor]\nmemory_mib = 32\n",
            "hypervisor.memory_mib",
            "from 64",
        ),
        (
            "[hypervisor]\nmemory_mib = -1\n",
            "hypervisor.memory_mib",
            "from 64",
        ),
        (
            "[hypervisor]\nbackend = \"kvm\"\n",
            "hypervisor.backend",
            "\"builtin\"",
        ),
        (
            "[hypervisor]\nkernel = \"vmlinux\"\n",
            "hypervisor.kernel",
            "absolute path",
        ),
        (
            "[hypervisor]\nkernel_params = [\"a b\"]\n",
            "hypervisor.kernel_params",
            "no spaces",
        ),
        (
            "[hypervisor]\nkernel_params = [\"\"]\n",
            "hypervisor.kernel_params",
            "non-empty",
        ),
        (
            "[agent]\nlog_level = \"loud\"\n",
            "agent.log_level",
            "\"debug\"",
        ),
        (
            "[agent]\nready_timeout_secs = 0\n",
            "agent.ready_timeout_secs",
            "from 1",
        ),
        (
            "[agent]\ndial_timeout_secs = -5\n",
            "agent.dial_timeout_secs",
            "from 1",
        ),
        (
            "[runtime]\nstate_dir = \"\"\n",
            "runtime.state_dir",
            "absolute path",
        ),
        (
            "[runtime]\nshared_fs = \"9p\"\n",
            "runtime.shared_fs",
            "\"virtio-fs\"",
        ),
    ];
    for (text, key, expected) in cases {
        let d = Dir::new();
        let p = d.write("config.d/10.toml", text);
        let err = d.load().unwrap_err();
        let ConfigError::InvalidValue { key: k, set_by, .. } = &err else {
            panic!("{text}: {err:?}");
        };
        assert_eq!(k, key);
        assert_eq!(*set_by, file(&p));
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("`{key}` in {}", p.display())),
            "{msg}"
        );
        assert!(msg.contains(expected), "{text}: {msg}");
    }
    let d = Dir::new();
    d.write("config.toml", "[runtime]\nshared_fs = \"9p\"\n");
    let msg = d.load().unwrap_err().to_string();
    assert!(
        msg.starts_with("invalid value \"9p\" for `runtime.shared_fs`"),
        "{msg}"
    );
}

#[test]
fn invalid_environment_value_names_the_variable() {
    let d = Dir::new();
    let msg = d
        .load_env(&[("HUSK_STATE_DIR", "relative/state")])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("`runtime.state_dir` in env HUSK_STATE_DIR"),
        "{msg}"
    );
}

#[test]
fn values_are_checked_after_merging() {
    // A later drop-in may correct an earlier one: only the effective value is checked.
    let d = Dir::new();
    d.write("config.toml", "[hypervisor]\nvcpus = 0\n");
    let p = d.write("config.d/fix.toml", "[hypervisor]\nvcpus = 4\n");
    let c = d.load().unwrap();
    assert_eq!(c.hypervisor.vcpus, 4);
    assert_eq!(c.source("hypervisor.vcpus"), Some(&file(&p)));
}

#[test]
fn syntax_errors_name_the_file() {
    let d = Dir::new();
    let p = d.write("config.d/bad.toml", "[hypervisor\nvcpus = 2\n");
    let err = d.load().unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
    assert!(err
        .to_string()
        .starts_with(&format!("{} is not valid TOML", p.display())));

    let d = Dir::new();
    d.write(
        "config.toml",
        "[tracing]\nenabled = true\nenabled = false\n",
    );
    assert!(matches!(d.load(), Err(ConfigError::Syntax { .. })));
}

#[test]
fn explicit_missing_file_is_an_error() {
    let d = Dir::new();
    let missing = d.0.path().join("nope.toml");
    let err = Config::load_with(Some(&missing), &env_of(&[])).unwrap_err();
    assert!(matches!(
        err,
        ConfigError::Missing {
            origin: Origin::Explicit,
            ..
        }
    ));
    let msg = err.to_string();
    assert!(msg.contains(&missing.display().to_string()) && msg.contains("--config"));

    let err = Config::load_from(&missing, true).unwrap_err();
    assert!(matches!(err, ConfigError::Missing { .. }));
}

#[test]
fn env_names_the_base_file_and_the_flag_wins() {
    let d = Dir::new();
    let from_env = d.write("env/husk.toml", "[hypervisor]\nvcpus = 3\n");
    let drop_in = d.write("env/config.d/a.toml", "[hypervisor]\nmemory_mib = 100\n");
    let env = env_of(&[("HUSK_CONFIG", from_env.to_str().unwrap())]);
    let c = Config::load_with(None, &env).unwrap();
    assert_eq!(c.hypervisor.vcpus, 3);
    assert_eq!(c.hypervisor.memory_mib, 100);
    assert_eq!(c.base, from_env);
    assert_eq!(c.files, vec![from_env.clone(), drop_in]);

    let explicit = d.write("flag/husk.toml", "[hypervisor]\nvcpus = 5\n");
    let c = Config::load_with(Some(&explicit), &env).unwrap();
    assert_eq!(c.hypervisor.vcpus, 5);
    assert_eq!(c.hypervisor.memory_mib, 256);
    assert_eq!(c.files, vec![explicit]);

    let missing = d.0.path().join("gone.toml");
    let env = env_of(&[("HUSK_CONFIG", missing.to_str().unwrap())]);
    let err = Config::load_with(None, &env).unwrap_err();
    assert!(matches!(
        err,
        ConfigError::Missing {
            origin: Origin::Env,
            ..
        }
    ));
    assert!(err.to_string().contains("HUSK_CONFIG"));
}

#[test]
fn relative_explicit_path_uses_config_d_beside_it() {
    assert_eq!(
        crate::load::drop_in_dir(Path::new("husk.toml")),
        Path::new("./config.d")
    );
    assert_eq!(
        crate::load::drop_in_dir(Path::new("/etc/husk/config.toml")),
        Path::new("/etc/husk/config.d")
    );
}

#[test]
fn drop_in_directory_that_is_a_file_is_an_error() {
    let d = Dir::new();
    d.write("config.d", "");
    assert!(matches!(d.load(), Err(ConfigError::ReadDropIns { .. })));
}

#[test]
fn debug_console_picks_the_debug_image_unless_one_is_set() {
    let d = Dir::new();
    d.write("config.toml", "[agent]\ndebug_console = true\n");
    let c = d.load_env(&[("HUSK_HOME", "/h")]).unwrap();
    assert_eq!(c.hypervisor.image, Path::new("/h/images/debug.cpio"));

    d.write(
        "config.d/img.toml",
        "[hypervisor]\nimage = \"/x/mine.cpio\"\n",
    );
    let c = d.load().unwrap();
    assert_eq!(c.hypervisor.image, Path::new("/x/mine.cpio"));
}

#[test]
fn the_console_is_on_the_command_line_and_images_go_by_name() {
    let d = Dir::new();
    d.write("config.toml", "[hypervisor]\nimage = \"debug\"\n");
    let c = d.load_env(&[("HUSK_HOME", "/h")]).unwrap();
    assert_eq!(c.hypervisor.image, Path::new("/h/images/debug.cpio"));
    assert!(!c
        .kernel_params()
        .iter()
        .any(|w| w.starts_with("husk.console")));
    d.write("config.toml", "[agent]\ndebug_console = true\n");
    let c = d.load().unwrap();
    assert!(c.kernel_params().contains(&"husk.console=1".to_owned()));
    d.write("config.toml", "[hypervisor]\nimage = \"../x\"\n");
    let msg = d.load().unwrap_err().to_string();
    assert!(msg.contains("the name of an image"), "{msg}");
}

#[test]
fn pod_annotations_pick_the_image_and_the_console() {
    let d = Dir::new();
    let c = d.load_env(&[("HUSK_HOME", "/h")]).unwrap();
    let ann = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let pod = c
        .with_annotations(&ann(&[(crate::IMAGE_ANNOTATION, "debug"), ("other", "x")]))
        .unwrap();
    assert_eq!(pod.hypervisor.image, Path::new("/h/images/debug.cpio"));
    assert_eq!(
        pod.source("hypervisor.image").map(ToString::to_string),
        Some("annotation io.husk.image".into())
    );
    let pod = c
        .with_annotations(&ann(&[(crate::DEBUG_CONSOLE_ANNOTATION, "true")]))
        .unwrap();
    assert!(pod.agent.debug_console);
    assert_eq!(pod.hypervisor.image, Path::new("/h/images/debug.cpio"));
    let pod = c
        .with_annotations(&ann(&[
            (crate::DEBUG_CONSOLE_ANNOTATION, "true"),
            (crate::IMAGE_ANNOTATION, "default"),
        ]))
        .unwrap();
    assert_eq!(pod.hypervisor.image, Path::new("/h/images/default.cpio"));
    assert!(pod.kernel_params().contains(&"husk.console=1".to_owned()));
    for (k, v) in [
        (crate::IMAGE_ANNOTATION, "/etc/shadow"),
        (crate::DEBUG_CONSOLE_ANNOTATION, "yes"),
    ] {
        let e = c.with_annotations(&ann(&[(k, v)])).unwrap_err().to_string();
        assert!(e.contains(k) && e.contains("expected"), "{e}");
    }
}

#[test]
fn entries_read_back_as_the_same_configuration() {
    let d = Dir::new();
    d.write(
        "config.toml",
        "[hypervisor]\nbackend = \"builtin\"\nkernel_params = [\"quiet\"]\nvcpus = 7\n\
         [agent]\ndebug_console = true\nlog_level = \"debug\"\n",
    );
    let c = d.load().unwrap();
    let entries = c.entries();
    assert_eq!(
        entries.iter().map(|e| e.key()).collect::<Vec<_>>(),
        Config::keys()
    );
    // Written out as TOML (as `husk env` shows it) and read back: the same values.
    let mut text = String::new();
    for section in Config::sections() {
        text += &format!("[{section}]\n");
        for e in entries.iter().filter(|e| e.section == *section) {
            text += &format!("{} = {}\n", e.name, e.value);
        }
    }
    let again = Dir::new();
    again.write("config.toml", &text);
    let c2 = again.load().unwrap();
    assert_eq!(c2.hypervisor, c.hypervisor);
    assert_eq!(c2.agent, c.agent);
    assert_eq!(c2.runtime, c.runtime);
}

#[test]
fn selinux_off_reaches_the_kernel_command_line() {
    let d = Dir::new();
    assert_eq!(d.load().unwrap().kernel_params(), ["husk.log=info"]);
    d.write(
        "config.toml",
        "[hypervisor]\nkernel_params = [\"quiet\"]\n[agent]\nselinux = false\n",
    );
    let c = d.load().unwrap();
    assert!(!c.agent.selinux);
    assert_eq!(
        c.kernel_params(),
        ["husk.log=info", "husk.selinux=0", "quiet"]
    );
    assert_eq!(
        husk_protocols::cmdline::selinux_mode(&c.kernel_params().join(" ")),
        Ok(husk_protocols::cmdline::SelinuxMode::Off)
    );
}

#[test]
fn every_key_is_documented() {
    let doc = include_str!("../../../docs/config.md");
    for section in Config::sections() {
        let heading = format!("### `[{section}]`");
        let start = doc
            .find(&heading)
            .unwrap_or_else(|| panic!("docs/config.md has no {heading}"));
        let rest = &doc[start + heading.len()..];
        let body = &rest[..rest.find("\n### ").unwrap_or(rest.len())];
        for key in Config::keys() {
            if let Some(name) = key.strip_prefix(&format!("{section}.")) {
                assert!(
                    body.contains(&format!("| `{name}` |")),
                    "docs/config.md does not describe `{key}`"
                );
            }
        }
    }
}

#[test]
fn backend_converts_to_the_hypervisor_choice() {
    use husk_hypervisor::BackendChoice;
    for b in [Backend::Auto, Backend::Qemu, Backend::Builtin] {
        let choice: BackendChoice = b.into();
        assert_eq!(b.name().parse::<BackendChoice>().unwrap(), choice);
    }
}

#[test]
fn tracing_keys_are_read_and_checked_and_the_vm_adds_the_tracer_itself() {
    let d = Dir::new();
    d.write(
        "config.toml",
        "[tracing]\nenabled = true\notlp_endpoint = \"http://127.0.0.1:4317\"\notlp_protocol = \"grpc\"\nstore = false\n",
    );
    let c = d.load().unwrap();
    // The VM adds `husk.tracing=1` itself when its host listens for spans.
    assert!(!c.kernel_params().iter().any(|w| w.contains("tracing")));
    assert_eq!(c.tracing.otlp_protocol, crate::OtlpProtocol::Grpc);
    assert_eq!(c.tracing.otlp_endpoint, "http://127.0.0.1:4317");
    assert!(!c.tracing.store);

    let d = Dir::new();
    d.write(
        "config.toml",
        "[tracing]\notlp_endpoint = \"udp://jaeger:6831\"\n",
    );
    let err = d.load().unwrap_err().to_string();
    assert!(
        err.contains("tracing.otlp_endpoint") && err.contains("http://"),
        "{err}"
    );

    let d = Dir::new();
    d.write("config.toml", "[tracing]\notlp_protocol = \"thrift\"\n");
    assert!(d.load().unwrap_err().to_string().contains("grpc"));
    assert!(!Dir::new()
        .load()
        .unwrap()
        .kernel_params()
        .iter()
        .any(|w| w.contains("tracing")));
}
