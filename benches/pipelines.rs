//! The actord binary measured from outside, the way an operator runs it, beside the raw limits
//! of the same machine in the same run: `kcat` reading the topic, `psql \copy` loading the same
//! rows into a table of the same definition. The broker is `actord embedded-broker` in a
//! process of its own; every actord run is a separate process with a config file, and its
//! progress is read where an operator would read it (the offsets table in PostgreSQL, the
//! group's committed offsets on the broker, the rows of the Parquet objects on disk).
//!
//! `cargo bench --bench pipelines [-- RECORDS]` (default 1,000,000 records per topic;
//! `ACTORD_BENCH_RECORDS` works too). `ACTORD_BENCH_BIN` names the actord binary to measure
//! (default: this build's), so one harness runs an older and a newer build alike;
//! `ACTORD_BENCH_TUNED_BATCH` sets the larger recorder batch size (default 10,000).
//! `ACTORD_BENCH_ONLY` runs some rows only, a comma-separated list of `postgres` ((b) and (c)),
//! `parquet` ((d), after the tuned (c), whose offsets it starts from), `backfill` ((e)) and
//! `commerce` ((f)); raw consume (a) always runs, and only the topics the rows read are
//! produced.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const TICKS: &str = "market.tick";
const SENSORS: &str = "fms-temphum";
const ORDERS: &str = "orders";
/// Enough partitions that 10M ticks stay under the mock broker's 5 MiB retention per partition.
const PARTITIONS: i32 = 64;
/// The recorder seed's default BATCH_SIZE.
const SEED_BATCH: u32 = 1000;
const PG: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

/// CPU and memory of a finished actord process, from `wait4`.
#[derive(Clone, Copy, Default)]
struct Usage {
    cpu_seconds: f64,
    peak_rss: u64,
}

/// One measured line of the report.
struct Measured {
    name: String,
    records: u64,
    bytes: u64,
    seconds: f64,
    usage: Option<Usage>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

/// The `actord embedded-broker` process.
struct Broker {
    child: Child,
    bootstrap: String,
}

impl Broker {
    fn start(bin: &Path, topics: &[(&str, i32)]) -> Broker {
        let mut cmd = Command::new(bin);
        cmd.arg("embedded-broker")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        for (name, partitions) in topics {
            cmd.arg("--create-topic")
                .arg(format!("{name}:{partitions}"));
        }
        let mut child = cmd.spawn().expect("spawn actord embedded-broker");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let bootstrap = line
            .trim()
            .strip_prefix("bootstrap=")
            .unwrap_or_else(|| panic!("embedded-broker printed {line:?}"))
            .to_owned();
        Broker { child, bootstrap }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An actord process started with a config file, as an operator starts it.
struct Actord {
    pid: i32,
    dir: tempfile::TempDir,
    started: Instant,
    exited: Option<(i32, Usage)>,
}

impl Actord {
    fn start(bin: &Path, toml: &str, args: &[&str], env: &[(&str, &str)]) -> Actord {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("supervision.toml");
        std::fs::write(&config, toml).unwrap();
        let log = std::fs::File::create(dir.path().join("actord.log")).unwrap();
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .arg("--admin")
            .arg(admin.to_string())
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .current_dir(dir.path())
            .spawn()
            .expect("spawn actord");
        let pid = child.id() as i32;
        // The process is reaped with wait4 below, for its rusage.
        std::mem::forget(child);
        Actord {
            pid,
            dir,
            started: Instant::now(),
            exited: None,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("actord.log")).unwrap_or_default()
    }

    /// Reaps the process if it has exited (or waits for it with `block`).
    fn reap(&mut self, block: bool) -> Option<(i32, Usage)> {
        if self.exited.is_none() {
            let mut status = 0;
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            let flags = if block { 0 } else { libc::WNOHANG };
            // SAFETY: plain system call on our own child with valid out-pointers.
            let r = unsafe { libc::wait4(self.pid, &mut status, flags, &mut ru) };
            if r == self.pid {
                let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    -1
                };
                self.exited = Some((
                    code,
                    Usage {
                        cpu_seconds: secs(ru.ru_utime) + secs(ru.ru_stime),
                        peak_rss: ru.ru_maxrss as u64 * 1024,
                    },
                ));
            }
        }
        self.exited
    }

    /// SIGTERM (a graceful stop), then the process's usage.
    fn stop(mut self) -> Usage {
        if self.reap(false).is_none() {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
        }
        let (code, usage) = self.reap(true).unwrap();
        if code != 0 {
            eprintln!(
                "actord exited {code} after SIGTERM; log tail:\n{}",
                tail(&self.log())
            );
        }
        usage
    }
}

impl Drop for Actord {
    fn drop(&mut self) {
        if self.exited.is_none() {
            // SAFETY: as in `stop`.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            self.reap(true);
        }
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Follows `progress` (records done) until it reaches `n` and returns the steady rate's
/// window: the time from the first reading at or above 10% of `n` to the first at or above 90%,
/// and the records done in it. The start-up (group join, connections) and the last partial
/// batch's age-based flush fall outside it.
async fn follow<F, Fut>(what: &str, n: u64, actord: &mut Actord, mut progress: F) -> (f64, u64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let limit = Duration::from_secs(120 + n / 2_000);
    let (mut low, mut high) = (None, None);
    loop {
        let done = progress().await;
        let now = Instant::now();
        if low.is_none() && done * 10 >= n {
            low = Some((now, done));
        }
        if high.is_none() && done * 10 >= n * 9 {
            high = Some((now, done));
        }
        if done >= n {
            break;
        }
        if let Some((code, _)) = actord.reap(false) {
            panic!(
                "{what}: actord exited {code} at {done} of {n}; log tail:\n{}",
                tail(&actord.log())
            );
        }
        assert!(
            actord.started.elapsed() < limit,
            "{what}: {done} of {n} after {limit:?}; log tail:\n{}",
            tail(&actord.log())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ((t0, d0), (t1, d1)) = (low.unwrap(), high.unwrap());
    if d1 > d0 && t1 > t0 {
        ((t1 - t0).as_secs_f64(), d1 - d0)
    } else {
        // Progress came in one step (too few batches to see a window): the whole run.
        (actord.started.elapsed().as_secs_f64(), n)
    }
}

/// Records written by a PostgreSQL path: the sum of its next offsets in `actord_offsets`.
async fn offsets_table(pg: &tokio_postgres::Client, schema: &str, group: &str) -> u64 {
    let sql = format!(
        "SELECT coalesce(sum(next_offset), 0)::int8 FROM {schema}.actord_offsets WHERE consumer_group = $1"
    );
    match pg.query_one(&sql, &[&group]).await {
        Ok(row) => row.get::<_, i64>(0) as u64,
        Err(_) => 0, // the table is created at start-up
    }
}

async fn count(pg: &tokio_postgres::Client, table: &str) -> u64 {
    pg.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get::<_, i64>(0) as u64
}

/// A consumer that joins no group, for reading watermarks and a group's committed offsets.
fn observer(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// Records the broker holds for `topic` (high minus low watermark over its partitions).
fn held(bootstrap: &str, topic: &str, partitions: i32) -> u64 {
    let c = observer(bootstrap, "bench-observer");
    (0..partitions)
        .map(|p| {
            let (low, high) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            (high - low) as u64
        })
        .sum()
}

/// The sum of `group`'s committed offsets on `topic`.
fn committed(c: &BaseConsumer, topic: &str, partitions: i32) -> u64 {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    match c.committed_offsets(tpl, Duration::from_secs(5)) {
        Ok(tpl) => tpl
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o as u64,
                _ => 0,
            })
            .sum(),
        Err(_) => 0,
    }
}

/// Rows of the Parquet objects under `dir`, reading each object's footer once (`seen`).
fn object_rows(dir: &Path, seen: &mut HashMap<PathBuf, u64>) -> u64 {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    for file in files {
        if seen.contains_key(&file) {
            continue;
        }
        use parquet::file::reader::FileReader;
        let Ok(f) = std::fs::File::open(&file) else {
            continue;
        };
        // A local object appears under its name only once complete (staged, then renamed).
        if let Ok(reader) = parquet::file::reader::SerializedFileReader::new(f) {
            seen.insert(file, reader.metadata().file_metadata().num_rows() as u64);
        }
    }
    seen.values().sum()
}

/// Runs `psql` with `sql` (a `\copy` included) and returns its wall time.
fn psql(sql: &str) -> f64 {
    let started = Instant::now();
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
        .args(["-tAq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql is installed");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed().as_secs_f64()
}

/// `kcat` reading all of `topic` once into /dev/null, with actord's fetch tuning.
fn kcat(bootstrap: &str, topic: &str, n: u64, bytes: u64) -> Measured {
    let rate = common::kcat(bootstrap, topic, n).expect("kcat is installed");
    Measured {
        name: format!("kcat -C -e {topic} > /dev/null"),
        records: n,
        bytes,
        seconds: n as f64 / rate,
        usage: None,
    }
}

/// The recorder as an operator would configure it for one run. Each run has a group of its
/// own and migrates from no other group, so it reads the topic from the beginning.
fn recorder_toml(schema: &str, group: &str, batch: u32, parquet_dir: Option<&Path>) -> String {
    let s3 = match parquet_dir {
        Some(dir) => format!(
            "enabled = true\ndir = \"{}\"\nbatch_timeout = \"2s\"",
            dir.display()
        ),
        None => "enabled = false".to_owned(),
    };
    format!(
        "[runtime]\nenable = [\"recorder\"]\n[log]\nlevel = \"warn\"\n\
         [pipelines.recorder]\ngroup = \"{group}\"\nmigrate_from_group = \"\"\nbatch_size = {batch}\ndemo = false\n\
         [pipelines.recorder.timescale]\nhost = \"127.0.0.1\"\nport = 5432\nuser = \"postgres\"\n\
         database = \"postgres\"\nschema = \"{schema}\"\nrefresh_interval = \"1h\"\n\
         [pipelines.recorder.s3]\n{s3}\n"
    )
}

/// The recorder writing all ticks into `schema` with batches of `batch`, measured by the
/// offsets table.
async fn recorder_pg(
    ctx: &Ctx,
    pg: &tokio_postgres::Client,
    schema: &str,
    group: &str,
    batch: u32,
) -> Measured {
    psql("CHECKPOINT");
    let mut actord = Actord::start(
        &ctx.bin,
        &recorder_toml(schema, group, batch, None),
        &[],
        &[("KAFKA_BROKERS", ctx.bootstrap.as_str())],
    );
    let group = format!("{group}-timescale");
    let (seconds, records) = follow("recorder → PostgreSQL", ctx.n, &mut actord, || {
        offsets_table(pg, schema, &group)
    })
    .await;
    let usage = actord.stop();
    assert_eq!(
        count(pg, &format!("{schema}.tick_data")).await,
        ctx.n,
        "tick_data rows"
    );
    Measured {
        name: format!("actord recorder → PostgreSQL, BATCH_SIZE {batch}"),
        records,
        bytes: ctx.tick_bytes * records / ctx.n,
        seconds,
        usage: Some(usage),
    }
}

struct Ctx {
    bin: PathBuf,
    bootstrap: String,
    n: u64,
    tick_bytes: u64,
}

fn order(i: u64, users: &[String], products: &[(String, i64)]) -> (String, String) {
    let (user, (product, price)) = (
        &users[(i % users.len() as u64) as usize],
        &products[(i % products.len() as u64) as usize],
    );
    let quantity = 1 + i % 3;
    let time = chrono::DateTime::from_timestamp(1_763_510_400 + i as i64 / 10, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let id = format!("bench-{i:010}");
    let total = price * quantity as i64;
    (
        format!(
            r#"{{"order_id":"{id}","user_id":"{user}","product_id":"{product}","quantity":{quantity},"unit_price":{price},"total_amount":{total},"scenario":"popular_single","created_at":"{time}"}}"#
        ),
        format!("{id},{user},{product},{quantity},{price},{total},popular_single,{time}\n"),
    )
}

fn commerce_toml(schema: &str, prefix: &str) -> String {
    format!(
        "[runtime]\nenable = [\"commerce\"]\n[log]\nlevel = \"warn\"\n\
         [pipelines.commerce]\ndemo = false\nkey_prefix = \"{prefix}\"\n\
         [pipelines.commerce.db]\nhost = \"127.0.0.1\"\nport = 5432\nuser = \"postgres\"\n\
         database = \"postgres\"\nschema = \"{schema}\"\n"
    )
}

/// `actord commerce seed` into `schema` with a fixed draw, so two schemas hold the same rows.
fn seed_commerce(bin: &Path, bootstrap: &str, schema: &str, prefix: &str) {
    let mut seed = Actord::start(
        bin,
        &commerce_toml(schema, prefix),
        &[
            "commerce",
            "seed",
            "--users",
            "1000",
            "--products",
            "300",
            "--seed",
            "7",
        ],
        &[("KAFKA_BROKERS", bootstrap)],
    );
    let (code, _) = seed.reap(true).unwrap();
    assert_eq!(code, 0, "commerce seed failed:\n{}", tail(&seed.log()));
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The rows `ACTORD_BENCH_ONLY` selects (all when unset).
struct Only(Option<Vec<String>>);

impl Only {
    fn from_env() -> Only {
        Only(std::env::var("ACTORD_BENCH_ONLY").ok().map(|v| {
            let names: Vec<String> = v.split(',').map(|n| n.trim().to_owned()).collect();
            for n in &names {
                assert!(
                    ["postgres", "parquet", "backfill", "commerce"].contains(&n.as_str()),
                    "ACTORD_BENCH_ONLY: expected postgres, parquet, backfill or commerce, found {n:?}"
                );
            }
            names
        }))
    }

    fn runs(&self, row: &str) -> bool {
        self.0
            .as_ref()
            .is_none_or(|names| names.iter().any(|n| n == row))
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .or_else(|| std::env::var("ACTORD_BENCH_RECORDS").ok()?.parse().ok())
        .unwrap_or(1_000_000);
    let bin = std::env::var_os("ACTORD_BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_actord")));
    let tuned: u32 = std::env::var("ACTORD_BENCH_TUNED_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(10_000);
    let only = Only::from_env();
    let (postgres, parquet, backfill, commerce) = (
        only.runs("postgres"),
        only.runs("parquet"),
        only.runs("backfill"),
        only.runs("commerce"),
    );
    let load_before = load_average();
    let scratch = tempfile::tempdir().unwrap();
    let tag = std::process::id();
    let prefix = format!("bench-{tag}:");
    let schemas: Vec<String> = ["copy", "batch", "tuned", "orders", "orders_copy"]
        .iter()
        .map(|s| format!("bench_{s}_{tag}"))
        .collect();
    let [copy_schema, batch_schema, tuned_schema, orders_schema, orders_copy_schema] =
        <[String; 5]>::try_from(schemas.clone()).unwrap();

    let broker = Broker::start(
        &bin,
        &[
            (TICKS, PARTITIONS),
            ("market.orderbook", 1),
            ("market.tick-dlq", 1),
            ("market.orderbook-dlq", 1),
            (SENSORS, PARTITIONS),
            (&format!("{SENSORS}-dlq"), 1),
            (ORDERS, PARTITIONS),
            ("orders-dlq", 1),
            ("users", 1),
            ("users-dlq", 1),
            ("products", 1),
            ("products-dlq", 1),
        ],
    );
    let bootstrap = broker.bootstrap.clone();
    let (pg, connection) = tokio_postgres::connect(PG, tokio_postgres::NoTls)
        .await
        .expect("the local PostgreSQL");
    tokio::spawn(connection);
    for s in &schemas {
        pg.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}"
        ))
        .await
        .unwrap();
    }

    // The same ticks as Kafka messages and as CSV lines for psql.
    let csv = scratch.path().join("ticks.csv");
    let tick_bytes: u64 = (0..n).map(|i| common::tick(i).len() as u64).sum();
    if postgres {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
        for i in 0..n {
            f.write_all(common::tick_csv(i).as_bytes()).unwrap();
        }
    }
    let sensor_bytes: u64 = (0..n).map(|i| common::reading(i).len() as u64).sum();
    common::produce(&bootstrap, TICKS, n, common::tick);
    let mut produced = vec![TICKS];
    if backfill {
        common::produce(&bootstrap, SENSORS, n, common::reading);
        produced.push(SENSORS);
    }

    // Orders for the seeded users and products, the same in the actord and raw schemas.
    let orders_csv = scratch.path().join("orders.csv");
    let mut order_bytes = 0;
    if commerce {
        seed_commerce(&bin, &bootstrap, &orders_schema, &prefix);
        seed_commerce(&bin, &bootstrap, &orders_copy_schema, &prefix);
        let ids = |schema: String, sql: &'static str| {
            let pg = &pg;
            async move {
                let rows = pg.query(&sql.replace("{s}", &schema), &[]).await.unwrap();
                rows.iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                    .collect::<Vec<_>>()
            }
        };
        let users_sql = "SELECT user_id, 0::int8 FROM {s}.users ORDER BY user_id";
        let products_sql = "SELECT product_id, price FROM {s}.products ORDER BY product_id";
        let users: Vec<String> = ids(orders_schema.clone(), users_sql)
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let products = ids(orders_schema.clone(), products_sql).await;
        assert_eq!(
            ids(orders_copy_schema.clone(), products_sql).await,
            products,
            "both seeded schemas hold the same products"
        );
        assert_eq!(
            ids(orders_copy_schema.clone(), users_sql).await.len(),
            users.len()
        );
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&orders_csv).unwrap());
            for i in 0..n {
                let (json, line) = order(i, &users, &products);
                order_bytes += json.len() as u64;
                f.write_all(line.as_bytes()).unwrap();
            }
        }
        common::produce(&bootstrap, ORDERS, n, |i| order(i, &users, &products).0);
        produced.push(ORDERS);
    }

    // What the broker holds must be what was produced, before anything is measured.
    for topic in produced {
        assert_eq!(
            held(&bootstrap, topic, PARTITIONS),
            n,
            "records of {topic} on the broker"
        );
    }
    let ctx = Ctx {
        bin: bin.clone(),
        bootstrap: bootstrap.clone(),
        n,
        tick_bytes,
    };
    let mut report: Vec<(char, Measured)> = Vec::new();

    // (a) raw consume.
    report.push(('a', kcat(&bootstrap, TICKS, n, tick_bytes)));
    let raw_sensors = backfill.then(|| kcat(&bootstrap, SENSORS, n, sensor_bytes));

    if postgres {
        // (c) at the seed's default first: its tables are the definition the raw COPY copies.
        let seed = recorder_pg(&ctx, &pg, &batch_schema, "bench-seed-batch", SEED_BATCH).await;

        // (b) raw PostgreSQL ingest: the same rows, CSV, into a table of the same definition.
        pg.batch_execute(&format!(
            "CREATE TABLE {copy_schema}.tick_data (LIKE {batch_schema}.tick_data INCLUDING ALL)"
        ))
        .await
        .unwrap();
        psql("CHECKPOINT");
        let seconds = psql(&format!(
            "\\copy {copy_schema}.tick_data (time, symbol, price, volume, change, change_rate) FROM '{}' CSV",
            csv.display()
        ));
        assert_eq!(count(&pg, &format!("{copy_schema}.tick_data")).await, n);
        report.push((
            'b',
            Measured {
                name: "psql \\copy ticks (CSV)".into(),
                records: n,
                bytes: std::fs::metadata(&csv).unwrap().len(),
                seconds,
                usage: None,
            },
        ));
        report.push(('c', seed));
    }

    if postgres || parquet {
        report.push((
            'c',
            recorder_pg(&ctx, &pg, &tuned_schema, "bench-tuned-batch", tuned).await,
        ));
    }

    if parquet {
        // (d) recorder → Parquet. It runs on the tuned run's schema, whose offsets are at the end,
        // so the PostgreSQL path has nothing to do and the Parquet path works alone.
        let objects = scratch.path().join("objects");
        std::fs::create_dir_all(&objects).unwrap();
        let mut actord = Actord::start(
            &bin,
            &recorder_toml(&tuned_schema, "bench-tuned-batch", tuned, Some(&objects)),
            &[],
            &[("KAFKA_BROKERS", bootstrap.as_str())],
        );
        let watcher = observer(&bootstrap, "bench-tuned-batch-s3");
        let (seconds, records) = follow("recorder → Parquet", n, &mut actord, || {
            let done = committed(&watcher, TICKS, PARTITIONS);
            async move { done }
        })
        .await;
        let usage = actord.stop();
        assert_eq!(
            object_rows(&objects, &mut HashMap::new()),
            n,
            "Parquet rows"
        );
        report.push((
            'd',
            Measured {
                name: "actord recorder → Parquet (local dir)".into(),
                records,
                bytes: tick_bytes * records / n,
                seconds,
                usage: Some(usage),
            },
        ));
    }

    if backfill {
        // (e) backfill → Parquet: `actord backfill --mode fresh`, one run to the high watermarks.
        let archive = scratch.path().join("archive");
        std::fs::create_dir_all(&archive).unwrap();
        let mut actord = Actord::start(
            &bin,
            &format!(
                "[log]\nlevel = \"warn\"\n[pipelines.backfill]\ntopic = \"{SENSORS}\"\n\
                 group = \"bench-backfill\"\ndir = \"{}\"\ndemo = false\n",
                archive.display()
            ),
            &["backfill", "--mode", "fresh"],
            &[("KAFKA_BROKERS", bootstrap.as_str())],
        );
        let mut seen = HashMap::new();
        let (steady, steady_records) = follow("backfill → Parquet", n, &mut actord, || {
            let done = object_rows(&archive, &mut seen);
            async move { done }
        })
        .await;
        let (code, usage) = actord.reap(true).unwrap();
        let whole = actord.started.elapsed().as_secs_f64();
        assert_eq!(code, 0, "backfill failed:\n{}", tail(&actord.log()));
        assert_eq!(
            object_rows(&archive, &mut HashMap::new()),
            n,
            "backfill rows"
        );
        let sensors_done = committed(&observer(&bootstrap, "bench-backfill"), SENSORS, PARTITIONS);
        assert_eq!(sensors_done, n, "backfill's committed offsets");
        report.push((
            'e',
            Measured {
                name: "actord backfill --mode fresh → Parquet (steady)".into(),
                records: steady_records,
                bytes: sensor_bytes * steady_records / n,
                seconds: steady,
                usage: Some(usage),
            },
        ));
        report.push((
            'e',
            Measured {
                name: "actord backfill --mode fresh → Parquet (whole command)".into(),
                records: n,
                bytes: sensor_bytes,
                seconds: whole,
                usage: Some(usage),
            },
        ));
    }

    let mut raw_orders = None;
    if commerce {
        // (f) commerce orders → PostgreSQL, beside a raw COPY of the same orders.
        psql("CHECKPOINT");
        let seconds = psql(&format!(
            "\\copy {orders_copy_schema}.orders (order_id, user_id, product_id, quantity, unit_price, total_amount, scenario, created_at) FROM '{}' CSV",
            orders_csv.display()
        ));
        let raw = Measured {
            name: "psql \\copy orders (CSV)".into(),
            records: n,
            bytes: std::fs::metadata(&orders_csv).unwrap().len(),
            seconds,
            usage: None,
        };
        psql("CHECKPOINT");
        let mut actord = Actord::start(
            &bin,
            &commerce_toml(&orders_schema, &prefix),
            &[],
            &[("KAFKA_BROKERS", bootstrap.as_str())],
        );
        let (seconds, records) = follow("commerce orders → PostgreSQL", n, &mut actord, || {
            offsets_table(&pg, &orders_schema, "orders_group")
        })
        .await;
        let usage = actord.stop();
        assert_eq!(
            count(&pg, &format!("{orders_schema}.orders")).await,
            n,
            "orders rows"
        );
        report.push((
            'f',
            Measured {
                name: "actord commerce orders → PostgreSQL".into(),
                records,
                bytes: order_bytes * records / n,
                seconds,
                usage: Some(usage),
            },
        ));
        raw_orders = Some(raw);
    }

    for s in &schemas {
        pg.batch_execute(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
            .await
            .unwrap();
    }
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "redis-cli --scan --pattern '{prefix}*' | xargs -r redis-cli del > /dev/null"
        ))
        .status();
    drop(broker);

    let rate = |id: char, k: usize| {
        report
            .iter()
            .filter(|(i, _)| *i == id)
            .nth(k)
            .map(|(_, m)| m.rate())
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "records: {n} per topic, {PARTITIONS} partitions, lz4, `actord embedded-broker` in its own process; \
         load average {load_before} before, {} after; binary {}",
        load_average(),
        bin.display()
    );
    let _ = writeln!(
        out,
        "\n| run | records/s | MB/s | actord CPU s per 1M records | actord peak RSS (MiB) |\n|---|---|---|---|---|"
    );
    let mut line = |id: char, m: &Measured| {
        let (cpu, rss) = match m.usage {
            Some(u) => (
                format!("{:.2}", u.cpu_seconds * 1e6 / n as f64),
                format!("{:.1}", mib(u.peak_rss)),
            ),
            None => ("—".into(), "—".into()),
        };
        let _ = writeln!(
            out,
            "| ({id}) {} | {:.0} | {:.1} | {cpu} | {rss} |",
            m.name,
            m.rate(),
            m.bytes as f64 / 1e6 / m.seconds
        );
    };
    for (id, m) in &report {
        line(*id, m);
    }
    if let Some(m) = &raw_sensors {
        line('a', m);
    }
    if let Some(m) = &raw_orders {
        line('b', m);
    }
    // Each ratio of the rows that ran.
    let ratio = |x: Option<f64>, y: Option<f64>| x.zip(y).map(|(x, y)| format!("{:.2}", x / y));
    let raw_sensors = raw_sensors.as_ref().map(Measured::rate);
    let raw_orders = raw_orders.as_ref().map(Measured::rate);
    let ratios: Vec<String> = [
        (
            format!("(c)/(b) at BATCH_SIZE {SEED_BATCH}"),
            ratio(rate('c', 0), rate('b', 0)),
        ),
        (
            format!("(c)/(b) at {tuned}"),
            ratio(rate('c', 1), rate('b', 0)),
        ),
        ("(d)/(a)".into(), ratio(rate('d', 0), rate('a', 0))),
        ("(e)/(a) steady".into(), ratio(rate('e', 0), rate('a', 0))),
        (
            "(e)/(a) whole command".into(),
            ratio(rate('e', 1), rate('a', 0)),
        ),
        (
            format!("(e) steady against kcat on {SENSORS}"),
            ratio(rate('e', 0), raw_sensors),
        ),
        (
            format!("(e) whole command against kcat on {SENSORS}"),
            ratio(rate('e', 1), raw_sensors),
        ),
        ("(f)/(b)".into(), ratio(rate('f', 0), rate('b', 0))),
        (
            "(f) against psql \\copy of the orders".into(),
            ratio(rate('f', 0), raw_orders),
        ),
    ]
    .into_iter()
    .filter_map(|(name, r)| Some(format!("{name} {}", r?)))
    .collect();
    let _ = writeln!(out, "\nratios: {}", ratios.join("; "));
    println!("{out}");
}
