//! What a stream may cost the server: decodes bounded by the slot count even when clients vanish,
//! one `client_ref` per instance however many frames it has, and peak memory that stays flat as streams
//! grow (the real binary, its peak RSS read from `/proc`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use radstream::{config::PreprocessBackend, ingest::probe, proto::v1::analyze_response::Event};

const WAIT: Duration = Duration::from_secs(120);

/// The in-process tests read process-wide counters: one at a time.
static IN_PROCESS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cpu_config() -> radstream::config::Config {
    let mut config = test_config();
    config.preprocess = PreprocessBackend::Cpu;
    config
}

/// Polls `pred` every few milliseconds until it holds, failing after `WAIT`.
async fn wait_for(what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A long stream keeps no finished instance task: each is reaped as it ends, not when the stream does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_instance_tasks_are_reaped_while_the_stream_stays_open() {
    let _one_at_a_time = IN_PROCESS.lock().await;
    let server = start(cpu_config()).await;
    let study = sample_study();
    let mut stream = Stream::open(&server).await;
    let rounds = 3;
    for round in 0..rounds {
        for (name, bytes) in &study {
            stream.send(instance(name, bytes.clone())).await;
        }
        // every slice of the round answered
        let mut findings = 0;
        while findings < study.len() {
            match stream.next(WAIT).await {
                Some(Event::Finding(_)) => findings += 1,
                Some(_) => {}
                None => panic!("the stream ended in round {round}"),
            }
        }
    }
    // 36 instances were handled on a stream still open: their tasks must not all still be held
    let deadline = Instant::now() + Duration::from_secs(20);
    while probe::tasks_held() > 1 {
        assert!(
            Instant::now() < deadline,
            "{} finished instance tasks still held on an open stream",
            probe::tasks_held()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stream.close();
    stream.drain().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_vanish_mid_decode_never_run_more_decodes_than_there_are_slots() {
    let _one_at_a_time = IN_PROCESS.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("costly.dcm");
    // 64 frames of 512 x 512: a decode long enough for the next client to arrive while it runs.
    write_multi_frame(&path, 64, 512, 512);
    let costly = read(&path);
    let mut config = cpu_config();
    // Room for every client's decode at once: only the decode slots may hold them back here.
    config.limits.max_decoded_bytes_in_flight = 1 << 30;
    config.limits.max_request_bytes_in_flight = 1 << 30;
    let server = start(config).await;
    let slots = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let clients = slots * 3;
    wait_for("no decode running", || probe::decodes_running() == 0).await;
    probe::reset_peaks();
    let started_before = probe::decodes_started();
    for i in 0..clients {
        let stream = Stream::open(&server).await;
        // each client its own instance: the same one again would be a duplicate, never decoded
        let own = replace_uid(
            &costly,
            MULTI_FRAME_SOP,
            &format!("1.2.826.0.1.3680043.10.543.9.{}", 100 + i),
        );
        stream.send(instance("costly.dcm", own)).await;
        // Once its decode runs, the client disappears without closing its stream.
        wait_for("the client's decode to start", || {
            probe::decodes_started() > started_before + i
        })
        .await;
        drop(stream);
    }
    wait_for("every decode to end", || probe::decodes_running() == 0).await;
    let peak = probe::decodes_peak();
    assert!(
        peak <= slots,
        "{peak} decodes ran at once with {slots} decode slots: vanished clients' decodes escaped the limit"
    );
    assert_eq!(probe::decodes_started() - started_before, clients);

    // The server still serves.
    let study = sample_study();
    let mut stream = Stream::open(&server).await;
    stream.send(instance(&study[0].0, study[0].1.clone())).await;
    stream.close();
    assert_eq!(findings(&stream.drain().await).len(), 1);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frames_of_one_instance_share_one_client_ref() {
    let _one_at_a_time = IN_PROCESS.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("frames.dcm");
    const FRAMES: usize = 4096;
    write_multi_frame(&path, FRAMES, 8, 8);
    let server = start(cpu_config()).await;
    let client_ref = "r".repeat(256); // the default limit, allowed
    wait_for("no client_ref held", || probe::client_refs_live() == 0).await;
    probe::reset_peaks();
    let mut stream = Stream::open(&server).await;
    stream.send(instance(&client_ref, read(&path))).await;
    stream.close();
    let events = stream.drain().await;

    let found = findings(&events);
    assert_eq!(found.len(), FRAMES, "one finding per frame");
    assert!(found.iter().all(|f| f.client_ref == client_ref));
    assert!(matches!(events.last(), Some(Event::Summary(_))));
    assert_eq!(
        probe::client_refs_peak(),
        1,
        "the session held more than one copy of the client_ref of a {FRAMES}-frame instance"
    );
    server.stop().await.expect("stop");
}

/// `n` slices of one series written into `dir` (see `write_series`), as (file name, bytes).
fn named_series(dir: &std::path::Path, n: usize) -> Vec<(String, Vec<u8>)> {
    write_series(dir, n)
        .iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                read(p),
            )
        })
        .collect()
}

/// Pushes `series` on `streams` concurrent streams (one connection each) to `endpoint`, stream `k` as
/// study `3680043.8.<study_base + k>.`; returns the findings per stream.
async fn push_concurrently(
    endpoint: &str,
    series: &[(String, Vec<u8>)],
    streams: usize,
    study_base: usize,
) -> Vec<usize> {
    let mut pushes = tokio::task::JoinSet::new();
    for k in 0..streams {
        let endpoint = endpoint.to_string();
        // each stream its own study: the same instances again would be duplicates, not work
        let series: Vec<(String, Vec<u8>)> = series
            .iter()
            .map(|(name, bytes)| {
                let study = format!("3680043.8.{}.", study_base + k);
                (name.clone(), replace_uid(bytes, "3680043.8.498.", &study))
            })
            .collect();
        pushes.spawn(async move {
            let mut stream = Stream::try_open_at(endpoint).await.expect("open stream");
            let tx = stream.tx.take().expect("sender");
            let sender = tokio::spawn(async move {
                for (name, bytes) in series {
                    tx.send(instance(&name, bytes)).await.expect("send");
                }
            });
            let events = stream.drain().await;
            sender.await.expect("sender task");
            assert_eq!(summaries(&events).len(), 1, "one study, summarised");
            findings(&events).len()
        });
    }
    let mut found = Vec::new();
    while let Some(n) = pushes.join_next().await {
        found.push(n.expect("push task"));
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_memory_with_32_concurrent_streams_stays_within_1_5x_of_one_stream() {
    const SLICES: usize = 32;
    const STREAMS: usize = 32;
    let dir = tempfile::tempdir().expect("tempdir");
    let series = named_series(dir.path(), SLICES);
    let env = [("RADSTREAM_PREPROCESS", "cpu")];

    let one = ServedProcess::start(&env);
    let started = Instant::now();
    let found = push_concurrently(&one.endpoint(), &series, 1, 500).await;
    let one_secs = started.elapsed().as_secs_f64();
    assert_eq!(found, vec![SLICES]);
    let one_hwm = one.status_field("VmHWM");
    drop(one);

    let many = ServedProcess::start(&env);
    let started = Instant::now();
    let found = push_concurrently(&many.endpoint(), &series, STREAMS, 500).await;
    let many_secs = started.elapsed().as_secs_f64();
    assert_eq!(
        found,
        vec![SLICES; STREAMS],
        "every slice of every stream answered"
    );
    let many_hwm = many.status_field("VmHWM");
    drop(many);

    // The issue's target. What a stream keeps of its own beyond the shared budgets: the message it is
    // receiving (the instance's bytes are taken out of tonic's receive buffer without a copy, so that
    // buffer is the message) and up to the HTTP/2 stream window. Measured (debug binary, 2 shared
    // cores): 1 stream 63-64 MiB, 32 streams 89-91 MiB, ratio 1.40-1.42; with stored-sample frames
    // and the malloc tuning 1.11-1.17 at a 64 KiB stream window, 1.24 at 256 KiB (90 -> 111 MiB).
    // Before the budgets, each stream held up to 32 instances raw and decoded (~48 MB): 32 streams of
    // a long series took 8.5x one stream; with the budgets but a copied message and glibc's default
    // malloc, 1.46-1.75x.
    let ratio = many_hwm as f64 / one_hwm as f64;
    // Reported, not asserted (no wall-clock assertions): the issue also asks for throughput not lower.
    eprintln!(
        "peak RSS: 1 stream {} MiB ({SLICES} slices in {one_secs:.2} s, {:.1} slices/s), {STREAMS} \
         streams {} MiB ({} slices in {many_secs:.2} s, {:.1} slices/s): ratio {ratio:.2}",
        one_hwm / 1024,
        SLICES as f64 / one_secs,
        many_hwm / 1024,
        SLICES * STREAMS,
        (SLICES * STREAMS) as f64 / many_secs
    );
    assert!(
        ratio <= 1.5,
        "peak RSS grew {ratio:.2}x from 1 to {STREAMS} streams ({one_hwm} KiB -> {many_hwm} KiB)"
    );
}

/// Minor page faults of a process so far (`/proc/PID/stat`, field 10).
fn minor_faults(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // the fields after the command name (which may hold spaces), from field 3 on
    let rest = stat.rsplit_once(')').expect("stat format").1;
    rest.split_whitespace()
        .nth(7)
        .and_then(|v| v.parse().ok())
        .expect("minflt in /proc/PID/stat")
}

/// A received instance's buffer (0.5 MiB for a 512² CT slice) is reused memory once the server has
/// warmed up, not pages faulted in afresh for every slice: with glibc's default trim threshold the
/// freed buffers went back to the kernel at once and each slice cost ~90 page faults (`tune_malloc`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_server_does_not_fault_in_fresh_memory_for_every_slice() {
    const SLICES: usize = 32;
    let dir = tempfile::tempdir().expect("tempdir");
    let series = named_series(dir.path(), SLICES);
    let server = ServedProcess::start(&[("RADSTREAM_PREPROCESS", "cpu")]);
    // Two rounds to warm up (heaps grown, thread caches filled), each a study (and instances) of its
    // own, then the measured one.
    let round = |r: usize| -> Vec<(String, Vec<u8>)> {
        series
            .iter()
            .map(|(n, b)| {
                let sop = format!("3680043.10.543.{r}.");
                (n.clone(), replace_uid(b, "3680043.10.543.7.", &sop))
            })
            .collect()
    };
    for r in 0..2 {
        let pushed = push_concurrently(&server.endpoint(), &round(r), 1, 700 + r).await;
        assert_eq!(pushed, vec![SLICES]);
    }
    let before = minor_faults(server.pid());
    let pushed = push_concurrently(&server.endpoint(), &round(2), 1, 702).await;
    assert_eq!(pushed, vec![SLICES]);
    let per_slice = (minor_faults(server.pid()) - before) as f64 / SLICES as f64;
    eprintln!("minor page faults per slice, warm: {per_slice:.1}");
    // 128 pages would be one fresh 0.5 MiB buffer; measured (debug binary) about 2-6 with the tuning.
    assert!(
        per_slice < 32.0,
        "{per_slice:.1} page faults per slice: received buffers are not reused"
    );
}
