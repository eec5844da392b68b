//! Reading and writing cgroup2 interface files directly, for what cgroups-rs does not cover
//! or covers unsafely: bounded reads and defensive parsing of the single-value, flat-keyed and
//! nested-keyed files the statistics and the waits use, and plain writes.
//!
//! Owns the parsers and the bounds. Must never read more than the bound it is given, trust a
//! word of a file without parsing it, nor create a file: writes go to existing files only.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use super::CgroupError;

/// Writes `value` to an existing interface file in one write.
pub(super) fn write_file(file: &Path, value: &str) -> Result<(), CgroupError> {
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(file)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|source| CgroupError::Write {
            file: file.to_owned(),
            value: value.to_owned(),
            source,
        })
}

/// Reads at most `limit` bytes of UTF-8 from `file`; `None` when it does not exist.
pub(super) fn read_bounded(file: &Path, limit: u64) -> Result<Option<String>, CgroupError> {
    let read_err = |source| CgroupError::Read {
        file: file.to_owned(),
        source,
    };
    let f = match File::open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut bytes = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limit {
        return Err(CgroupError::Parse {
            file: file.to_owned(),
            detail: format!("larger than {limit} bytes"),
        });
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| CgroupError::Parse {
            file: file.to_owned(),
            detail: "not UTF-8".to_owned(),
        })
}

pub(super) fn parse_u64(file: &Path, word: &str) -> Result<u64, CgroupError> {
    word.parse().map_err(|_| CgroupError::Parse {
        file: file.to_owned(),
        detail: format!("{word:?} is not a number"),
    })
}

/// A limit: `None` for "max".
pub(super) fn parse_max(file: &Path, word: &str) -> Result<Option<u64>, CgroupError> {
    if word == "max" {
        Ok(None)
    } else {
        parse_u64(file, word).map(Some)
    }
}

/// The value of `key` in a flat-keyed file ("key value" lines); `None` when absent.
pub(super) fn keyed_value(file: &Path, text: &str, key: &str) -> Result<Option<u64>, CgroupError> {
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some(key) {
            continue;
        }
        return match (words.next(), words.next()) {
            (Some(value), None) => parse_u64(file, value).map(Some),
            _ => Err(CgroupError::Parse {
                file: file.to_owned(),
                detail: format!("malformed line {line:?}"),
            }),
        };
    }
    Ok(None)
}

/// The sums over all devices of `keys` in a nested-keyed file such as `io.stat`
/// ("MAJ:MIN key=value ..." lines); a key no line has sums to 0, other keys are ignored.
pub(super) fn nested_sums<const N: usize>(
    file: &Path,
    text: &str,
    keys: [&str; N],
) -> Result<[u64; N], CgroupError> {
    let malformed = |line: &str| CgroupError::Parse {
        file: file.to_owned(),
        detail: format!("malformed line {line:?}"),
    };
    let mut sums = [0_u64; N];
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(device) = words.next() else {
            continue;
        };
        let is_device = device.split_once(':').is_some_and(|(major, minor)| {
            [major, minor]
                .iter()
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
        if !is_device {
            return Err(malformed(line));
        }
        for word in words {
            let (key, value) = word.split_once('=').ok_or_else(|| malformed(line))?;
            if let Some(i) = keys.iter().position(|k| *k == key) {
                sums[i] = sums[i].saturating_add(parse_u64(file, value)?);
            }
        }
    }
    Ok(sums)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_sums_add_up_the_devices() {
        let file = Path::new("io.stat");
        let text = "8:0 rbytes=100 wbytes=200 rios=1 wios=2 dbytes=0 dios=0\n\
                    259:65536 rbytes=1000 wbytes=2000 rios=10 wios=20 dbytes=0 dios=0 \
                    cost.vrate=100.00 cost.usage=5\n\n";
        assert_eq!(
            nested_sums(file, text, ["rbytes", "wbytes", "rios", "wios"]).unwrap(),
            [1100, 2200, 11, 22]
        );
        assert_eq!(nested_sums(file, "", ["rbytes"]).unwrap(), [0]);
        assert_eq!(
            nested_sums(file, "8:0 wbytes=3\n", ["rbytes", "wbytes"]).unwrap(),
            [0, 3]
        );
        assert_eq!(
            nested_sums(
                file,
                "8:0 rbytes=18446744073709551615\n8:1 rbytes=5\n",
                ["rbytes"]
            )
            .unwrap(),
            [u64::MAX]
        );
    }

    #[test]
    fn malformed_nested_files_are_parse_errors_naming_the_file() {
        let file = Path::new("/cg/io.stat");
        for text in [
            "sda rbytes=1\n",
            "8: rbytes=1\n",
            "8:0 rbytes\n",
            "8:0 rbytes=-1\n",
            "8:0 rbytes=lots\n",
        ] {
            let err = nested_sums(file, text, ["rbytes"]).unwrap_err();
            assert!(
                matches!(&err, CgroupError::Parse { file, .. } if file.ends_with("io.stat")),
                "{text:?}: {err:?}"
            );
        }
    }
}
