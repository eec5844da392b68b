//! Pod annotations that change one sandbox's configuration (as Kata's
//! `io.katacontainers.config.*`): which guest image it boots and whether its console runs.
//!
//! Owns the annotation names, their accepted values and how they apply. Must never let an
//! annotation name a host path: a pod picks an image by name, under the artifact root, so a pod
//! spec cannot boot an arbitrary host file.

use std::collections::HashMap;

use crate::{load, Config, ConfigError, Source};

/// The guest image, by name (`io.husk.image=debug` boots `$HUSK_HOME/images/debug.cpio`).
pub const IMAGE_ANNOTATION: &str = "io.husk.image";
/// The guest console (`io.husk.debug_console=true`), as `agent.debug_console`.
pub const DEBUG_CONSOLE_ANNOTATION: &str = "io.husk.debug_console";

/// Whether `name` can name an image: 1-64 of `[A-Za-z0-9_-]` (a file stem, never a path).
pub fn valid_image_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Config {
    /// This configuration with a pod's annotations applied; annotations husk does not read
    /// are ignored. The sources of changed keys name the annotation.
    pub fn with_annotations(
        &self,
        annotations: &HashMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut c = self.clone();
        let mut image_set = false;
        if let Some(name) = annotations.get(IMAGE_ANNOTATION) {
            if !valid_image_name(name) {
                return Err(ConfigError::Annotation {
                    key: IMAGE_ANNOTATION,
                    value: name.clone(),
                    expected: "the name of a guest image in $HUSK_HOME/images (`default`, `debug`; `husk image list` shows them), never a path",
                });
            }
            c.hypervisor.image = load::image_named(&c.home, name);
            c.sources.insert(
                "hypervisor.image".into(),
                Source::Annotation(IMAGE_ANNOTATION),
            );
            image_set = true;
        }
        if let Some(v) = annotations.get(DEBUG_CONSOLE_ANNOTATION) {
            let on = match v.as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(ConfigError::Annotation {
                        key: DEBUG_CONSOLE_ANNOTATION,
                        value: v.clone(),
                        expected: "true or false",
                    })
                }
            };
            c.agent.debug_console = on;
            c.sources.insert(
                "agent.debug_console".into(),
                Source::Annotation(DEBUG_CONSOLE_ANNOTATION),
            );
            // As in a file: the console's image unless one was chosen.
            let image_chosen =
                image_set || matches!(c.sources.get("hypervisor.image"), Some(Source::File(_)));
            if on && !image_chosen {
                c.hypervisor.image = load::image_in(&c.home, true);
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_never_paths() {
        assert!(valid_image_name("debug"));
        assert!(valid_image_name("my-image_2"));
        for bad in ["", "../x", "/etc/passwd", "a.cpio", "a b", &"x".repeat(65)] {
            assert!(!valid_image_name(bad), "{bad:?}");
        }
    }
}
