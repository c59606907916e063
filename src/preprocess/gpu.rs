//! GPU implementation: one fused compute dispatch per batch.
//!
//! Preprocessing runs per slice on the hot path, so everything that can be
//! paid once is: device, queue, pipeline and bind-group layout are created in
//! [`GpuPreprocessor::new`], and the input/params/output/staging buffers are
//! kept between batches and only reallocated when a batch outgrows them. Each
//! slice is uploaded with its own `write_buffer` straight from the decoder's
//! memory (no packed copy on the host), and the kernel fuses rescale, window,
//! invert, channel mapping, bilinear resize and normalization so that every
//! stored value is read once per tap and the output is written exactly once.
//!
//! wgpu reports most failures asynchronously through error scopes; each
//! batch runs inside validation + out-of-memory scopes so a failure becomes a
//! `PreprocessError::Gpu` for that batch instead of a panic from the default
//! uncaptured-error handler.

use std::sync::mpsc;

use super::{
    packed_len, resolve_batch, PreprocessError, PreprocessSpec, Preprocessor, SliceParams,
    SliceView, SpecParams,
};

const SHADER: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/shaders/preprocess.wgsl"
));
/// Must match `@workgroup_size` in the shader.
const WG_X: u32 = 16;
const WG_Y: u32 = 16;
/// Buffers grow to a multiple of this, so small size changes don't reallocate.
const GROW_ALIGN: u64 = 256;

/// A buffer that is reused across batches and only grows.
struct Grow {
    buf: Option<wgpu::Buffer>,
    usage: wgpu::BufferUsages,
    label: &'static str,
}

impl Grow {
    fn new(label: &'static str, usage: wgpu::BufferUsages) -> Self {
        Self {
            buf: None,
            usage,
            label,
        }
    }

    /// Ensures capacity for `need` bytes; returns true if the buffer was
    /// (re)created, which invalidates any bind group referencing it.
    fn ensure(&mut self, device: &wgpu::Device, need: u64, limit: u64) -> bool {
        if self.buf.as_ref().is_some_and(|b| b.size() >= need) {
            return false;
        }
        let old = self.buf.as_ref().map_or(0, |b| b.size());
        // Grow by at least 1.5x to amortize, but never past the device limit.
        let want = need.max(old + old / 2).div_ceil(GROW_ALIGN) * GROW_ALIGN;
        let size = want.min(limit).max(need);
        self.buf = Some(device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(self.label),
            size,
            usage: self.usage,
            mapped_at_creation: false,
        }));
        true
    }

    fn get(&self) -> &wgpu::Buffer {
        self.buf.as_ref().expect("ensure() called before get()")
    }
}

pub struct GpuPreprocessor {
    device: wgpu::Device,
    queue: wgpu::Queue,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    info: wgpu::AdapterInfo,
    /// Largest single storage binding / buffer we may create, in bytes.
    max_binding: u64,
    max_groups: u32,
    spec_buf: wgpu::Buffer,
    input: Grow,
    params: Grow,
    output: Grow,
    staging: Grow,
    bind_group: Option<wgpu::BindGroup>,
}

impl std::fmt::Debug for GpuPreprocessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuPreprocessor")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .field("device_type", &self.info.device_type)
            .finish_non_exhaustive()
    }
}

impl GpuPreprocessor {
    /// Picks the highest-performance adapter of any type (a CPU adapter such
    /// as lavapipe included) and builds the pipeline.
    pub fn new() -> Result<Self, PreprocessError> {
        futures::executor::block_on(Self::new_async())
    }

    async fn new_async() -> Result<Self, PreprocessError> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            })
            .await
            .map_err(|e| PreprocessError::NoAdapter {
                detail: e.to_string(),
            })?;
        let info = adapter.get_info();
        tracing::info!(
            adapter = %info.name,
            backend = ?info.backend,
            device_type = ?info.device_type,
            driver = %info.driver,
            driver_info = %info.driver_info,
            "preprocess GPU adapter selected"
        );
        // Ask for everything the adapter offers so large batches are bounded by
        // the hardware, not by WebGPU's conservative defaults.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("radstream-preprocess"),
                required_features: wgpu::Features::empty(),
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| PreprocessError::Device {
                detail: e.to_string(),
            })?;
        // Errors inside our scopes are returned per batch; anything escaping
        // them is logged instead of panicking the process.
        device.on_uncaptured_error(std::sync::Arc::new(|e: wgpu::Error| {
            tracing::error!(error = %e, "uncaptured wgpu error in preprocessing");
        }));

        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("preprocess.wgsl"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let storage = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("preprocess"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: wgpu::BufferSize::new(
                            std::mem::size_of::<SpecParams>() as u64
                        ),
                    },
                    count: None,
                },
                storage(1, true),
                storage(2, true),
                storage(3, false),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("preprocess"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("preprocess"),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions::default(),
            cache: None,
        });
        let spec_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("preprocess-spec"),
            size: std::mem::size_of::<SpecParams>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = scope.pop().await {
            return Err(PreprocessError::Device {
                detail: format!("pipeline creation failed: {e}"),
            });
        }

        let dl = device.limits();
        use wgpu::BufferUsages as U;
        Ok(Self {
            max_binding: dl.max_storage_buffer_binding_size.min(dl.max_buffer_size),
            max_groups: dl.max_compute_workgroups_per_dimension,
            device,
            queue,
            pipeline,
            layout,
            info,
            spec_buf,
            input: Grow::new("preprocess-input", U::STORAGE | U::COPY_DST),
            params: Grow::new("preprocess-params", U::STORAGE | U::COPY_DST),
            output: Grow::new("preprocess-output", U::STORAGE | U::COPY_SRC),
            staging: Grow::new("preprocess-staging", U::MAP_READ | U::COPY_DST),
            bind_group: None,
        })
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// Largest buffer (input, params or output) one batch may need, in bytes.
    pub fn max_batch_buffer_bytes(&self) -> u64 {
        self.max_binding
    }

    #[cfg(test)]
    pub(crate) fn set_max_binding_for_test(&mut self, bytes: u64) {
        self.max_binding = bytes;
    }

    fn check(&self, what: &'static str, bytes: u64) -> Result<(), PreprocessError> {
        if bytes > self.max_binding {
            return Err(PreprocessError::BatchTooLarge {
                what,
                needed: bytes,
                limit: self.max_binding,
            });
        }
        Ok(())
    }

    fn run(
        &mut self,
        spec: &PreprocessSpec,
        slices: &[SliceView<'_>],
        params: &[SliceParams],
        out: &mut [f32],
    ) -> Result<(), PreprocessError> {
        // Model slices: a context spec brings 2k+1 views for each.
        let n = (slices.len() / spec.stack()) as u32;
        let in_bytes: u64 = slices.iter().map(packed_len).sum();
        let par_bytes = std::mem::size_of_val(params) as u64;
        let out_bytes = std::mem::size_of_val(out) as u64;
        self.check("packed input pixels (bytes)", in_bytes)?;
        self.check("slice parameters (bytes)", par_bytes)?;
        self.check("output tensor (bytes)", out_bytes)?;
        let groups = [spec.width.div_ceil(WG_X), spec.height.div_ceil(WG_Y), n];
        if let Some(&g) = groups.iter().find(|&&g| g > self.max_groups) {
            return Err(PreprocessError::BatchTooLarge {
                what: "workgroups per dispatch dimension",
                needed: g as u64,
                limit: self.max_groups as u64,
            });
        }

        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = self.device.push_error_scope(wgpu::ErrorFilter::Validation);

        let mut regrown = self.input.ensure(&self.device, in_bytes, self.max_binding);
        regrown |= self
            .params
            .ensure(&self.device, par_bytes, self.max_binding);
        regrown |= self
            .output
            .ensure(&self.device, out_bytes, self.max_binding);
        self.staging
            .ensure(&self.device, out_bytes, self.max_binding);
        if regrown || self.bind_group.is_none() {
            self.bind_group = Some(self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("preprocess"),
                layout: &self.layout,
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: self.spec_buf.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: self.params.get().as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: self.input.get().as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 3,
                        resource: self.output.get().as_entire_binding(),
                    },
                ],
            }));
        }

        self.queue.write_buffer(
            &self.spec_buf,
            0,
            bytemuck::bytes_of(&SpecParams::new(spec, n)),
        );
        self.queue
            .write_buffer(self.params.get(), 0, bytemuck::cast_slice(params));
        for (s, p) in slices.iter().zip(params) {
            // Stored samples as they are (2 bytes a pixel for CT); copies are whole words, so a
            // slice's last partial word goes up padded.
            let bytes = s.frame.samples().as_bytes();
            let whole = bytes.len() / 4 * 4;
            let (body, tail) = bytes.split_at(whole);
            if !body.is_empty() {
                self.queue
                    .write_buffer(self.input.get(), u64::from(p.offset), body);
            }
            if !tail.is_empty() {
                let mut word = [0u8; 4];
                word[..tail.len()].copy_from_slice(tail);
                self.queue.write_buffer(
                    self.input.get(),
                    u64::from(p.offset) + whole as u64,
                    &word,
                );
            }
        }

        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("preprocess"),
            });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("preprocess"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, self.bind_group.as_ref(), &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        encoder.copy_buffer_to_buffer(self.output.get(), 0, self.staging.get(), 0, out_bytes);
        let submission = self.queue.submit([encoder.finish()]);

        // Scopes pop in LIFO order; submit-time errors are already recorded.
        let val_err = futures::executor::block_on(val.pop());
        let oom_err = futures::executor::block_on(oom.pop());
        if let Some(e) = val_err.or(oom_err) {
            return Err(PreprocessError::Gpu {
                detail: e.to_string(),
            });
        }

        let staging = self.staging.get();
        let (tx, rx) = mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, 0..out_bytes, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: None,
            })
            .map_err(|e| PreprocessError::Gpu {
                detail: format!("waiting for the dispatch: {e}"),
            })?;
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(PreprocessError::Gpu {
                    detail: format!("mapping the readback buffer: {e}"),
                })
            }
            Err(_) => {
                return Err(PreprocessError::Gpu {
                    detail: "readback map callback was dropped".into(),
                })
            }
        }
        let copied = staging
            .slice(0..out_bytes)
            .get_mapped_range()
            .map(|view| bytemuck::cast_slice_mut::<f32, u8>(out).copy_from_slice(&view))
            .map_err(|e| PreprocessError::Gpu {
                detail: format!("reading the mapped readback buffer: {e}"),
            });
        staging.unmap();
        copied
    }
}

impl Preprocessor for GpuPreprocessor {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn preprocess(
        &mut self,
        spec: &PreprocessSpec,
        slices: &[SliceView<'_>],
        out: &mut [f32],
    ) -> Result<(), PreprocessError> {
        let params = resolve_batch(spec, slices, out.len())?;
        if slices.is_empty() {
            return Ok(());
        }
        self.run(spec, slices, &params, out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, MutexGuard, OnceLock};

    use super::super::test_util::*;
    use super::super::{CpuPreprocessor, Window};
    use super::*;

    /// One device for the whole test binary (device creation on lavapipe is
    /// not free). A failed `new()` fails every GPU test with its message.
    fn gpu() -> MutexGuard<'static, GpuPreprocessor> {
        static GPU: OnceLock<Result<Mutex<GpuPreprocessor>, String>> = OnceLock::new();
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        match GPU.get_or_init(|| {
            GpuPreprocessor::new()
                .map(Mutex::new)
                .map_err(|e| e.to_string())
        }) {
            Ok(m) => m.lock().unwrap_or_else(|p| p.into_inner()),
            Err(e) => panic!("GpuPreprocessor::new() failed: {e}"),
        }
    }

    /// Runs both paths; returns the max abs difference (and asserts <= 1e-4).
    fn compare(what: &str, spec: &PreprocessSpec, owned: &[OwnedSlice]) -> f32 {
        let v = views(owned);
        let n = spec.output_len(owned.len());
        let mut cpu = vec![f32::NAN; n];
        let mut gpu_out = vec![f32::NAN; n];
        CpuPreprocessor.preprocess(spec, &v, &mut cpu).unwrap();
        gpu()
            .preprocess(spec, &v, &mut gpu_out)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let mut max = 0.0f32;
        for (i, (c, g)) in cpu.iter().zip(&gpu_out).enumerate() {
            assert!(
                c.is_finite() && g.is_finite(),
                "{what}: non-finite at {i}: cpu {c} gpu {g}"
            );
            let d = (c - g).abs();
            assert!(d <= 1e-4, "{what}: index {i}: cpu {c} gpu {g} (diff {d})");
            max = max.max(d);
        }
        max
    }

    fn windows() -> [(&'static str, Option<Window>); 2] {
        [
            (
                "manifest",
                Some(Window {
                    center: 40.0,
                    width: 400.0,
                }),
            ),
            ("file/minmax", None),
        ]
    }

    #[test]
    fn gpu_adapter_reports_info() {
        let g = gpu();
        let info = g.adapter_info();
        println!(
            "adapter: {} ({:?}, {:?})",
            info.name, info.backend, info.device_type
        );
        assert!(!info.name.is_empty());
        assert_eq!(g.name(), "gpu");
        fn send<T: Send>() {}
        send::<GpuPreprocessor>();
    }

    #[test]
    fn gpu_matches_cpu_monochrome() {
        // (rows, cols) -> (H, W): upscale, downscale, non-square both ways, odd sizes.
        let geoms = [
            ((37, 53), (64, 48)),
            ((300, 200), (32, 40)),
            ((16, 16), (64, 64)),
            ((129, 7), (20, 33)),
        ];
        let mut worst = 0.0f32;
        for (gi, &((r, c), (h, w))) in geoms.iter().enumerate() {
            let seed = gi as u64 * 10;
            let mut no_file = ct(r, c, seed + 1);
            no_file.file_windows.clear(); // -> min/max window
            let mut mono1_minmax = xray_mono1(r, c, seed + 4);
            mono1_minmax.file_windows.clear();
            let slices = [
                ("ct file window", ct(r, c, seed)),
                ("ct min/max", no_file),
                (
                    "ct signed slope/intercept min/max",
                    ct_signed(r, c, seed + 2),
                ),
                ("mono1 file window", xray_mono1(r, c, seed + 3)),
                ("mono1 min/max", mono1_minmax),
                (
                    "ct invalid file window 0/0 -> min/max",
                    OwnedSlice {
                        file_windows: vec![Window {
                            center: 0.0,
                            width: 0.0,
                        }],
                        ..ct(r, c, seed + 5)
                    },
                ),
                (
                    "mono1 invalid first pair -> second pair",
                    OwnedSlice {
                        file_windows: vec![
                            Window {
                                center: f64::NAN,
                                width: 400.0,
                            },
                            Window {
                                center: 1500.0,
                                width: 2000.0,
                            },
                        ],
                        ..xray_mono1(r, c, seed + 6)
                    },
                ),
            ];
            for ch in [1, 3] {
                for (wname, win) in windows() {
                    for (sname, s) in &slices {
                        let what = format!("{sname}, {wname}, C={ch}, {r}x{c}->{h}x{w}");
                        worst = worst.max(compare(
                            &what,
                            &spec(ch, h, w, win),
                            std::slice::from_ref(s),
                        ));
                    }
                }
            }
        }
        println!("monochrome: max |gpu - cpu| = {worst:e}");
    }

    #[test]
    fn gpu_matches_cpu_rgb() {
        let mut worst = 0.0f32;
        for &((r, c), (h, w)) in &[((40, 30), (64, 64)), ((255, 311), (48, 32))] {
            for ch in [1, 3] {
                let s = [
                    rgb8(r, c, 7),
                    OwnedSlice {
                        bits_stored: 10,
                        ..rgb8(r, c, 8)
                    },
                ];
                let what = format!("rgb C={ch} {r}x{c}->{h}x{w}");
                // The manifest window must not affect colour slices on either path.
                worst = worst.max(compare(
                    &what,
                    &spec(
                        ch,
                        h,
                        w,
                        Some(Window {
                            center: 1.0,
                            width: 2.0,
                        }),
                    ),
                    &s,
                ));
            }
        }
        println!("rgb: max |gpu - cpu| = {worst:e}");
    }

    #[test]
    fn gpu_matches_cpu_step_window() {
        // w = 1 (the smallest valid width): integer values never sit exactly on a fractional
        // threshold, so the step is decided identically despite possible FMA contraction.
        for (c, w) in [(100.3, 1.0), (2000.8, 1.0), (-5.2, 1.0)] {
            let win = Some(Window {
                center: c,
                width: w,
            });
            for ch in [1, 3] {
                let s = [ct_signed(33, 45, 5), xray_mono1(20, 70, 6)];
                compare(
                    &format!("step c={c} w={w} C={ch}"),
                    &spec(ch, 25, 31, win),
                    &s,
                );
            }
        }
        // Constant frame with min/max window -> w = 1 step; exact on both paths.
        let flat = [OwnedSlice {
            slope: 0.37,
            intercept: -11.3,
            ..OwnedSlice::mono(9, 9, vec![123.0; 81])
        }];
        compare("constant frame", &spec(1, 4, 4, None), &flat);
    }

    /// The kernel reads stored samples itself: 12 of 16 bits with junk in the high bits (an old
    /// overlay), signed and not, signed 8-bit, 32-bit, and frames whose byte length is not a whole
    /// number of words, in one dispatch. Each must give what its clean values give on the CPU.
    #[test]
    fn gpu_reads_stored_samples_masked_and_sign_extended() {
        use crate::decode::{Frame, SampleFormat, Samples};
        let raw = |values: &[i64], width: usize, bits: u16, signed: bool, junk: u32| {
            let fmt = SampleFormat::new(width, bits, signed).expect("format");
            let words = values
                .iter()
                .map(|&v| (v as u32 & ((1u64 << bits) - 1) as u32) | junk);
            Frame::new(Samples::from_values(words.map(i64::from), fmt))
        };
        // 3 x 5 values: odd byte lengths at 1 and 2 bytes a sample.
        let values: Vec<i64> = (0..15).map(|i| i * 97 % 2000 - 1000).collect();
        let unsigned: Vec<i64> = values.iter().map(|v| v + 1000).collect();
        let small: Vec<i64> = values.iter().map(|v| v / 10).collect();
        let cases = [
            (raw(&values, 2, 12, true, 0xF000), values.clone()),
            (raw(&unsigned, 2, 12, false, 0xA000), unsigned.clone()),
            (raw(&small, 1, 8, true, 0), small.clone()),
            (raw(&values, 4, 20, true, 0xFF00_0000), values.clone()),
        ];
        let stored: Vec<OwnedSlice> = cases
            .iter()
            .map(|(f, _)| OwnedSlice::mono_stored(3, 5, f.clone(), 12))
            .collect();
        let clean: Vec<OwnedSlice> = cases
            .iter()
            .map(|(_, v)| OwnedSlice::mono(3, 5, v.iter().map(|&v| v as f32).collect()))
            .collect();
        for (wname, win) in windows() {
            let sp = spec(1, 7, 9, win);
            compare(&format!("stored {wname}"), &sp, &stored);
            let mut want = vec![0.0; sp.output_len(clean.len())];
            CpuPreprocessor
                .preprocess(&sp, &views(&clean), &mut want)
                .unwrap();
            let mut got = vec![0.0; want.len()];
            gpu().preprocess(&sp, &views(&stored), &mut got).unwrap();
            assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= 1e-4, "{wname} index {i}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn gpu_matches_cpu_mixed_batches_and_buffer_reuse() {
        // Mixed kinds and sizes in one dispatch; then a larger and a smaller
        // batch through the same (growing / reused) buffers.
        let mixed = vec![
            ct(64, 64, 1),
            rgb8(17, 90, 2),
            xray_mono1(200, 120, 3),
            ct_signed(5, 3, 4),
            OwnedSlice::mono(1, 1, vec![42.0]),
            rgb8(128, 128, 5),
        ];
        for ch in [1, 3] {
            for (wname, win) in windows() {
                compare(
                    &format!("mixed C={ch} {wname}"),
                    &spec(ch, 48, 56, win),
                    &mixed,
                );
            }
        }
        let big: Vec<_> = (0..12)
            .map(|i| {
                if i % 3 == 0 {
                    rgb8(150 + i, 170, i as u64)
                } else {
                    ct(256, 200 + i, i as u64)
                }
            })
            .collect();
        compare("big batch", &spec(3, 96, 80, None), &big);
        compare("small after big", &spec(1, 8, 8, None), &mixed[3..5]);
        compare("single", &spec(1, 64, 64, None), &mixed[..1]);
        // native size with more pixels than 12-bit values (the CPU path's table)
        compare("native 12-bit", &spec(1, 200, 120, None), &mixed[2..3]);
        // Empty batch is a no-op.
        let mut out = [];
        gpu()
            .preprocess(&spec(1, 8, 8, None), &[], &mut out)
            .unwrap();
    }

    /// Windows stacked as channels (brain, subdural, bone; one of them a step) and per modality, in
    /// one batch with MR, CT, MONOCHROME1 and colour slices: the WGSL path equals the CPU reference.
    #[test]
    fn gpu_matches_cpu_stacked_and_per_modality_windows() {
        use super::super::ManifestWindows;
        let w = |center, width| Window { center, width };
        let stacked = vec![w(40.0, 80.0), w(80.0, 200.0), w(600.0, 2800.0)];
        let with_step = vec![w(40.0, 80.0), w(100.3, 1.0), w(600.0, 2800.0)];
        let ct_only = ManifestWindows {
            default: Vec::new(),
            by_modality: [("CT".to_string(), stacked.clone())].into(),
        };
        let mr_single = ManifestWindows {
            default: stacked.clone(),
            by_modality: [("MR".to_string(), vec![w(300.0, 600.0)])].into(),
        };
        let batch = vec![
            OwnedSlice {
                modality: Some("CT"),
                ..ct(64, 48, 1)
            },
            OwnedSlice {
                modality: Some("MR"),
                ..ct_signed(33, 45, 2)
            },
            OwnedSlice {
                modality: Some("CR"),
                ..xray_mono1(40, 70, 3)
            },
            OwnedSlice {
                modality: Some("CT"),
                ..rgb8(20, 30, 4)
            },
            ct(17, 90, 5),
        ];
        for (what, windows) in [
            ("stacked", ManifestWindows::stacked(stacked)),
            ("stacked with a step", ManifestWindows::stacked(with_step)),
            ("CT only", ct_only),
            ("default stacked, MR single", mr_single),
        ] {
            let spec = PreprocessSpec {
                window: Some(windows),
                ..spec(3, 40, 36, None)
            };
            let worst = compare(what, &spec, &batch);
            println!("{what}: max |gpu - cpu| = {worst:e}");
        }
    }

    #[test]
    fn gpu_reports_invalid_input_and_limits() {
        let mut g = gpu();
        let s = [OwnedSlice {
            pixels: wide(vec![0.0; 5]),
            ..OwnedSlice::mono(2, 2, vec![])
        }];
        let mut out = vec![0.0; 16];
        assert!(matches!(
            g.preprocess(&spec(1, 4, 4, None), &views(&s), &mut out),
            Err(PreprocessError::InvalidSlice { index: 0, .. })
        ));
        let bad_spec = PreprocessSpec {
            std: vec![0.0],
            ..spec(1, 4, 4, None)
        };
        assert!(matches!(
            g.preprocess(&bad_spec, &views(&s), &mut out),
            Err(PreprocessError::InvalidSpec { .. })
        ));
        let ok = [ct(64, 64, 1)];
        assert!(matches!(
            g.preprocess(&spec(1, 4, 4, None), &views(&ok), &mut out[..15]),
            Err(PreprocessError::OutputSize {
                expected: 16,
                got: 15
            })
        ));
        // Input 64*64*2 = 8 KiB of stored samples over a pretend 4 KiB binding limit.
        let real = g.max_batch_buffer_bytes();
        g.set_max_binding_for_test(4 << 10);
        let r = g.preprocess(&spec(1, 4, 4, None), &views(&ok), &mut out);
        g.set_max_binding_for_test(real);
        match r {
            Err(e @ PreprocessError::BatchTooLarge { .. }) => println!("as expected: {e}"),
            other => panic!("expected BatchTooLarge, got {other:?}"),
        }
        // Exactly the stored bytes fit an 8 KiB limit: 2 bytes a pixel are uploaded, not 4.
        g.set_max_binding_for_test(8 << 10);
        let r = g.preprocess(&spec(1, 4, 4, None), &views(&ok), &mut out);
        g.set_max_binding_for_test(real);
        r.expect("64x64 stored 16-bit samples are 8 KiB");
        // Still usable afterwards.
        g.preprocess(&spec(1, 4, 4, None), &views(&ok), &mut out)
            .unwrap();
    }
    /// 2.5D stacks (k = 1, 2, 3) of mixed views, two model slices per dispatch, with the file/min-max
    /// rule and with a step manifest window: the WGSL path equals the CPU reference.
    #[test]
    fn gpu_matches_cpu_context_stacks() {
        let views = |seed: u64| {
            vec![
                ct(64, 48, seed),
                ct_signed(33, 45, seed + 1),
                xray_mono1(40, 70, seed + 2),
                OwnedSlice {
                    file_windows: Vec::new(),
                    ..ct(17, 90, seed + 3)
                },
                OwnedSlice::mono(1, 1, vec![42.0]),
                ct(50, 50, seed + 4),
                xray_mono1(20, 20, seed + 5),
            ]
        };
        for k in 1..=super::super::MAX_CONTEXT {
            let stack = 2 * k as usize + 1;
            let mut owned = views(u64::from(k))[..stack].to_vec();
            owned.extend(views(100 + u64::from(k))[7 - stack..].to_vec());
            for (what, window) in [
                ("file/min-max", None),
                (
                    "step",
                    Some(Window {
                        center: 100.3,
                        width: 1.0,
                    }),
                ),
            ] {
                let spec = context_spec(k, 40, 36, window);
                let v = super::super::test_util::views(&owned);
                let n = spec.output_len(2);
                let mut cpu = vec![f32::NAN; n];
                let mut on_gpu = vec![f32::NAN; n];
                CpuPreprocessor.preprocess(&spec, &v, &mut cpu).unwrap();
                gpu().preprocess(&spec, &v, &mut on_gpu).unwrap();
                let worst = cpu
                    .iter()
                    .zip(&on_gpu)
                    .map(|(c, g)| {
                        assert!(c.is_finite() && g.is_finite(), "k={k} {what}");
                        (c - g).abs()
                    })
                    .fold(0.0f32, f32::max);
                assert!(worst <= 1e-4, "k={k} {what}: max |gpu - cpu| = {worst}");
            }
        }
    }
}
