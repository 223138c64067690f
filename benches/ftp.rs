//! FTP → FTP transfers beside a raw copy with `curl` between the same two servers, in one run:
//! one 100 MiB file, and 1,000 files of 10 KiB. The servers are pyftpdlib on loopback ports.
//!
//! `cargo bench --bench ftp [-- MIB]` (default 100).

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actord::pipelines::ftp_sync::dispatch_writer;
use actord::pipelines::ftp_sync::job::{self, Roots};
use actord::pipelines::ftp_sync::transfer::{Server, Settings, Transfers, Verify};
use actord::sinks::files::ftp::{FtpSettings, FtpTransport};
use actord::sources::kafka::embedded::EmbeddedKafka;
use actord::sources::kafka::path::DispatchPath;
use actord::sources::kafka::{KafkaConnection, SourceSettings};
use actord_actors::buffer::BufferLimits;
use actord_actors::record::SourceRecord;
use actord_actors::Backoff;

const USER: &str = "bench";
const PASS: &str = "bench-pass";

struct Ftp {
    port: u16,
    root: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Ftp {
    /// Logins so far, from the server's log.
    fn logins(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("logged in"))
            .count()
    }
}

impl Drop for Ftp {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ftp(dir: &Path) -> Ftp {
    let root = dir.to_owned();
    std::fs::create_dir_all(&root).unwrap();
    let port = free_port();
    let log = dir.with_extension("log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new("python3")
        .args([
            "-m",
            "pyftpdlib",
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-w",
        ])
        .args(["-u", USER, "-P", PASS, "-d"])
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("python3 with pyftpdlib");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ftp {
        port,
        root,
        log,
        child,
    }
}

fn url(server: &Ftp, path: &str) -> String {
    format!("ftp://{USER}:{PASS}@127.0.0.1:{}/{path}", server.port)
}

/// The raw limit for one file: curl downloads from one server and uploads to the other
/// through a pipe, as actord does.
fn curl_pipe(src: &Ftp, dst: &Ftp, path: &str) -> Duration {
    let started = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "curl -sS --fail '{}' | curl -sS --fail --ftp-create-dirs -T - '{}'",
            url(src, path),
            url(dst, &format!("raw/{path}"))
        ))
        .status()
        .unwrap();
    assert!(status.success(), "curl copy failed");
    started.elapsed()
}

/// The raw limit for many small files: one curl run downloads them all over one connection,
/// a second uploads them all (through a local directory, the only way curl can pair them).
fn curl_many(src: &Ftp, dst: &Ftp, n: usize, scratch: &Path) -> Duration {
    std::fs::create_dir_all(scratch).unwrap();
    let started = Instant::now();
    let status = Command::new("curl")
        .args(["-sS", "--fail"])
        .arg(url(src, &format!("small/f[0000-{:04}].bin", n - 1)))
        .arg("-o")
        .arg(scratch.join("f#1.bin"))
        .status()
        .unwrap();
    assert!(status.success(), "curl download failed");
    let list: Vec<String> = (0..n)
        .map(|i| scratch.join(format!("f{i:04}.bin")).display().to_string())
        .collect();
    let status = Command::new("curl")
        .args(["-sS", "--fail", "--ftp-create-dirs", "-T"])
        .arg(format!("{{{}}}", list.join(",")))
        .arg(url(dst, "raw-small/"))
        .status()
        .unwrap();
    assert!(status.success(), "curl upload failed");
    started.elapsed()
}

fn transport(server: &Ftp, concurrency: usize) -> Arc<FtpTransport> {
    Arc::new(FtpTransport::new(FtpSettings {
        host: "127.0.0.1".into(),
        port: server.port,
        user: USER.into(),
        password: Some(actord::config::Secret::new(PASS)),
        passive: true,
        passive_reply_address: false,
        tls: false,
        insecure_tls: false,
        max_connections: 2 * concurrency,
        timeout: Duration::from_secs(30),
    }))
}

/// actord's path over `jobs` already in `topic`: seconds from the first job read to the last
/// one done.
async fn actord(bootstrap: &str, topic: &str, src: &Ftp, dst: &Ftp, n: u64) -> Duration {
    let concurrency = 4;
    let servers = BTreeMap::from([
        (
            "SRC".to_owned(),
            Arc::new(Server::new("SRC", transport(src, concurrency))),
        ),
        (
            "DST".to_owned(),
            Arc::new(Server::new("DST", transport(dst, concurrency))),
        ),
    ]);
    let transfers = Arc::new(Transfers::new(
        servers,
        Settings {
            sweep_after: None,
            concurrency,
            max_retries: 3,
            backoff: Backoff::default(),
            breaker_threshold: 3,
            verify: Verify::Size,
        },
    ));
    let roots: Arc<Roots> = Arc::new(BTreeMap::from([
        ("SRC".to_owned(), None),
        ("DST".to_owned(), None),
    ]));
    let mut source = SourceSettings::new(vec![topic.into()], format!("bench-{topic}"));
    source.max_in_flight_records = 256;
    source.chunk = concurrency;
    let path = DispatchPath::<job::Job> {
        id: "jobs".into(),
        connection: KafkaConnection::new(bootstrap),
        source,
        decode: Arc::new(move |r: &SourceRecord| job::decode(r, &roots)),
        writer: dispatch_writer(transfers),
        buffer: BufferLimits {
            max_records: concurrency * 4,
            max_bytes: 16 << 20,
            max_age: Duration::from_millis(20),
        },
        dlq_suffix: None,
    };
    let supervision = actord::config::load(&actord::config::Sources::default())
        .unwrap()
        .supervision;
    let spec = path.child_spec(
        &actord_actors::ActorPath::parse("/bench").unwrap(),
        &supervision,
    );
    let rate = common::spec_records_per_second("jobs", 1, spec, n).await;
    Duration::from_secs_f64(n as f64 / rate)
}

fn job_json(src: &str, dst: &str) -> String {
    format!(
        r#"{{"source":{{"hostname":"SRC","path":"{src}"}},"destination":{{"hostname":"DST","path":"{dst}"}}}}"#
    )
}

fn mib_per_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / t.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mib: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let src = ftp(&dir.path().join("src"));
    let dst = ftp(&dir.path().join("dst"));
    let big = mib << 20;
    {
        use std::io::Write;
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(src.root.join("big.bin")).unwrap());
        let block: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for _ in 0..mib {
            f.write_all(&block).unwrap();
        }
    }
    let n_small = 1000usize;
    std::fs::create_dir_all(src.root.join("small")).unwrap();
    for i in 0..n_small {
        let body: Vec<u8> = (0..10 * 1024).map(|j| (i + j) as u8).collect();
        std::fs::write(src.root.join(format!("small/f{i:04}.bin")), body).unwrap();
    }

    let raw_big = curl_pipe(&src, &dst, "big.bin");
    let raw_small = curl_many(&src, &dst, n_small, &dir.path().join("scratch"));

    let kafka = EmbeddedKafka::start().unwrap();
    kafka.create_topic("big", 1).unwrap();
    kafka.create_topic("small", 3).unwrap();
    common::produce(kafka.bootstrap(), "big", 1, |_| {
        job_json("/big.bin", "/actord/big.bin")
    });
    let ours_big = actord(kafka.bootstrap(), "big", &src, &dst, 1).await;
    assert_eq!(
        std::fs::metadata(dst.root.join("actord/big.bin"))
            .unwrap()
            .len(),
        big
    );
    common::produce(kafka.bootstrap(), "small", n_small as u64, |i| {
        job_json(
            &format!("/small/f{i:04}.bin"),
            &format!("/actord-small/f{i:04}.bin"),
        )
    });
    let logins_before = src.logins() + dst.logins();
    let ours_small = actord(kafka.bootstrap(), "small", &src, &dst, n_small as u64).await;
    let logins = src.logins() + dst.logins() - logins_before;
    assert_eq!(
        std::fs::read_dir(dst.root.join("actord-small"))
            .unwrap()
            .count(),
        n_small
    );

    println!("FTP → FTP between two pyftpdlib servers on loopback");
    println!(
        "{mib} MiB file   curl | curl: {:>8.1} MiB/s   actord: {:>8.1} MiB/s   ratio {:.2}",
        mib_per_s(big, raw_big),
        mib_per_s(big, ours_big),
        raw_big.as_secs_f64() / ours_big.as_secs_f64()
    );
    println!(
        "{n_small} x 10 KiB  curl (2 runs): {:>8.0} files/s  actord: {:>8.0} files/s  ratio {:.2}",
        n_small as f64 / raw_small.as_secs_f64(),
        n_small as f64 / ours_small.as_secs_f64(),
        raw_small.as_secs_f64() / ours_small.as_secs_f64()
    );
    println!("logins by actord for the {n_small} small files: {logins} (both servers)");
}
