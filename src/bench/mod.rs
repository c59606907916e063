//! `radstream bench`: measurements of the running service over its real interfaces, reported as
//! distributions (never a single timing). [`alerts`]: how long a critical finding takes to reach a
//! viewer. [`load`]: end-to-end throughput, latency, CPU and memory of a `radstream serve` process under
//! K concurrent streams of realistic series ([`study`]), optionally beside a Python peer pipeline; with
//! [`cnn`]'s realistic model when the bundled one (64×64, tiny) would make the model cost vanish.
//! [`preprocess`]: the CPU and WGSL preprocessing paths alone, on real slices (the GPU machine's figure).

pub mod alerts;
pub mod cnn;
pub mod load;
pub mod preprocess;
pub mod study;

use std::path::PathBuf;

/// What can go wrong in `radstream bench load` (the library side; the CLI adds context with anyhow).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {detail}")]
    Dicom { what: String, detail: String },
    #[error(
        "{what} needs Python with pydicom and pylibjpeg-openjpeg (and onnxruntime for --peer) at \
         {python}: {detail}. Install it with `scripts/setup.sh --test` (it creates the venv in the \
         radstream cache) or point RADSTREAM_PYTHON at an interpreter that has them"
    )]
    Python {
        what: String,
        python: PathBuf,
        detail: String,
    },
    #[error("the server process: {0}")]
    Server(String),
    #[error("the bench run: {0}")]
    Run(String),
    #[error(transparent)]
    Service(#[from] crate::error::Error),
}

/// Result of the bench library functions.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;

fn io_error(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BenchError {
    let path = path.into();
    move |source| BenchError::Io { path, source }
}

/// The Python interpreter of the peer and the JPEG 2000 encoder: `RADSTREAM_PYTHON`, else the venv
/// `scripts/setup.sh --test` creates in the radstream cache.
pub fn python() -> PathBuf {
    std::env::var_os("RADSTREAM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::config::Config::cache_dir().join("venv/bin/python"))
}
