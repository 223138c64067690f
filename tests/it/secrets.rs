//! Secrets stay secret: actord with every pipeline of the shipped `supervision.toml` enabled and
//! a secret in every place an operator puts one (database passwords under the seeds' names, the
//! admin token, a Redis URL with a password, S3 and MinIO keys, FTP passwords, the T2A token)
//! runs at the debug log level for a while: it writes Parquet objects to S3 and MinIO servers
//! that require their keys, copies a file from an FTP server that accepts its password to the
//! S3 bucket, dead-letters poison, fails against a server that refuses its login, and is
//! restarted by an operator; then everything it produced is searched for each secret.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::{free_port, get, pg, post, run_to_end, unique, FtpServer, Process, S3Server};

/// A Redis server of this test's own that requires a password.
pub(crate) struct RedisWithPassword {
    pub port: u16,
    child: Child,
}

impl RedisWithPassword {
    pub fn start(password: &str) -> RedisWithPassword {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                password,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisWithPassword { port, child }
    }
}

impl Drop for RedisWithPassword {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An FTP server that answers every login with 530, as one does to a wrong password.
async fn refusing_ftp_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"220 ready\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "USER" => b"331 password please\r\n",
                        "PASS" => b"530 Login incorrect.\r\n",
                        "QUIT" => b"221 bye\r\n",
                        _ => b"530 Please login with USER and PASS.\r\n",
                    };
                    if write.write_all(reply).await.is_err() || verb == "QUIT" {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// Every message of every topic whose name ends in `-dlq`, as text with its headers.
fn dead_letters(bootstrap: &str) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let topics: Vec<String> = c
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap()
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .filter(|t| t.ends_with("-dlq"))
        .collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    c.subscribe(&names).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let mut text = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            for h in m.headers().iter().flat_map(|h| h.iter()) {
                text.push_str(&format!(
                    "\n{}: {}",
                    h.key,
                    String::from_utf8_lossy(h.value.unwrap_or_default())
                ));
            }
            out.push(format!("{}: {text}", m.topic()));
        }
    }
    out
}

async fn produce(bootstrap: &str, topic: &str, payload: &str) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::<str, str>::to(topic).payload(payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// The log filter of the run: what an operator chasing a problem would set.
const LOG_LEVELS: &str =
    "debug,suppaftp=trace,tokio_postgres=trace,redis=trace,object_store=trace,reqwest=trace,russh=trace";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_admin_answers_metrics_or_dead_letters() {
    let tag = std::process::id();
    let secret = |name: &str| format!("{name}Zq{tag}x7");
    let (pg_recorder, pg_adaptive, pg_commerce) =
        (secret("TsdbPw"), secret("CardDbPw"), secret("ShopDbPw"));
    let (token, redis_pw, aws_secret, minio_secret, ftp_pw, t2a_token) = (
        secret("AdminTok"),
        secret("RedisPw"),
        secret("AwsSecret"),
        secret("MinioSecret"),
        secret("FtpPw"),
        secret("T2aTok"),
    );
    let ftp_ok_pw = secret("FtpOkPw");
    let secrets = [
        &pg_recorder,
        &pg_adaptive,
        &pg_commerce,
        &token,
        &redis_pw,
        &aws_secret,
        &minio_secret,
        &ftp_pw,
        &ftp_ok_pw,
        &t2a_token,
    ];
    let redis = RedisWithPassword::start(&redis_pw);
    let redis_url = format!("redis://:{redis_pw}@127.0.0.1:{}/0", redis.port);
    let ftp_port = refusing_ftp_server().await;
    // Servers that require the keys and the password: objects and a file are transferred.
    let lake = S3Server::start_with_keys(&unique("lake"), "actord-access", &aws_secret);
    let minio = S3Server::start_with_keys("fms-temphum", "minio-access", &minio_secret);
    let ftp = FtpServer::start_with_password(&ftp_ok_pw);
    std::fs::create_dir_all(ftp.root().join("in")).unwrap();
    std::fs::write(ftp.root().join("in/b.bin"), vec![7u8; 300_000]).unwrap();

    // The shipped configuration, with tables of this test's own.
    let schema = unique("secrets").replace('-', "_");
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/supervision.toml")).unwrap();
    let toml = shipped
        .replace(
            "schema = \"public\"                # the seed's",
            &format!("schema = \"{schema}\" #"),
        )
        .replace(
            "[pipelines.adaptive-card]\n",
            &format!(
                "[pipelines.adaptive-card]\nusers_table = \"{schema}_users\"\n\
                 results_table = \"{schema}_results\"\n"
            ),
        );
    assert_ne!(toml, shipped);
    let ftp_port = ftp_port.to_string();
    let mut owned: Vec<(String, String)> = lake
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    owned.extend(ftp.env("REAL_FTP"));
    owned.push(("MINIO_ENDPOINT".into(), minio.endpoint()));
    owned.push(("LAKE_TYPE".into(), "s3".into()));
    owned.push(("LAKE_HOST".into(), lake.bucket.clone()));
    let mut env: Vec<(&str, &str)> = vec![
        ("ACTORD_ADMIN_TOKEN", &token),
        ("TIMESCALEDB_PASSWORD", &pg_recorder),
        ("DB_NAME", "postgres"),
        ("DB_PASSWORD", &pg_adaptive),
        ("POSTGRES_DB", "postgres"),
        ("POSTGRES_PASSWORD", &pg_commerce),
        ("ACTORD_COMMERCE_SCHEMA", &schema),
        ("REDIS_URL", &redis_url),
        ("ACTORD_COMMERCE_REDIS_URL", &redis_url),
        ("AWS_ACCESS_KEY_ID", "actord-access"),
        ("AWS_SECRET_ACCESS_KEY", &aws_secret),
        ("MINIO_ACCESS_KEY", "minio-access"),
        ("MINIO_SECRET_KEY", &minio_secret),
        ("T2A_API_TOKEN", &t2a_token),
        ("ACTORD_ADAPTIVE_CARD_T2A_STANDIN", "true"),
        ("LOCKED_FTP_TYPE", "ftp"),
        ("LOCKED_FTP_HOST", "127.0.0.1"),
        ("LOCKED_FTP_PORT", &ftp_port),
        ("LOCKED_FTP_USER", "actord"),
        ("LOCKED_FTP_PASS", &ftp_pw),
        ("LOCKED_FTP_ROOT", "/data"),
        // Debug everywhere, and trace for the clients that carry a secret.
        ("RUST_LOG", LOG_LEVELS),
    ];
    // The S3 server's own variables in place of the placeholders above.
    env.retain(|(k, _)| !owned.iter().any(|(o, _)| o == k));
    env.extend(owned.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut p = Process::start(&toml, &[], &env);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = match reqwest::get(format!("{}/ready", p.base)).await {
            Ok(r) if r.status() == 200 => break,
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        assert!(Instant::now() < deadline, "not ready: {ready}\n{}", p.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let info: serde_json::Value = serde_json::from_str(&get(&p.base, "/api/info").await.1).unwrap();
    let bootstrap = info["kafka"]["bootstrap"].as_str().unwrap().to_owned();

    // Poison for the DLQs, a job the refusing server fails, one escaping its root.
    produce(&bootstrap, "market.tick", "not a tick").await;
    produce(&bootstrap, "orders", "{\"order_id\": 5}").await;
    let job = |id: &str, path: &str| {
        json!({"job_id": id, "source": {"hostname": "LOCKED_FTP", "path": path},
               "destination": {"hostname": "DEMO_DST", "path": format!("{id}.bin")}})
        .to_string()
    };
    produce(
        &bootstrap,
        "file-transfer-jobs",
        &job("login", "/data/in/a.bin"),
    )
    .await;
    produce(
        &bootstrap,
        "file-transfer-jobs",
        &job("escape", "/data/../etc/passwd"),
    )
    .await;
    let copy = json!({"job_id": "copy", "source": {"hostname": "REAL_FTP", "path": "/in/b.bin"},
                      "destination": {"hostname": "LAKE", "path": "copied/b.bin"}});
    produce(&bootstrap, "file-transfer-jobs", &copy.to_string()).await;
    let mut r = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("adaptive_card_queue")
        .arg("*")
        .arg("data")
        .arg("{not json")
        .query_async(&mut r)
        .await
        .unwrap();
    eprintln!("secrets: ready");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = get(&p.base, "/metrics").await.1;
        let letters: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("actord_dlq_records_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if letters >= 3.0 && p.log().contains("LOCKED_FTP") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{letters} letters\n{}\n{}",
            get(&p.base, "/health").await.1,
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!("secrets: letters written and the login tried");
    // The transfers that need the keys and the password.
    let keys = |server: &S3Server| {
        let store = server.client();
        async move {
            use futures::TryStreamExt;
            store
                .list(None)
                .map_ok(|m| m.location.to_string())
                .try_collect::<Vec<_>>()
                .await
                .unwrap_or_default()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (in_lake, in_minio) = (keys(&lake).await, keys(&minio).await);
        let copied = in_lake.iter().any(|k| k == "copied/b.bin");
        let ticks = in_lake.iter().any(|k| k.ends_with(".parquet"));
        let readings = in_minio.iter().any(|k| k.ends_with(".parquet"));
        if copied && ticks && readings {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "copied {copied}, tick objects {ticks}, reading objects {readings}\n{}",
            get(&p.base, "/health").await.1
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("secrets: objects and the file transferred");
    let deadline = Instant::now() + Duration::from_secs(30);
    let redis_letters: Vec<redis::Value> = loop {
        let v: Vec<redis::Value> = redis::cmd("XRANGE")
            .arg("adaptive_card_queue:dlq")
            .arg("-")
            .arg("+")
            .query_async(&mut r)
            .await
            .unwrap();
        if !v.is_empty() {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no letter in adaptive_card_queue:dlq\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // POSTs: refused without the token and from another origin; no fault injection.
    let restart = "/api/actors/restart?path=/heartbeat/ticker";
    assert_eq!(post(&p.base, restart, None).await.0, 401);
    let foreign = reqwest::Client::new()
        .post(format!("{}{restart}", p.base))
        .bearer_auth(&token)
        .header("X-Actord-Request", "1")
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    assert_eq!(
        post(
            &p.base,
            "/api/actors/fail?path=/heartbeat/ticker",
            Some(&token)
        )
        .await
        .0,
        404
    );
    assert_eq!(post(&p.base, restart, Some(&token)).await.0, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Everything it produced.
    let mut produced = Vec::new();
    for path in [
        "/api/tree",
        "/api/info",
        "/metrics",
        "/health",
        "/ready",
        "/",
    ] {
        produced.push((path.to_owned(), get(&p.base, path).await.1));
    }
    let bs = bootstrap.clone();
    for letter in tokio::task::spawn_blocking(move || dead_letters(&bs))
        .await
        .unwrap()
    {
        produced.push(("a Kafka dead letter".to_owned(), letter));
    }
    produced.push((
        "adaptive_card_queue:dlq".to_owned(),
        format!("{redis_letters:?}"),
    ));
    p.signal("TERM");
    p.wait_exit(Duration::from_secs(60));
    let log = p.log();
    assert!(log.contains("LOCKED_FTP"), "the login was tried: {log}");
    assert!(
        log.contains(" DEBUG ") && log.contains(" TRACE "),
        "the run logged at the debug and trace levels"
    );
    produced.push(("the log".to_owned(), log));
    let (_, out, err) = run_to_end(&["check"], Some(&toml), &env);
    produced.push(("actord check".to_owned(), format!("{out}\n{err}")));
    // A Redis URL that does not parse is reported without its password.
    let bad_url = format!("redis://:{redis_pw}@127.0.0.1:notaport/0");
    let mut bad_env = env.clone();
    bad_env.retain(|(k, _)| *k != "REDIS_URL");
    bad_env.push(("REDIS_URL", &bad_url));
    let (_, out, err) = run_to_end(&["check"], Some(&toml), &bad_env);
    produced.push((
        "actord check with a bad URL".to_owned(),
        format!("{out}\n{err}"),
    ));

    let mut leaks = Vec::new();
    for (origin, text) in &produced {
        for s in &secrets {
            if let Some(at) = text.find(s.as_str()) {
                let from = text[..at]
                    .char_indices()
                    .rev()
                    .nth(120)
                    .map_or(0, |(i, _)| i);
                let to = (at + s.len() + 60).min(text.len());
                let to = (to..text.len())
                    .find(|i| text.is_char_boundary(*i))
                    .unwrap_or(text.len());
                leaks.push(format!("{origin}: …{}…", &text[from..to]));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    eprintln!(
        "secrets: {} secrets, none in {} outputs ({} bytes)",
        secrets.len(),
        produced.len(),
        produced.iter().map(|(_, t)| t.len()).sum::<usize>()
    );
    let db = pg().await;
    let _ = db
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE; DROP TABLE IF EXISTS \"{schema}_users\", \"{schema}_results\""
        ))
        .await;
}
