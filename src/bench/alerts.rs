//! Early-warning latency: from the arrival of the decisive slice at the service to its critical
//! finding reaching a viewer. A viewer subscribes to `Studies.Watch` (critical findings only, live);
//! `pushers` concurrent `Analyze` streams each push `studies` copies of the bundled sample study (each
//! copy relabelled into a study of its own, so every copy raises its own alerts). Each alert carries the
//! time its decisive slice was received (`slice_received_unix_us`, the server's clock); the viewer
//! stamps its arrival on the same machine's clock. The difference covers decode, queueing, batching,
//! preprocessing, scoring, the registry, the log's commit and the delivery to the subscriber.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_stream::StreamExt;

use crate::{
    client::{self, Source},
    config::Config,
    demo::SAMPLE_STUDY,
    error::{Error, Result},
    proto::v1::{self as pb, studies_client::StudiesClient},
    server,
};

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct AlertBench {
    /// Concurrent pushing streams.
    pub pushers: usize,
    /// Studies each stream pushes, one after the other.
    pub studies: usize,
}

/// Latencies of the alerts seen, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertLatency {
    pub pushers: usize,
    pub studies: usize,
    pub alerts: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Wall time of the pushes.
    pub push_secs: f64,
}

impl std::fmt::Display for AlertLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>3} pushers x {:>2} studies: {:>4} alerts  p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms  ({:.1} s of pushing)",
            self.pushers, self.studies, self.alerts, self.p50_ms, self.p99_ms, self.max_ms, self.push_secs
        )
    }
}

fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The sample study relabelled into study number `n` (< 1000): every UID of the sample shares the
/// root `1.2.826.0.1.3680043.8.498.`, replaced by a root of the same length, so the files stay valid.
pub fn relabelled_sample(n: usize) -> Vec<(String, Vec<u8>)> {
    let from = b"3680043.8.498.";
    let to = format!("3680043.9.{:03}.", n % 1000);
    SAMPLE_STUDY
        .iter()
        .map(|(name, bytes)| {
            let mut b = bytes.to_vec();
            let mut i = 0;
            while i + from.len() <= b.len() {
                if &b[i..i + from.len()] == from {
                    b[i..i + from.len()].copy_from_slice(to.as_bytes());
                    i += from.len();
                } else {
                    i += 1;
                }
            }
            (format!("{n:03}-{name}"), b)
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs one measurement against a server started in-process with `config`.
pub async fn run(config: Config, bench: AlertBench) -> Result<AlertLatency> {
    let max_message = config.max_message_bytes();
    let server = server::start(config).await?;
    let result = measure(&server.endpoint(), max_message, bench).await;
    server.stop().await?;
    result
}

/// Runs one measurement against the service at `endpoint` (its log must not already hold the
/// relabelled studies, or their instances are duplicates and raise no new alert).
pub async fn measure(
    endpoint: &str,
    max_message: usize,
    bench: AlertBench,
) -> Result<AlertLatency> {
    let connect = |e: String| Error::Connect {
        endpoint: endpoint.to_string(),
        detail: e,
    };
    let mut studies = StudiesClient::connect(endpoint.to_string())
        .await
        .map_err(|e| connect(e.to_string()))?;
    let mut watch = studies
        .watch(pb::WatchRequest {
            only_critical: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    // live from here on
    match watch.next().await {
        Some(Ok(pb::WatchEvent {
            kind: Some(pb::watch_event::Kind::CaughtUp(_)),
        })) => {}
        Some(Err(status)) => return Err(status.into()),
        _ => return Err(connect("the Watch stream did not start".into())),
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
    let viewer = tokio::spawn(async move {
        while let Some(Ok(event)) = watch.next().await {
            let now = unix_us();
            if let Some(pb::watch_event::Kind::Event(e)) = event.kind {
                if let Some(pb::study_event::Event::Critical(c)) = e.event {
                    let _ = tx.send((now - c.slice_received_unix_us) as f64 / 1e3);
                }
            }
        }
    });
    let started = std::time::Instant::now();
    let mut pushes = tokio::task::JoinSet::new();
    for p in 0..bench.pushers {
        let endpoint = endpoint.to_string();
        pushes.spawn(async move {
            let mut alerts = 0usize;
            for s in 0..bench.studies {
                let study = relabelled_sample(p * bench.studies + s);
                let report =
                    client::push(&endpoint, Source::Memory(study), max_message, |_| {}).await?;
                alerts += report.critical.len();
            }
            Ok::<usize, Error>(alerts)
        });
    }
    let mut expected = 0;
    while let Some(done) = pushes.join_next().await {
        expected += done.map_err(|e| Error::ServerTask(e.to_string()))??;
    }
    let push_secs = started.elapsed().as_secs_f64();
    let mut latencies = Vec::with_capacity(expected);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while latencies.len() < expected {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ms)) => latencies.push(ms),
            _ => break,
        }
    }
    viewer.abort();
    latencies.sort_by(f64::total_cmp);
    Ok(AlertLatency {
        pushers: bench.pushers,
        studies: bench.studies,
        alerts: latencies.len(),
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        push_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relabelled_copies_are_distinct_studies_of_the_same_size() {
        let a = relabelled_sample(1);
        let b = relabelled_sample(2);
        assert_eq!(a.len(), SAMPLE_STUDY.len());
        for ((_, x), ((_, y), (_, orig))) in a.iter().zip(b.iter().zip(SAMPLE_STUDY.iter())) {
            assert_eq!(x.len(), orig.len());
            assert_ne!(x, y);
            let meta_x = crate::decode::read_header(x, &Default::default(), None)
                .expect("valid")
                .meta()
                .clone();
            let meta_y = crate::decode::read_header(y, &Default::default(), None)
                .expect("valid")
                .meta()
                .clone();
            assert_ne!(meta_x.study_instance_uid, meta_y.study_instance_uid);
            assert_ne!(meta_x.sop_instance_uid, meta_y.sop_instance_uid);
        }
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }
}
