//! A client command whose reader goes away (`radstream push --json | head -1`) ends quietly (exit 0), as
//! Unix tools do, instead of panicking in the middle of its output.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

const BIN: &str = env!("CARGO_BIN_EXE_radstream");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_into_a_closed_pipe_ends_quietly() {
    let server = common::start(common::test_config()).await;
    let endpoint = server.endpoint();
    let status = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(["push", "--json", "--endpoint", &endpoint])
            .arg(common::sample_study_dir())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run radstream push");
        // read one line, then close the pipe as `head -1` does
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("a first line");
        assert!(first.starts_with('{'), "{first}");
        let out = child.wait_with_output().expect("push ends");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("push task");
    let (status, stderr) = status;
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        status.success(),
        "ended quietly, not by a panic: {status:?} {stderr}"
    );
    server.stop().await.expect("stop");
}
