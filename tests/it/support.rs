//! Helpers: running actord (in-process or as a process), HTTP calls and polling.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use actord::app;
use actord::config::{self, Config, Sources};
use actord::runtime::Outcome;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A runtime started in this process on an ephemeral admin port.
pub struct InProcess {
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<Outcome>>>,
}

impl InProcess {
    pub async fn start(toml: &str) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("supervision.toml");
        std::fs::write(&path, toml).unwrap();
        let config: Config = config::load(&Sources {
            config_path: Some(path),
            ..Sources::default()
        })
        .expect("valid test config");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app::run(config, listener, async move {
            let _ = stopped.await;
        }));
        let me = InProcess {
            base,
            stop: Some(stop),
            task: Some(task),
        };
        wait_ready(&me.base).await;
        me
    }

    pub async fn shutdown(mut self) -> Outcome {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap()
    }
}

/// The actord binary running as a child process.
pub struct Process {
    pub base: String,
    pub child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Starts `actord` with `toml` as its config file plus `args`, on a free admin port.
    pub fn start(toml: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("supervision.toml");
        std::fs::write(&config, toml).unwrap();
        let port = free_port();
        let log = dir.path().join("actord.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_actord"));
        cmd.arg("--config")
            .arg(&config)
            .arg("--admin")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .current_dir(dir.path());
        let child = cmd.spawn().expect("spawn actord");
        Process {
            base: format!("http://127.0.0.1:{port}"),
            child,
            log,
            _dir: dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process's working directory (relative paths in its config land here).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn signal(&mut self, sig: &str) {
        signal_child(&mut self.child, sig);
    }

    /// Waits for the process to exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "actord did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Sends `sig` to a child that has not been reaped yet; one that has exited and been reaped is
/// left alone. A pid is only free for reuse once reaped, and this machine's pids wrap at 32,768:
/// a signal by number to a reaped child could reach another test's process.
pub fn signal_child(child: &mut Child, sig: &str) {
    if child.try_wait().unwrap().is_some() {
        return;
    }
    // Not reaped (at most a zombie): the pid is still this child's.
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} failed");
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the binary to completion (for `check` and config errors).
pub fn run_to_end(
    args: &[&str],
    toml: Option<&str>,
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_actord"));
    cmd.current_dir(dir.path())
        .env_remove("RUST_LOG")
        .envs(env.iter().copied());
    if let Some(toml) = toml {
        let path = dir.path().join("custom.toml");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(toml.as_bytes()).unwrap();
        cmd.arg("--config").arg(path);
    }
    let out = cmd.args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub async fn get(base: &str, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("{base}{path}"))
        .await
        .expect("admin reachable");
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// A POST as a script sends it: with the admin port's request header, and the token if given.
pub async fn post(base: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut req = client
        .post(format!("{base}{path}"))
        .header("X-Actord-Request", "1");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("admin reachable");
    (resp.status().as_u16(), resp.text().await.unwrap())
}

pub async fn tree(base: &str) -> Value {
    let (status, body) = get(base, "/api/tree").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Every actor of a tree by path.
pub fn flatten(node: &Value) -> Vec<Value> {
    let mut out = vec![node.clone()];
    for child in node["children"].as_array().unwrap() {
        out.extend(flatten(child));
    }
    out
}

pub fn actor(tree: &Value, path: &str) -> Value {
    flatten(tree)
        .into_iter()
        .find(|a| a["path"] == path)
        .unwrap_or_else(|| panic!("no actor {path} in {tree:#}"))
}

/// Polls `check` every 100 ms until it returns true, failing after `within`.
pub async fn until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the admin port answers `/ready` with 200.
pub async fn wait_ready(base: &str) {
    until(
        Duration::from_secs(30),
        "actord to become ready",
        || async {
            match reqwest::get(format!("{base}/ready")).await {
                Ok(r) => r.status().as_u16() == 200,
                Err(_) => false,
            }
        },
    )
    .await;
}

/// A config with a fast heartbeat and the given extra TOML appended.
pub fn config(extra: &str) -> String {
    format!(
        "[pipelines.heartbeat]\ninterval = \"100ms\"\n[runtime]\ncool_down = \"1s\"\nshutdown_timeout = \"10s\"\n{extra}"
    )
}

/// A name no other test uses (topics, groups, buckets).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A tansu broker (Kafka protocol, SQLite storage) in its own process on a free port.
pub struct Tansu {
    bootstrap: String,
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Tansu {
    pub fn start() -> Tansu {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("tansu.log")).unwrap();
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
            ])
            // The SQLite path is relative to the working directory.
            .arg("sqlite://tansu.db")
            .current_dir(dir.path())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("tansu is installed (scripts/services.sh installs it)");
        let bootstrap = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&bootstrap).is_err() {
            assert!(Instant::now() < deadline, "tansu did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Tansu {
            bootstrap,
            url,
            child,
            _dir: dir,
        }
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        let status = Command::new("tansu")
            .args([
                "topic",
                "create",
                "--broker",
                &self.url,
                "--partitions",
                &partitions.to_string(),
                name,
            ])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "tansu topic create {name} failed");
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// librdkafka's mock cluster in a process of its own (`actord embedded-broker`): unlike tansu
/// it expires the sessions of members that were killed or stopped, so a partition moves to the
/// survivors within `session.timeout.ms`, and it keeps its data while it lives.
pub struct MockBroker {
    bootstrap: String,
    child: Child,
    stderr: tempfile::NamedTempFile,
}

impl MockBroker {
    /// Starts the broker with `topics` (name, partitions) created.
    pub fn start(topics: &[(&str, i32)]) -> MockBroker {
        use std::io::BufRead;
        // What the broker writes to stderr (librdkafka's own assertions included) is kept for
        // the panic that reports its exit.
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_actord"));
        cmd.arg("embedded-broker")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap())
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
        MockBroker {
            bootstrap,
            child,
            stderr,
        }
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Sends `sig` to the broker's process (`STOP` freezes it: its connections stay open and
    /// nothing is answered; `CONT` thaws it).
    pub fn signal(&mut self, sig: &str) {
        // A broker that has exited would take the signal silently: say so instead.
        self.assert_running();
        signal_child(&mut self.child, sig);
    }

    /// Panics when the broker's process has exited: what waits on its records would otherwise
    /// only time out.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            let said = std::fs::read_to_string(self.stderr.path()).unwrap_or_default();
            let tail: Vec<&str> = said.lines().rev().take(20).collect();
            panic!(
                "the embedded broker ({}) exited: {status}; its last words:\n{}",
                self.bootstrap,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
}

impl Drop for MockBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to a real service that a test can take down and bring back (an outage as the
/// client sees it: refused connections and dropped sessions).
pub struct Proxy {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    rate: std::sync::Arc<std::sync::atomic::AtomicU64>,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts a proxied connection as open until it is dropped.
struct OpenGuard(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        Proxy::start_with(target, None).await
    }

    /// A proxy that passes at most `bytes_per_second` in each direction of each connection: a
    /// slow peer, so that uploads stay in flight for seconds.
    pub async fn start_throttled(target: &str, bytes_per_second: u64) -> Proxy {
        Proxy::start_with(target, Some(bytes_per_second)).await
    }

    async fn start_with(target: &str, throttle: Option<u64>) -> Proxy {
        use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
        use std::sync::Arc;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let rate = Arc::new(AtomicU64::new(throttle.unwrap_or(u64::MAX)));
        let (up2, gen2, target) = (up.clone(), generation.clone(), target.to_owned());
        let rate2 = rate.clone();
        let open = Arc::new(AtomicUsize::new(0));
        let open2 = open.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !up2.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                let (target, gen, rate) = (target.clone(), gen2.clone(), rate2.clone());
                let born = gen.load(Ordering::Acquire);
                open2.fetch_add(1, Ordering::AcqRel);
                let guard = OpenGuard(open2.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let copy = async {
                        match throttle {
                            None => {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            }
                            Some(_) => {
                                let (cr, cw) = client.split();
                                let (sr, sw) = server.split();
                                tokio::join!(paced(cr, sw, &rate), paced(sr, cw, &rate));
                            }
                        }
                    };
                    let cut = async {
                        while gen.load(Ordering::Acquire) == born {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    };
                    tokio::select! {
                        _ = copy => {}
                        _ = cut => {}
                    }
                });
            }
        });
        Proxy {
            port,
            up,
            rate,
            generation,
            open,
        }
    }

    /// Connections being passed on: a client that died leaves its connection open here until
    /// what it had sent has reached the service.
    pub fn open_connections(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Changes a throttled proxy's rate, for the open connections too.
    pub fn set_rate(&self, bytes_per_second: u64) {
        self.rate
            .store(bytes_per_second, std::sync::atomic::Ordering::Release);
    }

    /// Refuses new connections and cuts the open ones.
    pub fn down(&self) {
        use std::sync::atomic::Ordering;
        self.up.store(false, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Copies `from` into `to` at no more than `rate` bytes per second (read at every chunk, so a
/// test can change it mid-run), then half-closes `to`.
async fn paced(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    rate: &std::sync::atomic::AtomicU64,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    let mut due = tokio::time::Instant::now();
    loop {
        let r = rate.load(Ordering::Acquire).max(1);
        let chunk = (r / 20).clamp(512, 64 * 1024) as usize;
        let n = match from.read(&mut buf[..chunk]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        due = due.max(tokio::time::Instant::now() - Duration::from_secs(1))
            + Duration::from_secs_f64(n as f64 / r as f64);
        tokio::time::sleep_until(due).await;
    }
    let _ = to.shutdown().await;
}

/// A client of the local PostgreSQL server.
pub async fn pg() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
        tokio_postgres::NoTls,
    )
    .await
    .expect("PostgreSQL on 127.0.0.1:5432 (scripts/services.sh starts it)");
    tokio::spawn(conn);
    client
}

/// Output of a command the test depends on, trimmed; panics with its stderr when it fails.
fn output_of(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A PostgreSQL server of the test's own (`initdb` into a temporary directory, trust auth, user
/// `postgres`) on a loopback port. `stop` (an immediate shutdown, as a crash) and `resume` (the
/// same port and data directory) make an outage; dropping it stops the server and removes the
/// directory. `initdb` refuses to run as root, so as root the server runs as the `postgres` user.
pub struct PgServer {
    pub port: u16,
    bin: PathBuf,
    as_postgres: bool,
    running: bool,
    dir: tempfile::TempDir,
}

impl PgServer {
    pub fn start() -> PgServer {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (scripts/services.sh installs it)")
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .max_by_key(|b| {
                b.parent()
                    .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let as_postgres = output_of(Command::new("id").arg("-u"), "id -u") == "0";
        let dir = tempfile::Builder::new()
            .prefix("actord-pg")
            .tempdir()
            .unwrap();
        if as_postgres {
            let id = |flag: &str| -> u32 {
                output_of(Command::new("id").args([flag, "postgres"]), "id postgres")
                    .parse()
                    .unwrap()
            };
            std::os::unix::fs::chown(dir.path(), Some(id("-u")), Some(id("-g"))).unwrap();
        }
        let mut server = PgServer {
            port: free_port(),
            bin,
            as_postgres,
            running: false,
            dir,
        };
        let data = server.data();
        output_of(
            server
                .command("initdb")
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "-D",
                ])
                .arg(&data),
            "initdb",
        );
        server.resume();
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(path);
            cmd
        } else {
            Command::new(path)
        }
    }

    /// The server's log (start-up, recovery, shutdown).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Starts the server again on the same port and data directory, and waits for it.
    pub fn resume(&mut self) {
        assert!(!self.running, "already running");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let started = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pg_ctl runs");
        assert!(
            started.success(),
            "PostgreSQL did not start:\n{}",
            self.log()
        );
        self.running = true;
    }

    /// Stops the server at once, as a crash would: open sessions are cut, new ones refused.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        self.running = false;
    }

    /// A client of the server's `postgres` database.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                self.port
            ),
            tokio_postgres::NoTls,
        )
        .await
        .expect("the test's own PostgreSQL is up");
        tokio::spawn(conn);
        client
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis server of the test's own on a loopback port. `stop` kills it and `resume` starts it
/// again on the same port and directory. A plain one keeps nothing on disk (as the shared one), so
/// it comes back empty; a persistent one writes every command to its append-only file before
/// answering, so it comes back with everything it acknowledged (a queue's server).
pub struct RedisServer {
    pub port: u16,
    persistent: bool,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start(persistent: bool) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            persistent,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", ""])
            .args(if self.persistent {
                ["--appendonly", "yes", "--appendfsync", "always"].as_slice()
            } else {
                ["--appendonly", "no"].as_slice()
            })
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/services.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL): no chance to save anything more.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An s3s-fs server (a real S3 API over a directory) on a loopback port, with one bucket.
/// `stop` and `start` simulate an outage; the data directory survives them.
pub struct S3Server {
    pub port: u16,
    pub bucket: String,
    access_key: String,
    secret_key: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

pub const S3_ACCESS_KEY: &str = "actord-test";
pub const S3_SECRET_KEY: &str = "actord-test-secret";

impl S3Server {
    pub fn start(bucket: &str) -> S3Server {
        Self::start_with_keys(bucket, S3_ACCESS_KEY, S3_SECRET_KEY)
    }

    /// A server that requires these keys.
    pub fn start_with_keys(bucket: &str, access_key: &str, secret_key: &str) -> S3Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root").join(bucket)).unwrap();
        let mut server = S3Server {
            port: free_port(),
            bucket: bucket.to_owned(),
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
            child: None,
            dir,
        };
        server.resume();
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The environment an operator would set: the standard AWS variables and the seed's bucket.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("S3_BUCKET", self.bucket.clone()),
        ]
    }

    /// Starts the server again on the same port and directory.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("s3s.log"))
            .unwrap();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", &self.access_key])
            .args(["--secret-key", &self.secret_key])
            .arg(self.dir.path().join("root"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("s3s-fs is installed (scripts/services.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (an outage); `resume` brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client on the bucket, as any S3 tool would use it.
    pub fn client(&self) -> std::sync::Arc<dyn object_store::ObjectStore> {
        let store = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_bucket_name(&self.bucket)
            .with_region("us-east-1")
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .with_allow_http(true)
            .build()
            .unwrap();
        std::sync::Arc::new(store)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A pyftpdlib FTP server on a loopback port serving a temporary directory to one user.
/// `stop` and `resume` simulate an outage; the directory survives them.
pub struct FtpServer {
    pub port: u16,
    pub user: String,
    pub pass: String,
    writable: bool,
    /// Explicit TLS (AUTH TLS) required on control and data connections.
    tls: bool,
    /// The address its PASV replies announce instead of its own (a server behind NAT).
    nat_address: Option<String>,
    /// An upload-only account: it may list, make directories and store, never rename.
    upload_only: bool,
    /// Bytes a second each data connection passes, each way (a slow link).
    throttle: Option<u64>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

/// pyftpdlib with one upload-only user: list, make directories and store, nothing else.
const UPLOAD_ONLY_SERVER: &str = r#"
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
port, root, user, password = sys.argv[1:5]
auth = DummyAuthorizer()
auth.add_user(user, password, root, perm="elmw")
FTPHandler.authorizer = auth
FTPServer(("127.0.0.1", int(port)), FTPHandler).serve_forever()
"#;

/// pyftpdlib with one user and data connections paced to a rate in bytes a second.
const THROTTLED_SERVER: &str = r#"
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler, ThrottledDTPHandler
from pyftpdlib.servers import FTPServer
port, root, user, password, rate = sys.argv[1:6]
auth = DummyAuthorizer()
auth.add_user(user, password, root, perm="elradfmwMT")
ThrottledDTPHandler.read_limit = ThrottledDTPHandler.write_limit = int(rate)
FTPHandler.authorizer = auth
FTPHandler.dtp_handler = ThrottledDTPHandler
FTPServer(("127.0.0.1", int(port)), FTPHandler).serve_forever()
"#;

/// pyftpdlib with TLS required, a self-signed certificate and one user.
const FTPS_SERVER: &str = r#"
import sys
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import TLS_FTPHandler
from pyftpdlib.servers import FTPServer
port, root, user, password, cert, key = sys.argv[1:7]
auth = DummyAuthorizer()
auth.add_user(user, password, root, perm="elradfmwMT")
handler = TLS_FTPHandler
handler.certfile, handler.keyfile, handler.authorizer = cert, key, auth
handler.tls_control_required = True
handler.tls_data_required = True
FTPServer(("127.0.0.1", int(port)), handler).serve_forever()
"#;

impl FtpServer {
    pub fn start(writable: bool) -> FtpServer {
        Self::launch(writable, false, None)
    }

    /// A writable server whose user logs in with `password`.
    pub fn start_with_password(password: &str) -> FtpServer {
        let mut server = Self::new(true, false, None);
        server.pass = password.to_owned();
        server.resume();
        server
    }

    /// A server whose account may store files but not rename (or read or delete) them.
    pub fn start_upload_only() -> FtpServer {
        let mut server = Self::new(true, false, None);
        server.upload_only = true;
        server.resume();
        server
    }

    /// A writable server whose data connections each pass at most `bytes_per_second` each way,
    /// so that a large file stays in transit for seconds.
    pub fn start_throttled(bytes_per_second: u64) -> FtpServer {
        let mut server = Self::new(true, false, None);
        server.throttle = Some(bytes_per_second);
        server.resume();
        server
    }

    /// A writable server that requires explicit TLS, with a self-signed certificate.
    pub fn start_tls() -> FtpServer {
        Self::launch(true, true, None)
    }

    /// A writable server whose PASV replies announce `address` (where it does not listen), as
    /// a server behind NAT announces its private address.
    pub fn start_behind_nat(address: &str) -> FtpServer {
        Self::launch(true, false, Some(address.to_owned()))
    }

    fn launch(writable: bool, tls: bool, nat_address: Option<String>) -> FtpServer {
        let mut server = Self::new(writable, tls, nat_address);
        server.resume();
        server
    }

    fn new(writable: bool, tls: bool, nat_address: Option<String>) -> FtpServer {
        let server = FtpServer {
            port: free_port(),
            user: "actord".to_owned(),
            pass: "s3cr3t-Pa55".to_owned(),
            writable,
            tls,
            nat_address,
            upload_only: false,
            throttle: None,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        if tls {
            let status = Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                ])
                .args(["-subj", "/CN=127.0.0.1", "-keyout"])
                .arg(server.dir.path().join("key.pem"))
                .arg("-out")
                .arg(server.dir.path().join("cert.pem"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl is installed");
            assert!(status.success(), "openssl could not make a certificate");
        }
        std::fs::create_dir_all(server.root()).unwrap();
        server
    }

    /// The directory the server serves.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// What the server logged (pyftpdlib logs renames, deletions and new directories).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ftp.log")).unwrap_or_default()
    }

    /// The seed's variables for this server under `name`.
    pub fn env(&self, name: &str) -> Vec<(String, String)> {
        let kind = if self.tls { "ftps" } else { "ftp" };
        vec![
            (format!("{name}_TYPE"), kind.to_owned()),
            (format!("{name}_HOST"), "127.0.0.1".to_owned()),
            (format!("{name}_PORT"), self.port.to_string()),
            (format!("{name}_USER"), self.user.clone()),
            (format!("{name}_PASS"), self.pass.clone()),
        ]
    }

    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("ftp.log"))
            .unwrap();
        let mut cmd = Command::new("python3");
        if self.upload_only {
            cmd.args(["-c", UPLOAD_ONLY_SERVER, &self.port.to_string()])
                .arg(self.root())
                .args([&self.user, &self.pass]);
        } else if let Some(rate) = self.throttle {
            cmd.args(["-c", THROTTLED_SERVER, &self.port.to_string()])
                .arg(self.root())
                .args([&self.user, &self.pass, &rate.to_string()]);
        } else if self.tls {
            cmd.args(["-c", FTPS_SERVER, &self.port.to_string()])
                .arg(self.root())
                .args([&self.user, &self.pass])
                .arg(self.dir.path().join("cert.pem"))
                .arg(self.dir.path().join("key.pem"));
        } else {
            cmd.args(["-m", "pyftpdlib", "-i", "127.0.0.1"])
                .args(["-p", &self.port.to_string()])
                .args(["-u", &self.user, "-P", &self.pass])
                .arg("-d")
                .arg(self.root());
            if self.writable {
                cmd.arg("-w");
            }
            if let Some(nat) = &self.nat_address {
                cmd.args(["-n", nat]);
            }
        }
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("python3 with pyftpdlib (scripts/services.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "pyftpdlib did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Debian's OpenSSH server on a loopback port with its SFTP subsystem, accepting one client
/// key for the current user.
pub struct SshServer {
    pub port: u16,
    pub user: String,
    /// The host key's fingerprint, `SHA256:…`.
    pub host_key: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl SshServer {
    pub fn start() -> SshServer {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for key in ["host_key", "client_key"] {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(d.join(key))
                .status()
                .expect("ssh-keygen is installed (scripts/services.sh installs openssh)");
            assert!(status.success());
        }
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        std::fs::create_dir_all(d.join("root")).unwrap();
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_key\n\
             AuthorizedKeysFile {dir}/authorized_keys\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n\
             StrictModes no\nUsePAM no\nPidFile {dir}/sshd.pid\n\
             Subsystem sftp internal-sftp -d {dir}/root\n",
            dir = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("sshd is installed (scripts/services.sh installs openssh-server)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(d.join("host_key.pub"))
            .output()
            .unwrap();
        let host_key = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned();
        let user = String::from_utf8_lossy(&Command::new("whoami").output().unwrap().stdout)
            .trim()
            .to_owned();
        SshServer {
            port,
            user,
            host_key,
            child,
            dir,
        }
    }

    /// The directory jobs are confined to, and the SFTP session's starting (login) directory.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The seed-style variables for this server under `name` (key login, pinned host key).
    pub fn env(&self, name: &str) -> Vec<(String, String)> {
        vec![
            (format!("{name}_TYPE"), "sftp".to_owned()),
            (format!("{name}_HOST"), "127.0.0.1".to_owned()),
            (format!("{name}_PORT"), self.port.to_string()),
            (format!("{name}_USER"), self.user.clone()),
            (format!("{name}_ROOT"), self.root().display().to_string()),
            (
                format!("{name}_KEY"),
                self.dir.path().join("client_key").display().to_string(),
            ),
            (format!("{name}_HOST_KEY"), self.host_key.clone()),
        ]
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The scrape passes `promtool check metrics` (names, help texts, histogram buckets).
pub fn promtool_accepts(metrics: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package prometheus; scripts/test.sh installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
