//! Capabilities: the spec's five sets (bounding, effective, permitted, inheritable, ambient)
//! as bit masks, and their names.
//!
//! Owns the name ↔ number table (linux/capability.h) and the conversion from the spec. Must
//! never apply anything: the jail applies the sets through its syscall trait, in the order
//! that keeps the ones asked for across the change of user.

use oci_spec::runtime::LinuxCapabilities;
use serde::{Deserialize, Serialize};

pub use husk_protocols::capabilities::{number, NAMES};

/// The names of the capabilities in a mask.
pub fn names(mask: u64) -> Vec<&'static str> {
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// The five sets, one bit per capability number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

impl CapSets {
    /// Whether the bounding set has `name`.
    pub fn bounds(&self, name: &str) -> bool {
        number(name).is_some_and(|n| self.bounding & (1 << n) != 0)
    }
}

fn mask(set: Option<&oci_spec::runtime::Capabilities>) -> Result<u64, String> {
    let mut m = 0u64;
    for cap in set.into_iter().flatten() {
        // oci-spec spells each capability as its JSON name, e.g. "CAP_NET_RAW".
        let name = serde_json::to_value(cap)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let n = number(&name).ok_or_else(|| format!("unknown capability {name:?}"))?;
        m |= 1 << n;
    }
    Ok(m)
}

/// The sets a spec asks for (none when it has no `capabilities`, as runc). The ambient set
/// must lie within permitted and inheritable, as the kernel requires.
pub fn from_spec(caps: Option<&LinuxCapabilities>) -> Result<CapSets, String> {
    let Some(c) = caps else {
        return Ok(CapSets::default());
    };
    let sets = CapSets {
        bounding: mask(c.bounding().as_ref())?,
        effective: mask(c.effective().as_ref())?,
        permitted: mask(c.permitted().as_ref())?,
        inheritable: mask(c.inheritable().as_ref())?,
        ambient: mask(c.ambient().as_ref())?,
    };
    let outside = sets.ambient & !(sets.permitted & sets.inheritable);
    if outside != 0 {
        return Err(format!(
            "ambient capabilities {:?} are not in both the permitted and inheritable sets",
            names(outside)
        ));
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(number("CAP_NET_RAW"), Some(13));
        assert_eq!(number("net_raw"), Some(13));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_BOGUS"), None);
        assert_eq!(names((1 << 13) | 1), ["CAP_CHOWN", "CAP_NET_RAW"]);
    }

    #[test]
    fn sets_come_from_the_spec() {
        let c: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_KILL","CAP_NET_RAW"],"effective":["CAP_KILL"],
                "permitted":["CAP_KILL"],"inheritable":["CAP_KILL"],"ambient":["CAP_KILL"]}"#,
        )
        .unwrap();
        let s = from_spec(Some(&c)).unwrap();
        assert_eq!(s.bounding, (1 << 5) | (1 << 13));
        assert!(s.bounds("CAP_NET_RAW") && !s.bounds("CAP_SYS_ADMIN"));
        assert_eq!(s.ambient, 1 << 5);
        assert_eq!(from_spec(None).unwrap(), CapSets::default());
    }

    #[test]
    fn ambient_outside_permitted_is_refused() {
        let c: LinuxCapabilities =
            serde_json::from_str(r#"{"ambient":["CAP_KILL"],"permitted":["CAP_KILL"]}"#).unwrap();
        let e = from_spec(Some(&c)).unwrap_err();
        assert!(e.contains("CAP_KILL"), "{e}");
    }
}
