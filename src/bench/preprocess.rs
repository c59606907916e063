//! `radstream bench preprocess`: preprocessing throughput of the CPU reference and the WGSL path on real
//! slices (the bundled sample study's 512² 16-bit CT, decoded as the service decodes them), per output
//! size and batch, and the bytes each batch moves.
//!
//! Why in the binary and not only in criterion: a GPU machine gets the release binary, not a Rust
//! toolchain and the crate registry, so the figure the issue asks for there — WGSL throughput as a
//! fraction of the card's memory bandwidth — must come from something that runs on its own
//! (`scripts/gpu-check.sh` calls this). Each batch uploads its slices' stored samples (2 bytes a CT
//! pixel), runs the kernel, and reads the NCHW output back: `bytes` counts those (stored bytes in + f32
//! out), which is also what the kernel itself must at least touch once, so `bytes / time` is a lower
//! bound of the memory traffic the dispatch caused, transfers included.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{BenchError, Result};
use crate::{
    decode::{decode_instance, DecodedInstance, Limits},
    demo::SAMPLE_STUDY,
    model::ModelPackage,
    preprocess::{CpuPreprocessor, GpuPreprocessor, PreprocessSpec, Preprocessor, SliceView},
};

/// What `bench preprocess` runs.
#[derive(Debug, Clone)]
pub struct PreprocessBench {
    /// Output sides (square): 64 is the bundled model's input, 256 the realistic model's.
    pub sizes: Vec<u32>,
    /// Slices per call.
    pub batch: usize,
    /// "cpu", "gpu" (the wgpu adapter wgpu picks), or both.
    pub backends: Vec<String>,
    /// How long each measurement runs.
    pub seconds: f64,
}

/// One backend at one size.
#[derive(Debug, Clone, Serialize)]
pub struct PreprocessFigure {
    pub backend: String,
    /// The adapter (GPU name and driver) or "cpu".
    pub device: String,
    pub output_side: u32,
    pub batch: usize,
    pub calls: u64,
    pub slices_per_s: f64,
    pub us_per_slice: f64,
    /// Stored sample bytes uploaded + f32 output bytes read back, per second.
    pub gb_per_s: f64,
}

impl std::fmt::Display for PreprocessFigure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<4} {:>4}² batch {:>3}: {:>9.0} slices/s {:>9.1} µs/slice {:>8.2} GB/s  ({} calls; {})",
            self.backend,
            self.output_side,
            self.batch,
            self.slices_per_s,
            self.us_per_slice,
            self.gb_per_s,
            self.calls,
            self.device
        )
    }
}

/// Runs every backend at every size; a backend that cannot start (no adapter) is an error naming it.
pub fn run(bench: &PreprocessBench) -> Result<Vec<PreprocessFigure>> {
    let limits = Limits::default();
    let decoded: Vec<DecodedInstance> = SAMPLE_STUDY
        .iter()
        .map(|(name, bytes)| {
            decode_instance(bytes, &limits).map_err(|r| BenchError::Dicom {
                what: (*name).to_string(),
                detail: r.error.to_string(),
            })
        })
        .collect::<Result<_>>()?;
    let all: Vec<SliceView<'_>> = decoded.iter().filter_map(|d| SliceView::of(d, 0)).collect();
    if all.is_empty() || bench.batch == 0 {
        return Err(BenchError::Run("no slices to preprocess".into()));
    }
    let views: Vec<SliceView<'_>> = all.iter().cycle().take(bench.batch).copied().collect();
    let in_bytes: u64 = views
        .iter()
        .map(|v| v.frame.samples().as_bytes().len() as u64)
        .sum();
    let base = ModelPackage::embedded_default()
        .map_err(|e| BenchError::Run(format!("the built-in model: {e}")))?
        .manifest
        .preprocess_spec();
    let mut figures = Vec::new();
    for backend in &bench.backends {
        let (mut pre, device): (Box<dyn Preprocessor>, String) = match backend.as_str() {
            "cpu" => (Box::new(CpuPreprocessor), "cpu".into()),
            "gpu" => {
                let gpu = GpuPreprocessor::new()
                    .map_err(|e| BenchError::Run(format!("the WGSL path: {e}")))?;
                let info = gpu.adapter_info();
                let device = format!("{} ({:?}, {})", info.name, info.backend, info.driver);
                (Box::new(gpu), device)
            }
            other => {
                return Err(BenchError::Run(format!(
                    "unknown backend {other:?} (cpu or gpu)"
                )))
            }
        };
        for &side in &bench.sizes {
            let spec = PreprocessSpec {
                height: side,
                width: side,
                ..base.clone()
            };
            let mut out = vec![0.0f32; spec.output_len(views.len())];
            let call = |pre: &mut Box<dyn Preprocessor>, out: &mut Vec<f32>| {
                pre.preprocess(&spec, &views, out)
                    .map_err(|e| BenchError::Run(format!("{backend} at {side}²: {e}")))
            };
            // warm-up: buffers, pipeline caches, page faults
            for _ in 0..3 {
                call(&mut pre, &mut out)?;
            }
            let budget = Duration::from_secs_f64(bench.seconds.max(0.1));
            let started = Instant::now();
            let mut calls = 0u64;
            while started.elapsed() < budget {
                call(&mut pre, &mut out)?;
                calls += 1;
            }
            let secs = started.elapsed().as_secs_f64();
            let slices = calls as f64 * views.len() as f64;
            let bytes = calls as f64 * (in_bytes + (out.len() * 4) as u64) as f64;
            figures.push(PreprocessFigure {
                backend: backend.clone(),
                device: device.clone(),
                output_side: side,
                batch: views.len(),
                calls,
                slices_per_s: slices / secs,
                us_per_slice: secs * 1e6 / slices,
                gb_per_s: bytes / secs / 1e9,
            });
        }
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both paths run on real slices and report consistent figures (lavapipe stands in for a GPU here).
    #[test]
    fn both_paths_report_consistent_figures() {
        let figures = run(&PreprocessBench {
            sizes: vec![64, 256],
            batch: 4,
            backends: vec!["cpu".into(), "gpu".into()],
            seconds: 0.1,
        })
        .expect("runs");
        assert_eq!(figures.len(), 4);
        for f in &figures {
            assert!(
                f.calls >= 1 && f.slices_per_s > 0.0 && f.gb_per_s > 0.0,
                "{f}"
            );
            let per = 1e6 / f.slices_per_s;
            assert!((per - f.us_per_slice).abs() <= 1e-6 * per.max(1.0), "{f}");
            assert_eq!(f.batch, 4);
        }
        assert!(figures[2].device != "cpu", "the GPU path names its adapter");
        let bad = run(&PreprocessBench {
            sizes: vec![64],
            batch: 1,
            backends: vec!["tpu".into()],
            seconds: 0.1,
        });
        assert!(matches!(bad, Err(BenchError::Run(m)) if m.contains("tpu")));
    }
}
