//! Container images on the host, for `husk run IMAGE`: recognises a root filesystem directory,
//! an OCI image layout (directory or tar) and a docker archive (`docker save`), verifies every
//! blob against its digest, unpacks the layers in order with whiteouts honoured, and returns the
//! image's run configuration.
//!
//! Owns image formats and unpacking. Must never trust an image: digests and sizes are checked,
//! paths that climb out of the root are refused (the `tar` crate's `unpack_in`), and a layer
//! format it does not know is an error naming it.

mod layer;
mod layout;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use layout::write_layout;

/// The part of an image's configuration a run uses (OCI image config `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
}

/// Why an image could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("image {}: {detail}", path.display())]
    Unrecognised { path: PathBuf, detail: String },
    #[error("image {}: {detail}", path.display())]
    Malformed { path: PathBuf, detail: String },
    #[error("blob {digest}: {detail}")]
    Blob { digest: String, detail: String },
    #[error("layer {digest}: {detail}")]
    Layer { digest: String, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> OciError {
    let context = context.into();
    move |source| OciError::Io { context, source }
}

/// What IMAGE turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageKind {
    /// A directory used as the root filesystem as it is.
    RootfsDir,
    /// An OCI image layout directory.
    OciLayout,
    /// A tar of an OCI image layout.
    OciArchive,
    /// A `docker save` tar.
    DockerArchive,
}

/// An image made ready to run.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub kind: ImageKind,
    /// The root filesystem to share into the VM.
    pub rootfs: PathBuf,
    pub config: RunConfig,
}

/// Prepares `image` for a run. Layered images are unpacked under `work` (created, and to be
/// removed by the caller); a rootfs directory is used in place.
pub fn prepare(image: &Path, work: &Path) -> Result<Prepared, OciError> {
    let meta = std::fs::metadata(image).map_err(|e| OciError::Unrecognised {
        path: image.into(),
        detail: format!("{e}: give a root filesystem directory, an OCI image layout (directory or tar) or a docker archive"),
    })?;
    if meta.is_dir() {
        if image.join("oci-layout").is_file() {
            let rootfs = work.join("rootfs");
            let config = layout::unpack_oci(image, &rootfs)?;
            return Ok(Prepared {
                kind: ImageKind::OciLayout,
                rootfs,
                config,
            });
        }
        return Ok(Prepared {
            kind: ImageKind::RootfsDir,
            rootfs: image.to_owned(),
            config: RunConfig::default(),
        });
    }
    // A tar: unpack it, then look at what it holds.
    let archive = work.join("archive");
    std::fs::create_dir_all(&archive).map_err(io_err(format!("creating {}", archive.display())))?;
    let file =
        std::fs::File::open(image).map_err(io_err(format!("opening {}", image.display())))?;
    let mut tar = tar::Archive::new(
        layer::maybe_gunzip(std::io::BufReader::new(file))
            .map_err(io_err("reading the archive"))?,
    );
    tar.unpack(&archive).map_err(|e| OciError::Unrecognised {
        path: image.into(),
        detail: format!(
            "not a tar archive ({e}): give a directory, an OCI layout tar or a docker archive"
        ),
    })?;
    let rootfs = work.join("rootfs");
    if archive.join("oci-layout").is_file() {
        let config = layout::unpack_oci(&archive, &rootfs)?;
        Ok(Prepared {
            kind: ImageKind::OciArchive,
            rootfs,
            config,
        })
    } else if archive.join("manifest.json").is_file() {
        let config = layout::unpack_docker(&archive, &rootfs)?;
        Ok(Prepared {
            kind: ImageKind::DockerArchive,
            rootfs,
            config,
        })
    } else {
        Err(OciError::Unrecognised {
            path: image.into(),
            detail: "a tar with neither oci-layout nor manifest.json: not an OCI layout or a docker archive".into(),
        })
    }
}
