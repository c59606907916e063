//! Per-stage throughput on the bundled sample study (real CT-derived slices): decode, preprocessing on
//! the CPU reference vs the WGSL path side by side, scoring, and the whole stream over loopback.
//! `cargo bench --bench pipeline`; compare the cpu/gpu lines of one run, not numbers across machines.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use radstream::{
    client::{self, Source},
    config::{Config, PreprocessBackend},
    decode::{decode_instance, DecodedInstance, Limits},
    inference::{self, ModelSession},
    model::ModelPackage,
    preprocess::{CpuPreprocessor, GpuPreprocessor, Preprocessor, SliceView},
    server,
};

fn sample() -> Vec<Vec<u8>> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lesion-demo/sample-study");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("sample study")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect()
}

fn views(decoded: &[DecodedInstance]) -> Vec<SliceView<'_>> {
    decoded
        .iter()
        .flat_map(|d| (0..d.frames.len()).filter_map(move |i| SliceView::of(d, i)))
        .collect()
}

fn stages(c: &mut Criterion) {
    let files = sample();
    let limits = Limits::default();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(files.len() as u64));
    g.bench_function("sample_study", |b| {
        b.iter(|| {
            for f in &files {
                black_box(decode_instance(black_box(f), &limits).expect("decode"));
            }
        })
    });
    g.finish();

    let decoded: Vec<DecodedInstance> = files
        .iter()
        .map(|f| decode_instance(f, &limits).expect("decode"))
        .collect();
    let package = ModelPackage::embedded_default().expect("model");
    let spec = package.manifest.preprocess_spec();
    let per = (spec.channels * spec.height * spec.width) as usize;
    let views = views(&decoded);
    let mut out = vec![0.0f32; views.len() * per];
    let mut g = c.benchmark_group("preprocess");
    g.throughput(Throughput::Elements(views.len() as u64));
    let mut cpu = CpuPreprocessor;
    g.bench_function(BenchmarkId::new("cpu", views.len()), |b| {
        b.iter(|| {
            cpu.preprocess(&spec, black_box(&views), &mut out)
                .expect("cpu")
        })
    });
    match GpuPreprocessor::new() {
        Ok(mut gpu) => {
            g.bench_function(BenchmarkId::new("gpu", views.len()), |b| {
                b.iter(|| {
                    gpu.preprocess(&spec, black_box(&views), &mut out)
                        .expect("gpu")
                })
            });
        }
        Err(e) => eprintln!("no wgpu adapter, GPU preprocessing not measured: {e}"),
    }
    g.finish();

    let env = inference::runtime(&Config::default().ort_library_path())
        .expect("ONNX Runtime (scripts/setup.sh)");
    let mut session = ModelSession::load(env, &package, &Default::default()).expect("session");
    let mut g = c.benchmark_group("score");
    for n in [1usize, 4, 16] {
        let input = vec![0.1f32; n * per];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("batch", n), |b| {
            b.iter(|| session.run(black_box(&input), n).expect("run"))
        });
    }
    g.finish();
}

fn end_to_end(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let files = sample();
    let mut g = c.benchmark_group("analyze_stream");
    g.sample_size(10);
    g.throughput(Throughput::Elements(files.len() as u64));
    for backend in [PreprocessBackend::Cpu, PreprocessBackend::Auto] {
        let config = Config {
            listen: ([127, 0, 0, 1], 0).into(),
            preprocess: backend,
            ..Config::default()
        };
        let server = runtime.block_on(server::start(config)).expect("server");
        let endpoint = server.endpoint();
        g.bench_function(format!("sample_study/{backend:?}").to_lowercase(), |b| {
            b.iter(|| {
                let items = files
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (i.to_string(), f.clone()))
                    .collect();
                runtime
                    .block_on(client::push(
                        &endpoint,
                        Source::Memory(items),
                        64 << 20,
                        |_| {},
                    ))
                    .expect("push")
            })
        });
        runtime.block_on(server.stop()).expect("stop");
    }
    g.finish();
}

criterion_group!(benches, stages, end_to_end);
criterion_main!(benches);
