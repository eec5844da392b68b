//! OCI image layouts and docker archives: index → manifest → config and layers, every blob
//! checked against its digest and size; and writing an OCI layout from a root filesystem.
//!
//! Owns the image metadata formats. Must never open a blob path taken from the image without
//! checking it (a digest is `sha256:` and 64 hex digits; docker layer paths stay inside).

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{io_err, layer, OciError, RunConfig};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ImageConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<RunConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    typ: String,
    diff_ids: Vec<String>,
}

/// One entry of a docker archive's manifest.json.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    layers: Vec<String>,
}

fn malformed(path: &Path, detail: impl Into<String>) -> OciError {
    OciError::Malformed {
        path: path.into(),
        detail: detail.into(),
    }
}

/// The blob path for a digest, refusing anything but `sha256:<64 hex>`.
fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, OciError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    let hex = hex.ok_or_else(|| OciError::Blob {
        digest: digest.into(),
        detail: "not a sha256 digest".into(),
    })?;
    Ok(layout.join("blobs/sha256").join(hex))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a small blob (JSON) and checks its digest and size.
fn read_blob(layout: &Path, d: &Descriptor) -> Result<Vec<u8>, OciError> {
    let path = blob_path(layout, &d.digest)?;
    let data = std::fs::read(&path).map_err(|e| OciError::Blob {
        digest: d.digest.clone(),
        detail: e.to_string(),
    })?;
    verify(d, Sha256::digest(&data).as_slice(), data.len() as u64)?;
    Ok(data)
}

fn verify(d: &Descriptor, sha: &[u8], size: u64) -> Result<(), OciError> {
    if format!("sha256:{}", hex(sha)) != d.digest {
        return Err(OciError::Blob {
            digest: d.digest.clone(),
            detail: "content does not match its digest".into(),
        });
    }
    if size != d.size {
        return Err(OciError::Blob {
            digest: d.digest.clone(),
            detail: format!("{size} bytes, the manifest says {}", d.size),
        });
    }
    Ok(())
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    sha: Sha256,
    n: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

fn apply_layer(layout: &Path, d: &Descriptor, rootfs: &Path) -> Result<(), OciError> {
    let path = blob_path(layout, &d.digest)?;
    let file = std::fs::File::open(&path).map_err(|e| OciError::Blob {
        digest: d.digest.clone(),
        detail: e.to_string(),
    })?;
    let mut hashing = Hashing {
        inner: file,
        sha: Sha256::new(),
        n: 0,
    };
    {
        let reader = layer::maybe_gunzip(std::io::BufReader::new(&mut hashing)).map_err(|e| {
            OciError::Layer {
                digest: d.digest.clone(),
                detail: e.to_string(),
            }
        })?;
        layer::apply(reader, rootfs, &d.digest)?;
    }
    // Hash what the layer did not read (tar padding at the end) before checking the digest.
    std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io_err("reading a layer"))?;
    verify(d, hashing.sha.finalize().as_slice(), hashing.n)
}

fn run_config(bytes: &[u8], path: &Path) -> Result<RunConfig, OciError> {
    let c: ImageConfig =
        serde_json::from_slice(bytes).map_err(|e| malformed(path, format!("image config: {e}")))?;
    if !c.os.is_empty() && c.os != "linux" {
        return Err(malformed(
            path,
            format!("the image is for {}, not linux", c.os),
        ));
    }
    if !c.architecture.is_empty() && c.architecture != "amd64" {
        return Err(malformed(
            path,
            format!("the image is for {}, not amd64", c.architecture),
        ));
    }
    Ok(c.config.unwrap_or_default())
}

/// Picks the manifest for linux/amd64 from an index (following nested indexes).
fn pick_manifest(layout: &Path, index: &Index, depth: u32) -> Result<Manifest, OciError> {
    let fits = |d: &&Descriptor| {
        d.platform
            .as_ref()
            .is_none_or(|p| p.os == "linux" && p.architecture == "amd64")
    };
    let d = index
        .manifests
        .iter()
        .find(fits)
        .ok_or_else(|| malformed(layout, "no linux/amd64 manifest in index.json"))?;
    let bytes = read_blob(layout, d)?;
    if d.media_type == INDEX {
        if depth > 4 {
            return Err(malformed(layout, "image indexes nested too deep"));
        }
        let inner: Index = serde_json::from_slice(&bytes)
            .map_err(|e| malformed(layout, format!("nested index: {e}")))?;
        return pick_manifest(layout, &inner, depth + 1);
    }
    if d.media_type != MANIFEST && d.media_type != DOCKER_MANIFEST {
        return Err(malformed(
            layout,
            format!("unsupported manifest type {}", d.media_type),
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| malformed(layout, format!("manifest: {e}")))
}

/// Unpacks an OCI image layout into `rootfs`; returns its run configuration.
pub fn unpack_oci(layout: &Path, rootfs: &Path) -> Result<RunConfig, OciError> {
    let index_path = layout.join("index.json");
    let index: Index = serde_json::from_slice(
        &std::fs::read(&index_path).map_err(io_err(format!("reading {}", index_path.display())))?,
    )
    .map_err(|e| malformed(layout, format!("index.json: {e}")))?;
    let manifest = pick_manifest(layout, &index, 0)?;
    let config = run_config(&read_blob(layout, &manifest.config)?, layout)?;
    std::fs::create_dir_all(rootfs).map_err(io_err(format!("creating {}", rootfs.display())))?;
    for l in &manifest.layers {
        apply_layer(layout, l, rootfs)?;
    }
    Ok(config)
}

/// A path inside the archive, refusing anything that climbs out.
fn inside(dir: &Path, rel: &str) -> Result<PathBuf, OciError> {
    let p = Path::new(rel);
    if p.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        Ok(dir.join(p))
    } else {
        Err(malformed(dir, format!("path {rel:?} leaves the archive")))
    }
}

/// Unpacks an extracted docker archive into `rootfs`; returns its run configuration.
pub fn unpack_docker(dir: &Path, rootfs: &Path) -> Result<RunConfig, OciError> {
    let m = std::fs::read(dir.join("manifest.json")).map_err(io_err("reading manifest.json"))?;
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(&m).map_err(|e| malformed(dir, format!("manifest.json: {e}")))?;
    let entry = entries
        .first()
        .ok_or_else(|| malformed(dir, "manifest.json lists no image"))?;
    let config_bytes =
        std::fs::read(inside(dir, &entry.config)?).map_err(io_err("reading the image config"))?;
    let config = run_config(&config_bytes, dir)?;
    let diff_ids = serde_json::from_slice::<ImageConfig>(&config_bytes)
        .ok()
        .and_then(|c| c.rootfs)
        .map(|r| r.diff_ids);
    std::fs::create_dir_all(rootfs).map_err(io_err(format!("creating {}", rootfs.display())))?;
    for (i, l) in entry.layers.iter().enumerate() {
        let path = inside(dir, l)?;
        let file = std::fs::File::open(&path).map_err(io_err(format!("opening layer {l}")))?;
        let mut hashing = Hashing {
            inner: file,
            sha: Sha256::new(),
            n: 0,
        };
        {
            let reader =
                layer::maybe_gunzip(std::io::BufReader::new(&mut hashing)).map_err(|e| {
                    OciError::Layer {
                        digest: l.clone(),
                        detail: e.to_string(),
                    }
                })?;
            layer::apply(reader, rootfs, l)?;
        }
        std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io_err("reading a layer"))?;
        // Docker's diff_ids are the digests of the uncompressed layer tars, which `docker save` writes.
        if let Some(want) = diff_ids.as_ref().and_then(|d| d.get(i)) {
            let got = format!("sha256:{}", hex(hashing.sha.finalize().as_slice()));
            if &got != want {
                return Err(OciError::Blob {
                    digest: want.clone(),
                    detail: format!("layer {l} does not match it"),
                });
            }
        }
    }
    Ok(config)
}

fn put_blob(layout: &Path, media_type: &str, data: &[u8]) -> Result<Descriptor, OciError> {
    let digest = format!("sha256:{}", hex(Sha256::digest(data).as_slice()));
    let path = blob_path(layout, &digest)?;
    std::fs::write(&path, data).map_err(io_err(format!("writing {}", path.display())))?;
    Ok(Descriptor {
        media_type: media_type.into(),
        digest,
        size: data.len() as u64,
        platform: None,
        annotations: Default::default(),
    })
}

/// Writes `rootfs` as a one-layer OCI image layout at `out` with run configuration `config`.
pub fn write_layout(rootfs: &Path, config: &RunConfig, out: &Path) -> Result<(), OciError> {
    std::fs::create_dir_all(out.join("blobs/sha256"))
        .map_err(io_err(format!("creating {}", out.display())))?;
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.append_dir_all(".", rootfs)
        .map_err(io_err(format!("archiving {}", rootfs.display())))?;
    let tar = tar.into_inner().map_err(io_err("finishing the layer"))?;
    let diff_id = format!("sha256:{}", hex(Sha256::digest(&tar).as_slice()));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).map_err(io_err("compressing the layer"))?;
    let gz = gz.finish().map_err(io_err("compressing the layer"))?;
    let layer = put_blob(out, LAYER_GZIP, &gz)?;
    let image_config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        config: Some(config.clone()),
        rootfs: Some(RootFs {
            typ: "layers".into(),
            diff_ids: vec![diff_id],
        }),
    };
    let config_blob = put_blob(out, CONFIG, &json(&image_config))?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST.into()),
        config: config_blob,
        layers: vec![layer],
    };
    let mut mdesc = put_blob(out, MANIFEST, &json(&manifest))?;
    mdesc.platform = Some(Platform {
        architecture: "amd64".into(),
        os: "linux".into(),
    });
    // The tag, so `ctr image import --base-name NAME` names the image NAME:latest.
    mdesc.annotations.insert(REF_NAME.into(), "latest".into());
    let index = Index {
        schema_version: 2,
        manifests: vec![mdesc],
    };
    std::fs::write(out.join("index.json"), json(&index)).map_err(io_err("writing index.json"))?;
    std::fs::write(out.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(io_err("writing oci-layout"))?;
    Ok(())
}

/// The OCI annotation naming a manifest's tag in an index.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Image metadata as JSON bytes (these types always serialise).
fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_rootfs(dir: &Path) {
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin/tool"), b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("tool", dir.join("bin/alias")).unwrap();
    }

    #[test]
    fn a_written_layout_unpacks_to_the_same_tree_and_config() {
        let t = tempfile::tempdir().unwrap();
        sample_rootfs(&t.path().join("src"));
        let config = RunConfig {
            cmd: Some(vec!["/bin/tool".into()]),
            env: Some(vec!["A=1".into()]),
            ..Default::default()
        };
        write_layout(&t.path().join("src"), &config, &t.path().join("img")).unwrap();
        let back = unpack_oci(&t.path().join("img"), &t.path().join("out")).unwrap();
        assert_eq!(back, config);
        assert_eq!(
            std::fs::read(t.path().join("out/bin/tool")).unwrap(),
            b"#!/bin/sh\n"
        );
        assert_eq!(
            std::fs::read_link(t.path().join("out/bin/alias")).unwrap(),
            Path::new("tool")
        );
    }

    #[test]
    fn a_tampered_blob_is_refused() {
        let t = tempfile::tempdir().unwrap();
        sample_rootfs(&t.path().join("src"));
        write_layout(
            &t.path().join("src"),
            &RunConfig::default(),
            &t.path().join("img"),
        )
        .unwrap();
        for blob in std::fs::read_dir(t.path().join("img/blobs/sha256"))
            .unwrap()
            .flatten()
        {
            let mut data = std::fs::read(blob.path()).unwrap();
            if data.starts_with(&[0x1f, 0x8b]) {
                let n = data.len();
                data[n - 1] ^= 0xff; // the gzip trailer: still readable, no longer the digest
                std::fs::write(blob.path(), data).unwrap();
            }
        }
        let e = unpack_oci(&t.path().join("img"), &t.path().join("out")).unwrap_err();
        assert!(
            matches!(e, OciError::Blob { .. } | OciError::Layer { .. }),
            "{e}"
        );
    }

    #[test]
    fn digests_must_be_sha256_hex() {
        assert!(blob_path(Path::new("/l"), "sha256:../../etc/passwd").is_err());
        assert!(blob_path(Path::new("/l"), &format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(inside(Path::new("/a"), "../x").is_err());
    }
}
