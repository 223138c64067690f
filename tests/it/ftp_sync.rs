//! The ftp-sync pipeline, run as the actord binary against real FTP servers (pyftpdlib on
//! loopback ports), an S3-compatible server and Kafka brokers. Results are read from the
//! servers' directories and the DLQ topics.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde_json::{json, Value};

use crate::kafka::{end_offsets, read_until};
use crate::recorder::{bootstrap_of, produce};
use crate::support::{get, until, wait_ready, FtpServer, Process, S3Server, SshServer, Tansu};

fn config(extra: &str) -> String {
    format!(
        r#"[runtime]
enable = ["ftp-sync"]
cool_down = "1s"
[supervision]
backoff_initial = "100ms"
backoff_max = "2s"
max_restarts = 20
[pipelines.ftp-sync]
topics = ["mem-dft-img", "fdry-dft-img"]
concurrency = 4
retry_backoff = "200ms"
retry_backoff_max = "1s"
{extra}
"#
    )
}

/// Bytes that ASCII mode or a truncation would damage: every byte value, CR LF pairs.
pub(crate) fn content(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| match i % 7 {
            0 => b'\r',
            1 => b'\n',
            _ => (i as u8).wrapping_mul(31).wrapping_add(seed),
        })
        .collect()
}

pub(crate) fn job(id: &str, src: (&str, &str), dst: (&str, &str)) -> String {
    json!({
        "job_id": id,
        "source": {"hostname": src.0, "path": src.1},
        "destination": {"hostname": dst.0, "path": dst.1},
    })
    .to_string()
}

/// Waits until `/metrics` of `p` shows `series` (a whole line prefix with its value).
async fn until_series(p: &Process, series: &str, within: Duration, what: &str) {
    until(within, what, || async {
        get(&p.base, "/metrics").await.1.contains(series)
    })
    .await;
}

/// A server's variables with a password the server refuses.
fn with_wrong_password(env: Vec<(String, String)>) -> Vec<(String, String)> {
    env.into_iter()
        .map(|(k, v)| {
            if k.ends_with("_PASS") {
                (k, "not-the-password".into())
            } else {
                (k, v)
            }
        })
        .collect()
}

pub(crate) fn env_refs(owned: &[(String, String)]) -> Vec<(&str, &str)> {
    owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel.trim_start_matches('/'));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn read(root: &Path, rel: &str) -> Option<Vec<u8>> {
    std::fs::read(root.join(rel.trim_start_matches('/'))).ok()
}

/// Every file under `root`, relative.
pub(crate) fn files(root: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, base: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                walk(&p, base, out);
            } else {
                out.insert(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// The sum of the series of `name` carrying every label in `labels` (`key="value"`).
fn metric(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn files_of_several_sizes_are_copied_byte_exact_between_ftp_servers() {
    let src = FtpServer::start(true);
    let dst = FtpServer::start(true);
    let sizes = [0usize, 1, 4096, 100_000, 3 << 20];
    for (i, size) in sizes.iter().enumerate() {
        write(
            &src.root(),
            &format!("in/file-{i}.bin"),
            &content(*size, i as u8),
        );
    }
    let mut env = src.env("SRC_FTP_SERVER1");
    env.extend(dst.env("DST_FTP_SERVER1"));
    env.push(("ACTORD_FTP_SYNC_VERIFY".into(), "sha256".into()));
    let p = Process::start(&config(""), &[], &env_refs(&env));
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    let jobs: Vec<String> = (0..sizes.len())
        .map(|i| {
            job(
                &format!("job-{i}"),
                ("SRC_FTP_SERVER1", &format!("/in/file-{i}.bin")),
                ("DST_FTP_SERVER1", &format!("/out/{i}/deep/er/file-{i}.bin")),
            )
        })
        .collect();
    produce(&bootstrap, "mem-dft-img", jobs).await;
    until(
        Duration::from_secs(60),
        "every file at the destination",
        || async {
            (0..sizes.len())
                .all(|i| read(&dst.root(), &format!("out/{i}/deep/er/file-{i}.bin")).is_some())
        },
    )
    .await;
    for (i, size) in sizes.iter().enumerate() {
        let got = read(&dst.root(), &format!("out/{i}/deep/er/file-{i}.bin")).unwrap();
        assert_eq!(got.len(), *size, "file {i}");
        assert!(got == content(*size, i as u8), "file {i} differs");
    }
    // No staging files are left behind.
    let left: Vec<String> = files(&dst.root())
        .into_iter()
        .filter(|f| f.contains(".part"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let metrics = get(&p.base, "/metrics").await.1;
    assert_eq!(
        metric(
            &metrics,
            "actord_ftp_jobs_total",
            &["outcome=\"done\"", "topic=\"mem-dft-img\""]
        ),
        sizes.len() as f64,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "actord_ftp_bytes_total",
            &["topic=\"mem-dft-img\""]
        ),
        sizes.iter().sum::<usize>() as f64
    );
    assert!(
        metrics.contains("actord_ftp_transfer_duration_seconds_bucket"),
        "{metrics}"
    );
    assert_eq!(
        end_offsets(&bootstrap, "mem-dft-img-dlq", 1)
            .values()
            .sum::<i64>(),
        0
    );
    let health = get(&p.base, "/health/ftp-sync").await.1;
    assert_eq!(health, "OK\nconsumer: healthy\nservers: healthy\n");
    let log = p.log();
    assert!(!log.contains(&src.pass), "a password reached the log");
}

#[tokio::test]
async fn each_permanent_failure_lands_in_the_dlq_in_the_seed_schema() {
    let src = FtpServer::start(true);
    let dst = FtpServer::start(true);
    let read_only = FtpServer::start(false);
    write(&src.root(), "in/ok.bin", &content(1000, 1));
    write(&src.root(), "in/denied.bin", &content(10, 2));
    let mut env = src.env("SRC_FTP_SERVER1");
    env.extend(dst.env("DST_FTP_SERVER1"));
    env.push(("DST_FTP_SERVER1_ROOT".into(), "/allowed".into()));
    env.extend(read_only.env("RO_FTP_SERVER"));
    let p = Process::start(&config(""), &[], &env_refs(&env));
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    let cases: Vec<(&str, String)> = vec![
        ("InvalidJson", "{not json".to_owned()),
        (
            "MissingField",
            json!({"job_id": "m", "source": {"hostname": "SRC_FTP_SERVER1"}, "destination": {"hostname": "DST_FTP_SERVER1", "path": "/allowed/x"}}).to_string(),
        ),
        (
            "UnknownHostname",
            job("u", ("NOPE_SERVER", "/in/ok.bin"), ("DST_FTP_SERVER1", "/allowed/u.bin")),
        ),
        (
            "FileUnavailable",
            job("missing", ("SRC_FTP_SERVER1", "/in/missing.bin"), ("DST_FTP_SERVER1", "/allowed/m.bin")),
        ),
        (
            "PathOutsideRoot",
            job("escape", ("SRC_FTP_SERVER1", "/in/ok.bin"), ("DST_FTP_SERVER1", "/allowed/../etc/passwd")),
        ),
        (
            "FileUnavailable",
            job("denied", ("SRC_FTP_SERVER1", "/in/denied.bin"), ("RO_FTP_SERVER", "/denied.bin")),
        ),
    ];
    let mut payloads: Vec<String> = cases.iter().map(|(_, p)| p.clone()).collect();
    payloads.push(job(
        "good",
        ("SRC_FTP_SERVER1", "/in/ok.bin"),
        ("DST_FTP_SERVER1", "ok.bin"),
    ));
    produce(&bootstrap, "fdry-dft-img", payloads).await;
    let dlq = read_until(&bootstrap, "fdry-dft-img-dlq", |r| r.len() >= cases.len());
    assert_eq!(dlq.len(), cases.len(), "{dlq:?}");
    let mut classes: Vec<String> = dlq
        .iter()
        .map(|(v, _)| {
            v["error"]
                .as_str()
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    classes.sort();
    let mut expected: Vec<String> = cases.iter().map(|(c, _)| c.to_string()).collect();
    expected.sort();
    assert_eq!(classes, expected);
    for (value, _) in &dlq {
        let keys: BTreeSet<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["original_message", "error", "timestamp", "retry_count"]),
            "{value}"
        );
        let ts = value["timestamp"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'),
            "{ts}"
        );
        assert!(
            !value.to_string().contains(&src.pass),
            "a password reached the DLQ"
        );
    }
    let by_id = |id: &str| {
        dlq.iter()
            .find(|(v, _)| v["original_message"]["job_id"] == id)
            .unwrap_or_else(|| panic!("{id} not in the DLQ"))
            .0
            .clone()
    };
    // retry_count counts retries, as the seed's does: a job refused on its first attempt, or
    // refused by its shape before any attempt, was never retried.
    assert_eq!(by_id("missing")["retry_count"], 0);
    assert_eq!(by_id("denied")["retry_count"], 0);
    assert_eq!(by_id("escape")["retry_count"], 0);
    assert_eq!(
        by_id("missing")["original_message"],
        serde_json::from_str::<Value>(&cases[3].1).unwrap()
    );
    let bad = dlq
        .iter()
        .find(|(v, _)| v["error"].as_str().unwrap().starts_with("InvalidJson"))
        .unwrap();
    assert_eq!(bad.0["original_message"], "{not json");
    until(Duration::from_secs(30), "the good job", || async {
        read(&dst.root(), "allowed/ok.bin").is_some()
    })
    .await;
    assert!(read(&read_only.root(), "denied.bin").is_none());
    assert!(!p.log().contains(&src.pass), "a password reached the log");
}

#[tokio::test]
async fn a_destination_outage_is_waited_out_and_nothing_reaches_the_dlq() {
    let src = FtpServer::start(true);
    let mut dst = FtpServer::start(true);
    for i in 0..20 {
        write(
            &src.root(),
            &format!("in/{i}.bin"),
            &content(20_000 + i, i as u8),
        );
    }
    let mut env = src.env("SRC_FTP_SERVER1");
    env.extend(dst.env("DST_FTP_SERVER1"));
    let p = Process::start(
        &config("max_retries = 2\nbreaker_threshold = 2"),
        &[],
        &env_refs(&env),
    );
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    let jobs = |range: std::ops::Range<usize>| -> Vec<String> {
        range
            .map(|i| {
                job(
                    &format!("j{i}"),
                    ("SRC_FTP_SERVER1", &format!("/in/{i}.bin")),
                    ("DST_FTP_SERVER1", &format!("/out/{i}.bin")),
                )
            })
            .collect()
    };
    produce(&bootstrap, "mem-dft-img", jobs(0..5)).await;
    until(Duration::from_secs(30), "the first files", || async {
        (0..5).all(|i| read(&dst.root(), &format!("out/{i}.bin")).is_some())
    })
    .await;
    dst.stop();
    produce(&bootstrap, "mem-dft-img", jobs(5..20)).await;
    until(
        Duration::from_secs(30),
        "the open circuit on /health",
        || async {
            let (status, body) = get(&p.base, "/health").await;
            status == 503 && body.contains("ftp-sync.servers: unhealthy")
        },
    )
    .await;
    let health = get(&p.base, "/health").await.1;
    assert!(
        health.contains("server DST_FTP_SERVER1: ftp://actord@127.0.0.1"),
        "{health}"
    );
    assert!(health.contains("(circuit open)"), "{health}");
    let metrics = get(&p.base, "/metrics").await.1;
    assert!(
        metrics.contains("actord_ftp_circuit_open{server=\"DST_FTP_SERVER1\"} 1"),
        "{metrics}"
    );
    // Longer than max_retries attempts would take: an outage must not exhaust them.
    tokio::time::sleep(Duration::from_secs(6)).await;
    dst.resume();
    until(
        Duration::from_secs(90),
        "every file after the outage",
        || async { (0..20).all(|i| read(&dst.root(), &format!("out/{i}.bin")).is_some()) },
    )
    .await;
    for i in 0..20 {
        assert_eq!(
            read(&dst.root(), &format!("out/{i}.bin")).unwrap(),
            content(20_000 + i, i as u8)
        );
    }
    assert_eq!(
        end_offsets(&bootstrap, "mem-dft-img-dlq", 1)
            .values()
            .sum::<i64>(),
        0
    );
    until(Duration::from_secs(30), "healthy again", || async {
        get(&p.base, "/health").await.0 == 200
    })
    .await;
}

#[tokio::test]
async fn two_processes_in_one_group_split_the_work_and_lose_no_job() {
    let broker = Tansu::start();
    broker.create_topic("mem-dft-img", 3);
    broker.create_topic("mem-dft-img-dlq", 1);
    broker.create_topic("fdry-dft-img", 1);
    broker.create_topic("fdry-dft-img-dlq", 1);
    let src = FtpServer::start(true);
    let s3 = S3Server::start("images");
    let n = 60;
    for i in 0..n {
        write(
            &src.root(),
            &format!("in/{i}.bin"),
            &content(5_000 + i, i as u8),
        );
    }
    let mut env = src.env("SRC_FTP_SERVER1");
    env.push(("IMG_LAKE_TYPE".into(), "s3".into()));
    env.push(("IMG_LAKE_HOST".into(), "images".into()));
    env.push(("KAFKA_BROKERS".into(), broker.bootstrap().to_owned()));
    for (k, v) in s3.env() {
        if k.starts_with("AWS_") {
            env.push((k.to_owned(), v));
        }
    }
    let toml = config("");
    let a = Process::start(&toml, &[], &env_refs(&env));
    let b = Process::start(&toml, &[], &env_refs(&env));
    wait_ready(&a.base).await;
    wait_ready(&b.base).await;
    let jobs: Vec<String> = (0..n)
        .map(|i| {
            job(
                &format!("j{i}"),
                ("SRC_FTP_SERVER1", &format!("/in/{i}.bin")),
                ("IMG_LAKE", &format!("/img/{i}.bin")),
            )
        })
        .collect();
    // In waves, so the group's rebalance for the second member happens while jobs flow.
    for wave in jobs.chunks(5) {
        produce(broker.bootstrap(), "mem-dft-img", wave.to_vec()).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let store = s3.client();
    until(Duration::from_secs(120), "every object", || async {
        let mut all = true;
        for i in 0..n {
            let key = format!("img/{i}.bin");
            all &= object_store::ObjectStoreExt::head(store.as_ref(), &key.as_str().into())
                .await
                .is_ok();
        }
        all
    })
    .await;
    for i in 0..n {
        let key = format!("img/{i}.bin");
        let got = object_store::ObjectStoreExt::get(store.as_ref(), &key.as_str().into())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(
            got.as_ref() == content(5_000 + i, i as u8).as_slice(),
            "object {i}"
        );
    }
    let done = ["outcome=\"done\""];
    let done_a = metric(
        &get(&a.base, "/metrics").await.1,
        "actord_ftp_jobs_total",
        &done,
    );
    let done_b = metric(
        &get(&b.base, "/metrics").await.1,
        "actord_ftp_jobs_total",
        &done,
    );
    assert!(
        done_a > 0.0 && done_b > 0.0,
        "one process did all the work: {done_a} / {done_b}"
    );
    assert!(done_a + done_b >= n as f64);
    assert_eq!(
        end_offsets(broker.bootstrap(), "mem-dft-img-dlq", 1)
            .values()
            .sum::<i64>(),
        0
    );
}

#[tokio::test]
async fn ftps_moves_files_over_explicit_tls() {
    let src = FtpServer::start_tls();
    let dst = FtpServer::start(true);
    write(&src.root(), "secure/a.bin", &content(300_000, 9));
    let mut env = src.env("TLS_SRC");
    env.extend(dst.env("PLAIN_DST"));
    // The test server's certificate is self-signed.
    let extra = "[pipelines.ftp-sync.servers.TLS_SRC]\ninsecure_tls = true\n";
    let p = Process::start(&config(extra), &[], &env_refs(&env));
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    produce(
        &bootstrap,
        "mem-dft-img",
        vec![job(
            "tls",
            ("TLS_SRC", "/secure/a.bin"),
            ("PLAIN_DST", "/from-tls/a.bin"),
        )],
    )
    .await;
    until(Duration::from_secs(60), "the file over TLS", || async {
        read(&dst.root(), "from-tls/a.bin").is_some()
    })
    .await;
    assert!(read(&dst.root(), "from-tls/a.bin").unwrap() == content(300_000, 9));
    let health = get(&p.base, "/health").await.1;
    assert!(
        health.contains("server TLS_SRC: ftps://actord@127.0.0.1"),
        "{health}"
    );
}

#[tokio::test]
async fn sftp_moves_files_both_ways_with_a_pinned_host_key() {
    let ssh = SshServer::start();
    let ftp = FtpServer::start(true);
    write(&ssh.root(), "out/from-ssh.bin", &content(700_000, 3));
    write(&ftp.root(), "in/from-ftp.bin", &content(250_000, 4));
    let mut env = ssh.env("SSH_BOX");
    env.extend(ftp.env("FTP_BOX"));
    let p = Process::start(&config(""), &[], &env_refs(&env));
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    produce(
        &bootstrap,
        "mem-dft-img",
        vec![
            job(
                "s2f",
                ("SSH_BOX", "out/from-ssh.bin"),
                ("FTP_BOX", "/got/from-ssh.bin"),
            ),
            job(
                "f2s",
                ("FTP_BOX", "/in/from-ftp.bin"),
                ("SSH_BOX", "new/dir/from-ftp.bin"),
            ),
            job(
                "escape",
                ("FTP_BOX", "/in/from-ftp.bin"),
                ("SSH_BOX", "../../etc/x"),
            ),
        ],
    )
    .await;
    until(Duration::from_secs(60), "both files", || async {
        read(&ftp.root(), "got/from-ssh.bin").is_some()
            && read(&ssh.root(), "new/dir/from-ftp.bin").is_some()
    })
    .await;
    assert!(read(&ftp.root(), "got/from-ssh.bin").unwrap() == content(700_000, 3));
    assert!(read(&ssh.root(), "new/dir/from-ftp.bin").unwrap() == content(250_000, 4));
    let dlq = read_until(&bootstrap, "mem-dft-img-dlq", |r| !r.is_empty());
    assert_eq!(dlq.len(), 1);
    assert!(
        dlq[0].0["error"]
            .as_str()
            .unwrap()
            .starts_with("PathOutsideRoot"),
        "{:?}",
        dlq[0].0
    );
    let health = get(&p.base, "/health").await.1;
    assert!(health.contains("server SSH_BOX: sftp://"), "{health}");
}

/// Failures that come before the upload reads anything (a destination that is down, 550 on
/// STOR, a refused login) with files far larger than the pipe between download and upload:
/// each transfer ends with its failure instead of waiting forever for room in the pipe.
#[tokio::test]
async fn uploads_refused_before_reading_end_multi_mib_transfers() {
    let src = FtpServer::start(true);
    let mut dst = FtpServer::start(true);
    let read_only = FtpServer::start(false);
    let locked = FtpServer::start(true);
    let big = 4 << 20;
    for i in 0..4 {
        write(
            &src.root(),
            &format!("in/big-{i}.bin"),
            &content(big + i, i as u8),
        );
    }
    let mut env = src.env("SRC_FTP_SERVER1");
    env.extend(dst.env("DST_FTP_SERVER1"));
    env.extend(read_only.env("RO_FTP_SERVER"));
    env.extend(with_wrong_password(locked.env("LOCKED_FTP_SERVER")));
    let p = Process::start(
        &config("max_retries = 2\nbreaker_threshold = 2"),
        &[],
        &env_refs(&env),
    );
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    dst.stop();
    produce(
        &bootstrap,
        "mem-dft-img",
        vec![
            job(
                "denied",
                ("SRC_FTP_SERVER1", "/in/big-0.bin"),
                ("RO_FTP_SERVER", "/denied.bin"),
            ),
            job(
                "down-1",
                ("SRC_FTP_SERVER1", "/in/big-1.bin"),
                ("DST_FTP_SERVER1", "/out/1.bin"),
            ),
            job(
                "down-2",
                ("SRC_FTP_SERVER1", "/in/big-2.bin"),
                ("DST_FTP_SERVER1", "/out/2.bin"),
            ),
        ],
    )
    .await;
    // The refused connections come back as failures and open the circuit: nothing hangs.
    until_series(
        &p,
        "actord_ftp_circuit_open{server=\"DST_FTP_SERVER1\"} 1",
        Duration::from_secs(30),
        "the destination's open circuit",
    )
    .await;
    dst.resume();
    let dlq = read_until(&bootstrap, "mem-dft-img-dlq", |r| !r.is_empty());
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].0["original_message"]["job_id"], "denied");
    assert!(
        dlq[0].0["error"]
            .as_str()
            .unwrap()
            .starts_with("FileUnavailable"),
        "550 on STOR is the job's: {}",
        dlq[0].0
    );
    until(
        Duration::from_secs(60),
        "both files after the outage",
        || async { (1..3).all(|i| read(&dst.root(), &format!("out/{i}.bin")).is_some()) },
    )
    .await;
    for i in 1..3 {
        assert_eq!(
            read(&dst.root(), &format!("out/{i}.bin")).unwrap(),
            content(big + i, i as u8)
        );
    }
    // A refused login ends its transfer too: the server is marked misconfigured.
    produce(
        &bootstrap,
        "mem-dft-img",
        vec![job(
            "locked",
            ("SRC_FTP_SERVER1", "/in/big-3.bin"),
            ("LOCKED_FTP_SERVER", "/l.bin"),
        )],
    )
    .await;
    until_series(
        &p,
        "actord_ftp_server_misconfigured{server=\"LOCKED_FTP_SERVER\"} 1",
        Duration::from_secs(30),
        "the locked server marked misconfigured",
    )
    .await;
    assert!(read(&locked.root(), "l.bin").is_none());
    assert!(read(&read_only.root(), "denied.bin").is_none());
}

/// Three kinds of server at once: two healthy ones, one that refuses the login (misconfigured,
/// its jobs dead-lettered after `dead_letter_after`) and one stopped mid-run (its jobs wait).
/// The jobs between the healthy servers take about as long as they take alone, and nothing is
/// lost.
#[tokio::test]
async fn one_bad_server_never_holds_back_jobs_between_healthy_servers() {
    let src = FtpServer::start(true);
    let dst = FtpServer::start(true);
    let locked = FtpServer::start(true);
    let mut down = FtpServer::start(true);
    let size = 1 << 20;
    for i in 0..40 {
        write(
            &src.root(),
            &format!("in/{i}.bin"),
            &content(size + i, i as u8),
        );
    }
    let mut env = src.env("SRC_FTP_SERVER1");
    env.extend(dst.env("DST_FTP_SERVER1"));
    env.extend(down.env("DOWN_FTP_SERVER"));
    env.extend(with_wrong_password(locked.env("LOCKED_FTP_SERVER")));
    let toml = config(
        "max_retries = 2\nbreaker_threshold = 2\n\
         [pipelines.ftp-sync.servers.LOCKED_FTP_SERVER]\ndead_letter_after = \"3s\"\n",
    );
    let p = Process::start(&toml, &[], &env_refs(&env));
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    let to = |server: &str, dir: &str, range: std::ops::Range<usize>| -> Vec<String> {
        range
            .map(|i| {
                job(
                    &format!("{dir}-{i}"),
                    ("SRC_FTP_SERVER1", &format!("/in/{i}.bin")),
                    (server, &format!("/{dir}/{i}.bin")),
                )
            })
            .collect()
    };
    let landed = |root: std::path::PathBuf, dir: &'static str, range: std::ops::Range<usize>| {
        move || {
            range
                .clone()
                .all(|i| read(&root, &format!("{dir}/{i}.bin")).is_some())
        }
    };

    // The down server works at first.
    produce(
        &bootstrap,
        "mem-dft-img",
        to("DOWN_FTP_SERVER", "early", 0..2),
    )
    .await;
    let early = landed(down.root(), "early", 0..2);
    until(Duration::from_secs(30), "the early jobs", || async {
        early()
    })
    .await;

    // Healthy jobs alone, timed.
    let started = std::time::Instant::now();
    produce(
        &bootstrap,
        "mem-dft-img",
        to("DST_FTP_SERVER1", "alone", 0..12),
    )
    .await;
    let alone = landed(dst.root(), "alone", 0..12);
    until(
        Duration::from_secs(60),
        "the healthy jobs alone",
        || async { alone() },
    )
    .await;
    let t_alone = started.elapsed();

    // The same amount of healthy work behind and among jobs for the two bad servers.
    down.stop();
    let mut mixed = Vec::new();
    let (bad_locked, bad_down, good) = (
        to("LOCKED_FTP_SERVER", "locked", 12..18),
        to("DOWN_FTP_SERVER", "late", 18..24),
        to("DST_FTP_SERVER1", "mixed", 24..36),
    );
    for i in 0..6 {
        mixed.push(bad_locked[i].clone());
        mixed.push(bad_down[i].clone());
        mixed.push(good[2 * i].clone());
        mixed.push(good[2 * i + 1].clone());
    }
    let started = std::time::Instant::now();
    produce(&bootstrap, "mem-dft-img", mixed).await;
    let good_done = landed(dst.root(), "mixed", 24..36);
    until(
        Duration::from_secs(60),
        "the healthy jobs among bad ones",
        || async { good_done() },
    )
    .await;
    let t_mixed = started.elapsed();
    assert!(
        t_mixed.as_secs_f64() <= 1.5 * t_alone.as_secs_f64() + 1.0,
        "healthy jobs took {t_mixed:?} among bad ones, {t_alone:?} alone"
    );

    // The locked server is reported as misconfigured, its jobs dead-lettered after 3 s with the
    // login error; the down server's jobs wait, out of the DLQ.
    // pyftpdlib answers a wrong password after 3 s.
    until(
        Duration::from_secs(30),
        "the locked server reported",
        || async {
            let health = get(&p.base, "/health").await.1;
            health.contains("server LOCKED_FTP_SERVER: ftp://")
                && health.contains("misconfigured: LoginFailed")
        },
    )
    .await;
    let metrics = get(&p.base, "/metrics").await.1;
    assert!(
        metrics.contains("actord_ftp_server_misconfigured{server=\"LOCKED_FTP_SERVER\"} 1"),
        "{metrics}"
    );
    let dlq = read_until(&bootstrap, "mem-dft-img-dlq", |r| r.len() >= 6);
    assert_eq!(dlq.len(), 6, "{dlq:?}");
    for (letter, _) in &dlq {
        assert!(
            letter["original_message"]["job_id"]
                .as_str()
                .unwrap()
                .starts_with("locked-"),
            "{letter}"
        );
        let error = letter["error"].as_str().unwrap();
        assert!(
            error.starts_with("ServerUnavailable") && error.contains("LoginFailed"),
            "{error}"
        );
    }
    let tree = crate::support::tree(&p.base).await;
    let writer = crate::support::actor(&tree, "/ftp-sync/jobs/writer-0");
    assert!(
        writer["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("LOCKED_FTP_SERVER") && m.contains("LoginFailed")),
        "{writer}"
    );
    assert_eq!(
        writer["counters"]["parked"], 6,
        "the down server's jobs: {writer}"
    );

    down.resume();
    let late = landed(down.root(), "late", 18..24);
    until(
        Duration::from_secs(60),
        "the down server's jobs after it returns",
        || async { late() },
    )
    .await;
    for i in (0..12).chain(24..36) {
        let dir = if i < 12 { "alone" } else { "mixed" };
        assert_eq!(
            read(&dst.root(), &format!("{dir}/{i}.bin")).unwrap(),
            content(size + i, i as u8)
        );
    }
    assert_eq!(
        end_offsets(&bootstrap, "mem-dft-img-dlq", 1)
            .values()
            .sum::<i64>(),
        6,
        "only the locked server's jobs were dead-lettered"
    );
}

/// A transfer that lasts longer than `stuck_after` but moves bytes all along is not stuck: it
/// completes once, and the dispatcher is never restarted.
#[tokio::test]
async fn a_transfer_longer_than_stuck_after_completes_once() {
    let src = FtpServer::start(true);
    let dst = FtpServer::start(true);
    let size = 160 << 20;
    write(&src.root(), "in/big.bin", &content(size, 7));
    let mut env = src.env("SRC_FTP_SERVER1");
    env.extend(dst.env("DST_FTP_SERVER1"));
    // Hashing the stream and re-reading the destination makes the transfer last seconds.
    env.push(("ACTORD_FTP_SYNC_VERIFY".into(), "sha256".into()));
    let toml = config("[pipelines.ftp-sync.supervision]\nstuck_after = \"1s\"\n");
    let p = Process::start(&toml, &[], &env_refs(&env));
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    let started = std::time::Instant::now();
    produce(
        &bootstrap,
        "mem-dft-img",
        vec![job(
            "big",
            ("SRC_FTP_SERVER1", "/in/big.bin"),
            ("DST_FTP_SERVER1", "/out/big.bin"),
        )],
    )
    .await;
    until(Duration::from_secs(120), "the big file", || async {
        read(&dst.root(), "out/big.bin").is_some()
    })
    .await;
    let took = started.elapsed();
    assert!(
        took > Duration::from_secs(1),
        "the transfer must outlast stuck_after to test anything ({took:?})"
    );
    assert_eq!(read(&dst.root(), "out/big.bin").unwrap(), content(size, 7));
    let tree = crate::support::tree(&p.base).await;
    let writer = crate::support::actor(&tree, "/ftp-sync/jobs/writer-0");
    assert_eq!(writer["restarts"], 0, "{writer}");
    let log = p.log();
    assert_eq!(
        log.matches("transferred").count(),
        1,
        "transferred once: {log}"
    );
    assert!(!log.contains("actor stuck"), "{log}");
}

/// A server that accepts connections and never says a word: with a 1 s step timeout, a
/// transfer to it ends in a timeout, the server's circuit opens and /health says so, instead of
/// the transfer waiting forever for a banner.
#[tokio::test]
async fn a_silent_server_times_out_instead_of_hanging() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    // Accepts and holds every connection, answering nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn);
        }
    });
    let src = FtpServer::start(true);
    write(&src.root(), "in/x.bin", &content(1 << 20, 3));
    let mut env = src.env("SRC_FTP_SERVER1");
    env.extend([
        ("SILENT_SERVER_TYPE".to_owned(), "ftp".to_owned()),
        ("SILENT_SERVER_HOST".to_owned(), "127.0.0.1".to_owned()),
        ("SILENT_SERVER_PORT".to_owned(), port.to_string()),
    ]);
    let toml = config(
        "breaker_threshold = 1\n[pipelines.ftp-sync.servers.SILENT_SERVER]\ntimeout = \"1s\"\n",
    );
    let p = Process::start(&toml, &[], &env_refs(&env));
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    produce(
        &bootstrap,
        "mem-dft-img",
        vec![job(
            "silent",
            ("SRC_FTP_SERVER1", "/in/x.bin"),
            ("SILENT_SERVER", "/x.bin"),
        )],
    )
    .await;
    until_series(
        &p,
        "actord_ftp_circuit_open{server=\"SILENT_SERVER\"} 1",
        Duration::from_secs(20),
        "the silent server's open circuit",
    )
    .await;
    assert!(
        p.log().contains("banner: no answer within 1s"),
        "{}",
        p.log()
    );
}

/// A server behind NAT announces an address it cannot be reached at in its PASV replies
/// (here 127.0.0.2, where nothing listens). By default actord connects to the control
/// connection's address, as Python's ftplib does; `passive_address = "reply"` follows the reply
/// and fails, which the probe — it opens a data connection, not only a login — keeps reporting.
#[tokio::test]
async fn passive_data_connections_go_to_the_control_address_by_default() {
    let src = FtpServer::start(true);
    let nat = FtpServer::start_behind_nat("127.0.0.2");
    write(&src.root(), "in/n.bin", &content(300_000, 5));
    let mut env = src.env("SRC_FTP_SERVER1");
    env.extend(nat.env("NAT_SERVER"));
    env.extend(nat.env("NAT_REPLY_SERVER"));
    let toml = config(
        "breaker_threshold = 1\n[pipelines.ftp-sync.servers.NAT_REPLY_SERVER]\npassive_address = \"reply\"\n",
    );
    let p = Process::start(&toml, &[], &env_refs(&env));
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    produce(
        &bootstrap,
        "mem-dft-img",
        vec![
            job(
                "nat",
                ("SRC_FTP_SERVER1", "/in/n.bin"),
                ("NAT_SERVER", "/a/n.bin"),
            ),
            job(
                "reply",
                ("SRC_FTP_SERVER1", "/in/n.bin"),
                ("NAT_REPLY_SERVER", "/b/n.bin"),
            ),
        ],
    )
    .await;
    until(
        Duration::from_secs(30),
        "the file through the NAT'd server",
        || async { read(&nat.root(), "a/n.bin").is_some() },
    )
    .await;
    assert_eq!(read(&nat.root(), "a/n.bin").unwrap(), content(300_000, 5));
    until_series(
        &p,
        "actord_ftp_circuit_open{server=\"NAT_REPLY_SERVER\"} 1",
        Duration::from_secs(30),
        "the reply-address server's open circuit",
    )
    .await;
    // Its probe opens a data connection too, so the circuit stays open.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(get(&p.base, "/metrics")
        .await
        .1
        .contains("actord_ftp_circuit_open{server=\"NAT_REPLY_SERVER\"} 1"));
    assert!(read(&nat.root(), "b/n.bin").is_none());
}

/// Paths stay where they belong: a symbolic link in a local server's directory never leads a
/// read or a write out of it, backslashes and the root itself are refused, and without a
/// configured root a relative path lands in the login directory, as the original service's did.
#[tokio::test]
async fn paths_are_confined_and_relative_ones_use_the_login_directory() {
    let dirs = tempfile::tempdir().unwrap();
    let (src_root, dst_root, outside) = (
        dirs.path().join("src"),
        dirs.path().join("dst"),
        dirs.path().join("outside"),
    );
    for d in [&src_root, &dst_root, &outside] {
        std::fs::create_dir_all(d).unwrap();
    }
    write(&src_root, "in/a.bin", &content(50_000, 9));
    std::fs::write(outside.join("secret.txt"), b"not yours").unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), src_root.join("leak.txt")).unwrap();
    std::os::unix::fs::symlink(&outside, dst_root.join("out")).unwrap();
    let ssh = SshServer::start();
    let mut env: Vec<(String, String)> = vec![
        ("SRC_LOCAL_TYPE".into(), "file".into()),
        ("SRC_LOCAL_ROOT".into(), src_root.display().to_string()),
        ("DST_LOCAL_TYPE".into(), "file".into()),
        ("DST_LOCAL_ROOT".into(), dst_root.display().to_string()),
    ];
    env.extend(
        ssh.env("SFTP_HOME")
            .into_iter()
            .filter(|(k, _)| !k.ends_with("_ROOT")),
    );
    let p = Process::start(&config(""), &[], &env_refs(&env));
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    produce(
        &bootstrap,
        "fdry-dft-img",
        vec![
            job(
                "leak",
                ("SRC_LOCAL", "/leak.txt"),
                ("DST_LOCAL", "/ok/leak.txt"),
            ),
            job(
                "escape",
                ("SRC_LOCAL", "/in/a.bin"),
                ("DST_LOCAL", "/out/a.bin"),
            ),
            job(
                "backslash",
                ("SRC_LOCAL", "in\\a.bin"),
                ("DST_LOCAL", "/ok/b.bin"),
            ),
            job("root", ("SRC_LOCAL", "/in/a.bin"), ("DST_LOCAL", "/")),
            job(
                "good",
                ("SRC_LOCAL", "/in/a.bin"),
                ("DST_LOCAL", "/ok/a.bin"),
            ),
            job(
                "relative",
                ("SRC_LOCAL", "/in/a.bin"),
                ("SFTP_HOME", "rel/a.bin"),
            ),
        ],
    )
    .await;
    let dlq = read_until(&bootstrap, "fdry-dft-img-dlq", |r| r.len() >= 4);
    let mut refused: Vec<(String, String)> = dlq
        .iter()
        .map(|(v, _)| {
            let class = v["error"].as_str().unwrap().split(':').next().unwrap();
            (
                v["original_message"]["job_id"].as_str().unwrap().to_owned(),
                class.to_owned(),
            )
        })
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        [
            ("backslash".to_owned(), "InvalidPath".to_owned()),
            ("escape".to_owned(), "PathOutsideRoot".to_owned()),
            ("leak".to_owned(), "PathOutsideRoot".to_owned()),
            ("root".to_owned(), "InvalidPath".to_owned()),
        ]
    );
    until(
        Duration::from_secs(30),
        "the good and the relative job",
        || async {
            read(&dst_root, "ok/a.bin").is_some() && read(&ssh.root(), "rel/a.bin").is_some()
        },
    )
    .await;
    assert_eq!(read(&ssh.root(), "rel/a.bin").unwrap(), content(50_000, 9));
    assert_eq!(files(&outside), BTreeSet::from(["secret.txt".to_owned()]));
    assert!(read(&dst_root, "ok/leak.txt").is_none());
}

/// Write modes and replays: an upload-only account that may not rename takes files with
/// `staging = "direct"` (and refuses them with the default staging); over SFTP an existing file
/// is replaced (OpenSSH offers `posix-rename@openssh.com`, which replaces it in one step); an S3
/// object above the copy limit is streamed into place, nothing staged left behind.
#[tokio::test]
async fn write_modes_fit_the_server() {
    let src = FtpServer::start(true);
    let upload_only = FtpServer::start_upload_only();
    let ssh = SshServer::start();
    let s3 = S3Server::start("modes");
    write(&src.root(), "in/m.bin", &content(3 << 20, 4));
    std::fs::create_dir_all(ssh.root().join("out")).unwrap();
    std::fs::write(ssh.root().join("out/m.bin"), b"the old version").unwrap();
    let mut env = src.env("SRC_FTP_SERVER1");
    env.extend(upload_only.env("DIRECT_FTP"));
    env.extend(upload_only.env("RENAME_FTP"));
    env.extend(ssh.env("SFTP_DST"));
    env.push(("LAKE_TYPE".into(), "s3".into()));
    env.push(("LAKE_HOST".into(), "modes".into()));
    for (k, v) in s3.env() {
        if k.starts_with("AWS_") {
            env.push((k.to_owned(), v));
        }
    }
    let toml = config(
        "[pipelines.ftp-sync.servers.DIRECT_FTP]\nstaging = \"direct\"\n\
         [pipelines.ftp-sync.servers.LAKE]\ncopy_limit = 1048576\n",
    );
    let p = Process::start(&toml, &[], &env_refs(&env));
    wait_ready(&p.base).await;
    let bootstrap = bootstrap_of(&p).await;
    produce(
        &bootstrap,
        "mem-dft-img",
        vec![
            job(
                "direct",
                ("SRC_FTP_SERVER1", "/in/m.bin"),
                ("DIRECT_FTP", "/d/m.bin"),
            ),
            job(
                "rename",
                ("SRC_FTP_SERVER1", "/in/m.bin"),
                ("RENAME_FTP", "/r/m.bin"),
            ),
            job(
                "sftp",
                ("SRC_FTP_SERVER1", "/in/m.bin"),
                ("SFTP_DST", "out/m.bin"),
            ),
            job(
                "lake",
                ("SRC_FTP_SERVER1", "/in/m.bin"),
                ("LAKE", "/big/m.bin"),
            ),
        ],
    )
    .await;
    let store = s3.client();
    until(
        Duration::from_secs(60),
        "the direct, SFTP and S3 copies",
        || async {
            let lake = object_store::path::Path::from("big/m.bin");
            read(&upload_only.root(), "d/m.bin").is_some()
                && read(&ssh.root(), "out/m.bin").is_some_and(|b| b.len() == 3 << 20)
                && store.head(&lake).await.is_ok()
        },
    )
    .await;
    assert_eq!(
        read(&upload_only.root(), "d/m.bin").unwrap(),
        content(3 << 20, 4)
    );
    assert_eq!(read(&ssh.root(), "out/m.bin").unwrap(), content(3 << 20, 4));
    let object = store
        .get(&object_store::path::Path::from("big/m.bin"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(object.as_ref(), content(3 << 20, 4).as_slice());
    // Nothing staged is left behind in the bucket.
    let keys: Vec<String> = store
        .list(None)
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(keys, ["big/m.bin"], "{keys:?}");
    // The rename the upload-only account refuses is the job's failure, in the DLQ.
    let dlq = read_until(&bootstrap, "mem-dft-img-dlq", |r| !r.is_empty());
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    assert_eq!(dlq[0].0["original_message"]["job_id"], "rename");
}

/// Staged uploads that a process killed mid-upload left behind are removed at start once
/// they are older than `sweep_stale_after`; fresh ones, and every other file, stay.
#[tokio::test]
async fn stale_staged_uploads_are_swept_at_start() {
    let ftp = FtpServer::start(true);
    let dir = tempfile::tempdir().unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(3 * 24 * 3600);
    let stale = [
        ".a.bin.0123456789ab.part",
        "deep/er/.b.bin.abcdef012345.part",
    ];
    let kept = [
        ".c.bin.0123456789ab.part.keep",
        "notes.part",
        "deep/.fresh.bin.00112233aabb.part",
    ];
    for root in [ftp.root(), dir.path().to_owned()] {
        for name in stale.iter().chain(kept.iter()) {
            write(&root, name, b"partial");
            if !name.contains("fresh") {
                let f = std::fs::File::options()
                    .write(true)
                    .open(root.join(name))
                    .unwrap();
                f.set_modified(old).unwrap();
            }
        }
    }
    let mut env = ftp.env("OLD_FTP");
    env.push(("OLD_FTP_ROOT".into(), "/".into()));
    env.push(("OLD_LOCAL_TYPE".into(), "file".into()));
    env.push(("OLD_LOCAL_ROOT".into(), dir.path().display().to_string()));
    let p = Process::start(&config("sweep_stale_after = \"1d\""), &[], &env_refs(&env));
    wait_ready(&p.base).await;
    let expected: BTreeSet<String> = kept.iter().map(|s| s.to_string()).collect();
    for root in [ftp.root(), dir.path().to_owned()] {
        until(
            Duration::from_secs(30),
            "the stale staged uploads gone",
            || async { files(&root) == expected },
        )
        .await;
    }
    assert!(
        p.log().contains("removed stale staged uploads"),
        "{}",
        p.log()
    );
}
