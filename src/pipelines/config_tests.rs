//! Loading `supervision.toml` with the registered pipelines: their sections, environment
//! variables and validation, and every problem named with its origin and key.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use actord_actors::{ActorPath, Restart, Strategy};

use toml::Table;

use super::adaptive_card::{AdaptiveCardConfig, Role};
use super::ftp_sync::FtpSyncConfig;
use super::heartbeat::HeartbeatConfig;
use super::recorder::RecorderConfig;
use super::PipelineDef;
use crate::config::env;
use crate::config::*;

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn sources(f: &tempfile::NamedTempFile, env: &[(&str, &str)]) -> Sources {
    Sources {
        config_path: Some(f.path().to_path_buf()),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Sources::default()
    }
}

fn problems(result: Result<Config, ConfigError>) -> Vec<Problem> {
    result.expect_err("config should be rejected").problems
}

#[test]
fn the_shipped_file_is_valid_and_runs_embedded() {
    let f = file(EMBEDDED);
    let c = load(&sources(&f, &[])).unwrap();
    assert_eq!(
        c.runtime.enabled,
        vec![
            "heartbeat",
            "recorder",
            "ftp-sync",
            "adaptive-card",
            "commerce",
            "backfill"
        ]
    );
    let ac = c.pipelines.get::<AdaptiveCardConfig>();
    assert!(ac.t2a.standin && ac.demo_users > 0 && ac.role == Role::All);
    assert_eq!(ac.db.name, "adaptive_card_db");
    // A real T2A API turns the stand-in off.
    let real = load(&sources(&f, &[("T2A_API_URL", "https://t2a.internal")])).unwrap();
    assert!(!real.pipelines.get::<AdaptiveCardConfig>().t2a.standin);
    assert!(c.pipelines.get::<FtpSyncConfig>().demo);
    assert!(
        c.pipelines
            .get::<crate::pipelines::backfill::BackfillConfig>()
            .demo
    );
    let shop = c
        .pipelines
        .get::<crate::pipelines::commerce::CommerceConfig>();
    assert!(shop.demo);
    assert_eq!(
        (shop.db.database.as_str(), shop.users_key().as_str()),
        ("sesac_db", "cache:users")
    );
    assert!(c.pipelines.get::<RecorderConfig>().s3.enabled);
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:8080");
    assert!(c.pipelines.get::<RecorderConfig>().demo);
    assert_eq!(c.pipelines.get::<RecorderConfig>().db.schema, "public");
    assert_eq!(c.kafka.brokers, Brokers::Embedded);
    assert!(c.admin.token.is_none());
    assert!(!c.admin.fault_injection);
    assert_eq!(
        c.pipelines.get::<HeartbeatConfig>().interval,
        Duration::from_secs(1)
    );
}

#[test]
fn an_empty_file_takes_built_in_defaults() {
    let f = file("");
    let c = load(&sources(&f, &[])).unwrap();
    assert_eq!(c.runtime.enabled, vec!["heartbeat"]);
    assert_eq!(c.runtime.cool_down, Duration::from_secs(30));
    assert_eq!(c.log.format, LogFormat::Text);
}

#[test]
fn precedence_is_flags_then_environment_then_file() {
    let f = file("[admin]\nlisten = \"127.0.0.1:1000\"\n[kafka]\nbrokers = \"file:9092\"\n[pipelines.heartbeat]\ninterval = \"5s\"\n");
    let mut s = sources(
        &f,
        &[
            ("KAFKA_BROKERS", "a:9092,b:9092"),
            ("ACTORD_ADMIN_LISTEN", "127.0.0.1:2000"),
            ("ACTORD_HEARTBEAT_INTERVAL_MS", "250"),
        ],
    );
    let c = load(&s).unwrap();
    assert_eq!(c.kafka.brokers, Brokers::List("a:9092,b:9092".into()));
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:2000");
    assert_eq!(
        c.pipelines.get::<HeartbeatConfig>().interval,
        Duration::from_millis(250)
    );
    s.admin = Some("127.0.0.1:3000".into());
    assert_eq!(load(&s).unwrap().admin.listen.to_string(), "127.0.0.1:3000");
}

#[test]
fn every_problem_is_reported_with_its_key_and_origin() {
    let f = file(
        "[admin]\nlisten = \"nowhere\"\n[runtime]\ncool_down = \"soon\"\n[supervision]\nstrategy = \"one_for_some\"\nbackoff_factor = 50.0\n",
    );
    let p = problems(load(&sources(
        &f,
        &[("ACTORD_HEARTBEAT_INTERVAL_MS", "fast")],
    )));
    let file_name = f.path().display().to_string();
    let keys: Vec<(&str, &str)> = p
        .iter()
        .map(|p| (p.origin.as_str(), p.key.as_str()))
        .collect();
    assert!(
        keys.contains(&(
            "environment variable ACTORD_HEARTBEAT_INTERVAL_MS",
            "pipelines.heartbeat.interval"
        )),
        "{p:?}"
    );
    assert!(
        keys.contains(&(file_name.as_str(), "admin.listen")),
        "{p:?}"
    );
    assert!(
        keys.contains(&(file_name.as_str(), "runtime.cool_down")),
        "{p:?}"
    );
    assert!(
        keys.contains(&(file_name.as_str(), "supervision.strategy")),
        "{p:?}"
    );
    assert!(
        keys.contains(&(file_name.as_str(), "supervision.backoff_factor")),
        "{p:?}"
    );
    assert_eq!(p.len(), 5, "{p:?}");
    let strategy = p.iter().find(|p| p.key == "supervision.strategy").unwrap();
    assert!(
        strategy
            .message
            .contains("one_for_one, one_for_all, rest_for_one"),
        "{}",
        strategy.message
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    let f = file("[pipelines.heartbeat]\nintervall = \"1s\"\n");
    let p = problems(load(&sources(&f, &[])));
    assert_eq!(p[0].key, "pipelines.heartbeat.intervall");
    assert!(p[0].message.contains("unknown field"), "{}", p[0].message);
}

#[test]
fn wrong_types_name_the_key() {
    let f = file("[admin]\nfault_injection = \"yes\"\n");
    let p = problems(load(&sources(&f, &[])));
    assert_eq!(p[0].key, "admin.fault_injection");
}

#[test]
fn bad_toml_names_the_file() {
    let f = file("[admin\n");
    let p = problems(load(&sources(&f, &[])));
    assert_eq!(p[0].origin, f.path().display().to_string());
    assert!(p[0].message.contains("not valid TOML"));
}

#[test]
fn unknown_pipeline_lists_the_valid_names() {
    let f = file("");
    let mut s = sources(&f, &[]);
    s.enable = Some(vec!["heartbeat".into(), "nosuch".into()]);
    let p = problems(load(&s));
    assert_eq!(p[0].origin, "--enable");
    assert!(
        p[0].message
            .contains("unknown pipeline \"nosuch\"; valid names: heartbeat"),
        "{}",
        p[0].message
    );
}

#[test]
fn secrets_are_interpolated_and_never_printed() {
    let f = file("[admin]\ntoken = \"${ADMIN_SECRET}\"\n");
    let c = load(&sources(&f, &[("ADMIN_SECRET", "hunter2")])).unwrap();
    assert_eq!(c.admin.token.as_ref().unwrap().expose(), "hunter2");
    assert!(!format!("{c:?}").contains("hunter2"));
    let p = problems(load(&sources(&f, &[])));
    assert_eq!(p[0].key, "admin.token");
    assert!(p[0].message.contains("${ADMIN_SECRET}"), "{}", p[0].message);
    let from_env = load(&sources(&file(""), &[("ACTORD_ADMIN_TOKEN", "t0k")])).unwrap();
    assert_eq!(from_env.admin.token.unwrap().expose(), "t0k");
}

#[test]
fn supervision_cascades_from_defaults_to_paths() {
    let f = file(
        r#"
[supervision]
max_restarts = 7
shutdown_timeout = "3s"
[pipelines.heartbeat.supervision]
strategy = "rest_for_one"
[pipelines.heartbeat.supervision.paths.ticker]
restart = "transient"
stuck_after = "off"
"#,
    );
    let c = load(&sources(&f, &[])).unwrap();
    let root = ActorPath::parse("/heartbeat").unwrap();
    let spec = c.supervision.supervisor_spec(&root, Strategy::OneForOne);
    assert_eq!(spec.strategy, Strategy::RestForOne);
    assert_eq!(spec.max_restarts, 7);
    let ticker = c.supervision.resolve(&root.child("ticker"));
    assert_eq!(ticker.restart, Some(Restart::Transient));
    assert_eq!(ticker.stuck_after, Some(None));
    assert_eq!(ticker.shutdown_timeout, Some(Duration::from_secs(3)));
    assert_eq!(ticker.strategy, Some(Strategy::RestForOne));
}

#[test]
fn bad_paths_and_nested_paths_are_rejected() {
    let f = file("[pipelines.heartbeat.supervision.paths.\"a b\"]\nrestart = \"sometimes\"\n");
    let p = problems(load(&sources(&f, &[])));
    assert!(p[0].key.contains("paths"), "{p:?}");
    let f = file("[supervision.paths.x]\nrestart = \"temporary\"\n");
    let p = problems(load(&sources(&f, &[])));
    assert_eq!(p[0].key, "supervision.paths");
}

#[test]
fn seed_names_shared_by_enabled_pipelines_are_ambiguous() {
    fn no_build(
        _: &Config,
        _: &crate::pipelines::Resources,
    ) -> anyhow::Result<crate::pipelines::Pipeline> {
        anyhow::bail!("not built in this test")
    }
    fn no_topics(_: &Config) -> Vec<crate::pipelines::TopicSpec> {
        Vec::new()
    }
    const KEYS: &[EnvKey] = &[EnvKey::seed("KAFKA_GROUP_ID", "group", Unit::Str)];
    let a = PipelineDef {
        name: "recorder",
        summary: "",
        env: KEYS,
        env_scan: None,
        kafka_keys: None,
        describe_metrics: || {},
        section: Section::of::<HeartbeatConfig>(),
        topics: no_topics,
        build: no_build,
    };
    let b = PipelineDef {
        name: "backfill",
        summary: "",
        env: KEYS,
        env_scan: None,
        kafka_keys: None,
        describe_metrics: || {},
        section: Section::of::<HeartbeatConfig>(),
        topics: no_topics,
        build: no_build,
    };
    let run = |pairs: &[(&str, &str)], defs: &[&PipelineDef]| {
        let env: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut table = Table::new();
        let mut problems = Vec::new();
        env::apply(
            &mut table,
            &env,
            defs,
            &mut env::Origins::new(),
            &mut problems,
        );
        (table, problems)
    };
    // One owner: the seed name applies to it.
    let (t, p) = run(&[("KAFKA_GROUP_ID", "g1")], &[&a]);
    assert!(p.is_empty());
    assert_eq!(t["pipelines"]["recorder"]["group"].as_str(), Some("g1"));
    // Two owners: an error naming both prefixed forms.
    let (_, p) = run(&[("KAFKA_GROUP_ID", "g1")], &[&a, &b]);
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].origin, "environment variable KAFKA_GROUP_ID");
    assert!(
        p[0].message.contains(
            "unset KAFKA_GROUP_ID (in the environment and any --env-file) and set \
             ACTORD_RECORDER_KAFKA_GROUP_ID for recorder, ACTORD_BACKFILL_KAFKA_GROUP_ID for backfill"
        ),
        "{}",
        p[0].message
    );
    // The prefixed forms always work and win.
    let (t, p) = run(
        &[
            ("ACTORD_BACKFILL_KAFKA_GROUP_ID", "g2"),
            ("ACTORD_RECORDER_KAFKA_GROUP_ID", "g3"),
        ],
        &[&a, &b],
    );
    assert!(p.is_empty());
    assert_eq!(t["pipelines"]["backfill"]["group"].as_str(), Some("g2"));
    assert_eq!(t["pipelines"]["recorder"]["group"].as_str(), Some("g3"));
}

#[test]
fn a_batch_above_the_in_flight_bound_is_rejected() {
    let origins = env::Origins::from([(
        "pipelines.x.batch_size".to_owned(),
        "environment variable BATCH_SIZE".to_owned(),
    )]);
    let mut problems = Vec::new();
    let mut check = Check::new("supervision.toml", &origins, &mut problems);
    crate::sources::kafka::check_batch_fits(
        &mut check,
        "pipelines.x.batch_size",
        500,
        "pipelines.x.max_buffer_size",
        500,
    );
    assert!(problems.is_empty());
    let mut check = Check::new("supervision.toml", &origins, &mut problems);
    crate::sources::kafka::check_batch_fits(
        &mut check,
        "pipelines.x.batch_size",
        501,
        "pipelines.x.max_buffer_size",
        500,
    );
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].origin, "environment variable BATCH_SIZE");
    assert_eq!(problems[0].key, "pipelines.x.batch_size");
    assert!(
        problems[0]
            .message
            .contains("exceeds pipelines.x.max_buffer_size (500)"),
        "{}",
        problems[0].message
    );
}

#[test]
fn the_recorder_seed_variables_override_its_settings() {
    let f = file("[runtime]\nenable = [\"recorder\"]\n");
    let c = load(&sources(
        &f,
        &[
            ("KAFKA_TOPICS", "ticks.a, books.orderbook"),
            ("KAFKA_GROUP_ID", "rec-group"),
            ("BATCH_SIZE", "2000"),
            ("BATCH_TIMEOUT_MS", "250"),
            ("MAX_BUFFER_SIZE", "8000"),
            ("DB_WRITE_WORKERS", "4"),
            ("TIMESCALEDB_HOST", "tsdb"),
            ("TIMESCALEDB_PORT", "5433"),
            ("TIMESCALEDB_PASSWORD", "pw"),
        ],
    ))
    .unwrap();
    let r = &c.pipelines.get::<RecorderConfig>();
    assert_eq!(r.topics, vec!["ticks.a", "books.orderbook"]);
    assert_eq!(r.group, "rec-group");
    assert_eq!(
        (r.batch_size, r.max_buffer_size, r.db_write_workers),
        (2000, 8000, 4)
    );
    assert_eq!(r.batch_timeout, Duration::from_millis(250));
    assert_eq!((r.db.host.as_str(), r.db.port), ("tsdb", 5433));
    assert_eq!(r.db.password.as_ref().unwrap().expose(), "pw");
    assert!(!format!("{c:?}").contains("\"pw\""));
    let p = problems(load(&sources(
        &f,
        &[("BATCH_SIZE", "9000"), ("MAX_BUFFER_SIZE", "8000")],
    )));
    assert_eq!(p[0].origin, "environment variable BATCH_SIZE");
    assert_eq!(p[0].key, "pipelines.recorder.batch_size");
    // The S3 path's batches are capped by the in-flight bound.
    assert_eq!(r.s3.batch_size, 8000);
}

#[test]
fn the_s3_seed_and_aws_variables_override_their_settings() {
    let f = file("[runtime]\nenable = [\"recorder\"]\n");
    let c = load(&sources(
        &f,
        &[
            ("S3_BUCKET", "aipx-data-lake"),
            ("S3_REGION", "ap-northeast-2"),
            ("S3_BATCH_SIZE", "20000"),
            ("S3_BATCH_TIMEOUT_SEC", "7200"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_ACCESS_KEY_ID", "key"),
            ("AWS_SECRET_ACCESS_KEY", "very-secret"),
        ],
    ))
    .unwrap();
    let s3 = &c.pipelines.get::<RecorderConfig>().s3;
    assert!(s3.enabled);
    assert_eq!(
        s3.location,
        crate::sinks::objects::store::Location::Bucket {
            name: "aipx-data-lake".into(),
            region: Some("ap-northeast-2".into())
        }
    );
    assert_eq!(
        (s3.batch_size, s3.batch_timeout),
        (20000, Duration::from_secs(7200))
    );
    assert_eq!(c.s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert!(c.s3.allow_http, "an http:// endpoint allows http");
    assert_eq!(c.s3.access_key_id.as_deref(), Some("key"));
    assert!(!format!("{c:?}").contains("very-secret"));
    let off = load(&sources(&f, &[("S3_WRITE_ENABLED", "false")])).unwrap();
    assert!(!off.pipelines.get::<RecorderConfig>().s3.enabled);
    let p = problems(load(&sources(
        &f,
        &[
            ("AWS_ENDPOINT_URL", "http://x:9000"),
            ("AWS_ALLOW_HTTP", "false"),
        ],
    )));
    assert_eq!(p[0].key, "s3.allow_http");
}

#[test]
fn ftp_sync_servers_come_from_the_seed_registry_variables() {
    let f = file("[runtime]\nenable = [\"ftp-sync\"]\n");
    let c = load(&sources(
        &f,
        &[
            ("SRC_FTP_SERVER1_TYPE", "ftp"),
            ("SRC_FTP_SERVER1_HOST", "ftp.source.com"),
            ("SRC_FTP_SERVER1_PORT", "2121"),
            ("SRC_FTP_SERVER1_USER", "username"),
            ("SRC_FTP_SERVER1_PASS", "password"),
            ("DST_FTP_SERVER1_TYPE", "ftp"),
            ("DST_FTP_SERVER1_HOST", "ftp.dest.com"),
            ("DST_FTP_SERVER1_ROOT", "/data"),
            ("FTP_PASSIVE_MODE", "false"),
            ("DLQ_TOPIC_SUFFIX", ".dead"),
            ("ACTORD_FTP_SYNC_KAFKA_TOPICS", "mem-dft-img,fdry-dft-img"),
            ("SOME_OTHER_TYPE", "mysql"),
        ],
    ))
    .unwrap();
    let fs = &c.pipelines.get::<FtpSyncConfig>();
    assert_eq!(fs.topics, vec!["mem-dft-img", "fdry-dft-img"]);
    assert_eq!(fs.group, "etl-worker-group");
    assert_eq!(fs.dlq_suffix, ".dead");
    assert_eq!(fs.servers.len(), 2, "{:?}", fs.servers.keys());
    let src = &fs.servers["SRC_FTP_SERVER1"];
    assert_eq!(
        (src.host.as_str(), src.port, src.user.as_str()),
        ("ftp.source.com", 2121, "username")
    );
    assert_eq!(src.password.as_ref().unwrap().expose(), "password");
    assert!(!src.passive, "FTP_PASSIVE_MODE applies to every FTP server");
    let dst = &fs.servers["DST_FTP_SERVER1"];
    assert_eq!((dst.port, dst.root.as_deref()), (21, Some("/data")));
    assert!(!format!("{c:?}").contains("\"password\""));
    let p = problems(load(&sources(
        &f,
        &[("BAD_SERVER_TYPE", "ftp"), ("BAD_SERVER_PORT", "21")],
    )));
    assert_eq!(p[0].key, "pipelines.ftp-sync.servers.BAD_SERVER.host");
    // A lone `_TYPE` variable is not a server.
    let lone = load(&sources(&f, &[("MIME_TYPE", "file")])).unwrap();
    assert!(lone.pipelines.get::<FtpSyncConfig>().servers.is_empty());
    // An SFTP server's host key must be pinned, or explicitly not checked.
    let p = problems(load(&sources(
        &f,
        &[("BOX_TYPE", "sftp"), ("BOX_HOST", "sftp.example.com")],
    )));
    assert_eq!(p[0].key, "pipelines.ftp-sync.servers.BOX.host_key");
    let ok = load(&sources(
        &f,
        &[
            ("BOX_TYPE", "sftp"),
            ("BOX_HOST", "sftp.example.com"),
            ("BOX_HOST_KEY", "SHA256:abc"),
            ("BOX_KEY", "/keys/id_ed25519"),
        ],
    ))
    .unwrap();
    let b = &ok.pipelines.get::<FtpSyncConfig>().servers["BOX"];
    assert_eq!(
        (b.port, b.key_file.as_deref()),
        (22, Some("/keys/id_ed25519"))
    );
}

/// The recorder seed's `.env`, every variable it documents.
const RECORDER_SEED_ENV: &[(&str, &str)] = &[
    ("KAFKA_BROKERS", "kafka-1.internal:9092"),
    ("KAFKA_GROUP_ID", "data-recorder-group"),
    ("KAFKA_TOPICS", "market.tick,market.orderbook"),
    ("TIMESCALEDB_HOST", "tsdb.internal"),
    ("TIMESCALEDB_PORT", "5433"),
    ("TIMESCALEDB_USER", "aipx"),
    ("TIMESCALEDB_PASSWORD", "your_password"),
    ("TIMESCALEDB_DB", "aipx_timeseries"),
    ("S3_BUCKET", "aipx-data-lake"),
    ("S3_REGION", "ap-northeast-2"),
    ("S3_WRITE_ENABLED", "true"),
    ("BATCH_SIZE", "1000"),
    ("BATCH_TIMEOUT_MS", "5000"),
    ("S3_BATCH_SIZE", "100000"),
    ("S3_BATCH_TIMEOUT_SEC", "3600"),
    ("NUM_CONSUMERS", "2"),
    ("DB_WRITE_WORKERS", "4"),
    ("MAX_BUFFER_SIZE", "100000"),
];

#[test]
fn the_recorder_seed_environment_runs_beside_ftp_sync() {
    let f = file(EMBEDDED);
    let mut s = sources(&f, RECORDER_SEED_ENV);
    s.enable = Some(vec!["recorder".into(), "ftp-sync".into()]);
    let c = load(&s).expect("the recorder seed's variables are not ambiguous with ftp-sync");
    let r = &c.pipelines.get::<RecorderConfig>();
    assert_eq!(r.group, "data-recorder-group");
    assert_eq!(r.topics, vec!["market.tick", "market.orderbook"]);
    assert_eq!(
        r.db.schema, "public",
        "the seed's queries read unqualified tables"
    );
    let fs = &c.pipelines.get::<FtpSyncConfig>();
    assert_eq!(
        fs.group, "etl-worker-group",
        "KAFKA_GROUP_ID is the recorder's"
    );
    assert_eq!(fs.topics, vec!["file-transfer-jobs"]);
    // Its own prefixed names still reach it.
    let mut env = RECORDER_SEED_ENV.to_vec();
    env.push(("ACTORD_FTP_SYNC_KAFKA_GROUP_ID", "etl-worker-1"));
    let mut s = sources(&f, &env);
    s.enable = Some(vec!["recorder".into(), "ftp-sync".into()]);
    assert_eq!(
        load(&s).unwrap().pipelines.get::<FtpSyncConfig>().group,
        "etl-worker-1"
    );
}

#[test]
fn demo_generators_stay_off_against_a_real_cluster_unless_asked_for() {
    let f = file(EMBEDDED);
    let embedded = load(&sources(&f, &[])).unwrap();
    assert!(
        embedded.pipelines.get::<RecorderConfig>().demo
            && embedded.pipelines.get::<FtpSyncConfig>().demo
    );
    assert!(embedded.runtime.demos_off.is_empty());

    // The recorder seed's KAFKA_GROUP_ID is also the backfill seed's: name the pipelines.
    let seed = |f| {
        let mut s = sources(f, RECORDER_SEED_ENV);
        s.enable = Some(vec![
            "recorder".into(),
            "ftp-sync".into(),
            "commerce".into(),
        ]);
        s
    };
    let real = load(&seed(&f)).unwrap();
    assert!(!real.pipelines.get::<RecorderConfig>().demo);
    assert!(!real.pipelines.get::<FtpSyncConfig>().demo);
    assert!(
        !real
            .pipelines
            .get::<FtpSyncConfig>()
            .servers
            .contains_key("DEMO_SRC"),
        "no demo servers either: a real job cannot name them"
    );
    assert_eq!(
        real.runtime.demos_off,
        vec!["recorder", "ftp-sync", "commerce"]
    );
    assert!(
        !real
            .pipelines
            .get::<crate::pipelines::commerce::CommerceConfig>()
            .demo,
        "the shop's generators publish into a real cluster only when asked"
    );

    let mut s = seed(&f);
    s.demo_into_cluster = true;
    let asked = load(&s).unwrap();
    assert!(
        asked.pipelines.get::<RecorderConfig>().demo && asked.pipelines.get::<FtpSyncConfig>().demo
    );
    assert!(asked.runtime.demos_off.is_empty() && asked.runtime.demo_into_cluster);
    assert!(
        asked
            .pipelines
            .get::<crate::pipelines::commerce::CommerceConfig>()
            .demo
    );

    let cluster = load(&sources(&f, &[("KAFKA_BROKERS", "kafka-1.internal:9092")])).unwrap();
    assert_eq!(
        cluster.runtime.demos_off,
        vec!["recorder", "ftp-sync", "commerce", "backfill"]
    );
    assert!(
        !cluster
            .pipelines
            .get::<crate::pipelines::backfill::BackfillConfig>()
            .demo
    );
}

#[test]
fn an_admin_port_others_can_reach_needs_a_token_or_insecure() {
    let f = file("[admin]\nlisten = \"0.0.0.0:8080\"\n");
    let p = problems(load(&sources(&f, &[])));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "admin.listen");
    assert!(
        p[0].message
            .contains("0.0.0.0:8080 is not a loopback address"),
        "{}",
        p[0].message
    );
    assert!(load(&sources(&f, &[("ACTORD_ADMIN_TOKEN", "t0ken")])).is_ok());
    assert!(load(&sources(&f, &[("ACTORD_ADMIN_INSECURE", "true")])).is_ok());

    let f = file("[admin]\nfault_injection = true\n");
    let p = problems(load(&sources(&f, &[])));
    assert_eq!(p[0].key, "admin.fault_injection");
    assert!(
        p[0].message.contains("needs admin.token"),
        "{}",
        p[0].message
    );
    assert!(load(&sources(&f, &[("ACTORD_ADMIN_TOKEN", "t0ken")])).is_ok());
    let f = file("[admin]\nfault_injection = true\ninsecure = true\n");
    assert!(load(&sources(&f, &[])).is_ok());
}

#[test]
fn the_seeds_container_flags_set_the_one_kafka_pipeline() {
    let f = file(EMBEDDED);
    let mut s = sources(&f, &[]);
    s.enable = Some(vec!["ftp-sync".into()]);
    s.topic = Some("mem-dft-img".into());
    s.group_id = Some("etl-worker-1".into());
    s.bootstrap_servers = Some("kafka-1.internal:9092".into());
    let c = load(&s).unwrap();
    assert_eq!(
        c.pipelines.get::<FtpSyncConfig>().topics,
        vec!["mem-dft-img"]
    );
    assert_eq!(c.pipelines.get::<FtpSyncConfig>().group, "etl-worker-1");
    assert_eq!(
        c.kafka.brokers,
        Brokers::List("kafka-1.internal:9092".into())
    );
    assert_eq!(
        c.runtime.demos_off,
        vec!["ftp-sync"],
        "a real cluster: no demo"
    );

    let mut s = sources(&f, &[]);
    s.enable = Some(vec!["recorder".into(), "ftp-sync".into()]);
    s.topic = Some("mem-dft-img".into());
    let p = problems(load(&s));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].origin, "--topic");
    assert!(
        p[0].message.contains("2 are enabled (recorder, ftp-sync)")
            && p[0].message.contains("ACTORD_FTP_SYNC_KAFKA_TOPICS"),
        "{}",
        p[0].message
    );
}

#[test]
fn ftp_sync_start_position_for_a_group_without_offsets() {
    let f = file("[runtime]\nenable = [\"ftp-sync\"]\n");
    assert!(
        load(&sources(&f, &[]))
            .unwrap()
            .pipelines
            .get::<FtpSyncConfig>()
            .start_earliest
    );
    let c = load(&sources(&f, &[("ACTORD_FTP_SYNC_START_FROM", "latest")])).unwrap();
    assert!(!c.pipelines.get::<FtpSyncConfig>().start_earliest);
    let p = problems(load(&sources(
        &f,
        &[("ACTORD_FTP_SYNC_START_FROM", "middle")],
    )));
    assert_eq!(p[0].key, "pipelines.ftp-sync.start_from");
}

#[test]
fn a_reload_restarts_only_the_pipelines_whose_settings_changed() {
    let base = "[runtime]\nenable = [\"heartbeat\", \"recorder\"]\n\
                [pipelines.recorder]\nbatch_size = 1000\n";
    let old = load(&sources(&file(base), &[])).unwrap();
    // Layout and comments are not settings.
    let same = "# a comment\n[runtime]\nenable = [\"heartbeat\", \"recorder\"]\n\n\
                [pipelines.recorder]\nbatch_size = 1000 # the same\n";
    let mut new = load(&sources(&file(same), &[])).unwrap();
    let r = reload::reconcile(&old, &mut new);
    assert_eq!(r.unchanged, vec!["heartbeat", "recorder"]);
    assert!(!r.changed_anything());
    // A batch size in the file, and the same change through the environment.
    let mut new = load(&sources(&file(&base.replace("1000", "500")), &[])).unwrap();
    let r = reload::reconcile(&old, &mut new);
    assert_eq!(
        (r.restarted.clone(), r.unchanged.clone()),
        (vec!["recorder".to_owned()], vec!["heartbeat".to_owned()])
    );
    let mut new = load(&sources(&file(base), &[("BATCH_SIZE", "500")])).unwrap();
    assert_eq!(
        reload::reconcile(&old, &mut new).restarted,
        vec!["recorder"]
    );
    // [kafka] concerns the pipelines that use Kafka (both do), [supervision] every pipeline.
    let kafka = format!("{base}[kafka]\nlag_per_partition = true\n");
    let mut new = load(&sources(&file(&kafka), &[])).unwrap();
    assert_eq!(
        reload::reconcile(&old, &mut new).restarted,
        vec!["heartbeat", "recorder"]
    );
    let sup = format!("{base}[supervision]\nmax_restarts = 7\n");
    let mut new = load(&sources(&file(&sup), &[])).unwrap();
    assert_eq!(
        reload::reconcile(&old, &mut new).restarted,
        vec!["heartbeat", "recorder"]
    );
    // runtime.enable adds and removes; settings of the process wait for a restart.
    let other = "[runtime]\nenable = [\"recorder\", \"ftp-sync\"]\ncool_down = \"5s\"\n\
                 [admin]\nlisten = \"127.0.0.1:9999\"\n[pipelines.recorder]\nbatch_size = 1000\n";
    let mut new = load(&sources(&file(other), &[])).unwrap();
    let r = reload::reconcile(&old, &mut new);
    assert_eq!(r.added, vec!["ftp-sync"]);
    assert_eq!(r.removed, vec!["heartbeat"]);
    assert_eq!(r.unchanged, vec!["recorder"]);
    assert_eq!(r.needs_restart, vec!["admin.listen", "runtime.cool_down"]);
    assert_eq!(new.admin.listen, old.admin.listen);
    assert_eq!(new.runtime.cool_down, old.runtime.cool_down);
    // --enable pins the set: the file's runtime.enable is not read.
    let pinned = |f: &tempfile::NamedTempFile| Sources {
        enable: Some(vec!["heartbeat".to_owned()]),
        ..sources(f, &[])
    };
    let old = load(&pinned(&file(base))).unwrap();
    let mut new = load(&pinned(&file(other))).unwrap();
    let r = reload::reconcile(&old, &mut new);
    assert_eq!((r.added.len(), r.removed.len()), (0, 0));
    assert_eq!(r.unchanged, vec!["heartbeat"]);
    assert!(r.notes[0].contains("--enable"), "{:?}", r.notes);
}

#[test]
fn commerce_in_production_needs_the_postgres_variables() {
    use crate::pipelines::commerce::CommerceConfig;
    let f = file("[runtime]\nenable = [\"commerce\"]\n");
    let found = problems(load(&sources(&f, &[("DB_TYPE", "production")])));
    let text: Vec<String> = found.iter().map(ToString::to_string).collect();
    for var in ["POSTGRES_HOST", "POSTGRES_USER", "POSTGRES_PASSWORD"] {
        assert!(text.iter().any(|t| t.contains(var)), "{var}: {text:?}");
    }
    let env = [
        ("DB_TYPE", "production"),
        ("POSTGRES_HOST", "db.example"),
        ("POSTGRES_USER", "shop"),
        ("POSTGRES_PASSWORD", "pw"),
        ("CACHE_REFRESH_INTERVAL", "30"),
        ("CACHE_BATCH_SIZE", "500"),
    ];
    let c = load(&sources(&f, &env)).unwrap();
    let cc = c.pipelines.get::<CommerceConfig>();
    assert_eq!(
        (
            cc.db.host.as_str(),
            cc.db.user.as_str(),
            cc.db.database.as_str()
        ),
        ("db.example", "shop", "sesac_db")
    );
    assert_eq!(cc.cache_refresh_interval, Duration::from_secs(30));
    assert_eq!(
        (cc.cache_split_users(), cc.cache_split_products()),
        ((300, 200), (350, 150))
    );
    // Locally the defaults do.
    let local = load(&sources(&f, &[])).unwrap();
    assert_eq!(local.pipelines.get::<CommerceConfig>().db.host, "127.0.0.1");
}

#[test]
fn the_t2a_standin_runs_only_on_the_local_defaults_unless_asked_for() {
    let load_ac = |f: &tempfile::NamedTempFile, env: &[(&str, &str)]| {
        let mut s = sources(f, env);
        s.enable = Some(vec!["adaptive-card".into()]);
        load(&s)
    };
    let f = file(EMBEDDED);
    assert!(load_ac(&f, &[]).is_ok());
    let found = problems(load_ac(&f, &[("DB_NAME", "cards")]));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].key, "pipelines.adaptive-card.t2a.url");
    assert!(found[0].message.contains("(DB_NAME is set)"), "{found:?}");
    let prefixed = problems(load_ac(
        &f,
        &[("ACTORD_ADAPTIVE_CARD_REDIS_URL", "redis://127.0.0.1/2")],
    ));
    assert!(
        prefixed[0]
            .message
            .contains("ACTORD_ADAPTIVE_CARD_REDIS_URL is set"),
        "{prefixed:?}"
    );
    // Services on another host, named in the file.
    let remote = file(&EMBEDDED.replace(
        "redis_url = \"redis://127.0.0.1:6379/0\"",
        "redis_url = \"redis://:pw@redis.internal:6379/0\"",
    ));
    let found = problems(load_ac(&remote, &[]));
    assert!(
        found[0].message.contains("(Redis is on redis.internal)"),
        "{found:?}"
    );
    assert!(!found[0].message.contains("pw"), "{found:?}");
    // Asked for, or a real API named: no refusal.
    let asked = load_ac(
        &f,
        &[
            ("DB_NAME", "cards"),
            ("ACTORD_ADAPTIVE_CARD_T2A_STANDIN", "true"),
        ],
    )
    .unwrap();
    assert!(asked.pipelines.get::<AdaptiveCardConfig>().t2a.standin);
    let real = load_ac(
        &f,
        &[
            ("DB_NAME", "cards"),
            ("T2A_API_URL", "https://t2a.internal"),
        ],
    )
    .unwrap();
    assert!(!real.pipelines.get::<AdaptiveCardConfig>().t2a.standin);
}

#[test]
fn a_fetch_size_librdkafka_would_refuse_is_a_configuration_error() {
    let f = file("[kafka.properties]\n\"fetch.max.bytes\" = \"524288\"\n");
    let p = problems(load(&sources(&f, &[])));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "kafka.properties.\"fetch.max.bytes\"");
    assert!(
        p[0].message.contains("message.max.bytes (1000000)"),
        "{p:?}"
    );
    // Against a larger message.max.bytes set beside it.
    let f = file(
        "[kafka.properties]\n\"fetch.max.bytes\" = \"2000000\"\n\"message.max.bytes\" = \"4000000\"\n",
    );
    let p = problems(load(&sources(&f, &[])));
    assert!(p[0].message.contains("(4000000), found 2000000"), "{p:?}");
    let f = file("[kafka.properties]\n\"message.max.bytes\" = \"lots\"\n");
    let p = problems(load(&sources(&f, &[])));
    assert_eq!(p[0].key, "kafka.properties.\"message.max.bytes\"", "{p:?}");
    // At or above it, and unset, are fine.
    let f = file("[kafka.properties]\n\"fetch.max.bytes\" = \"1048576\"\n");
    load(&sources(&f, &[])).unwrap();
}

#[test]
fn the_recorder_in_flight_bytes_take_a_size_from_the_file_or_the_environment() {
    let f = file("[runtime]\nenable = [\"recorder\"]\n");
    let c = load(&sources(&f, &[])).unwrap();
    assert_eq!(
        c.pipelines.get::<RecorderConfig>().max_in_flight_bytes,
        64 << 20
    );
    let f = file(
        "[runtime]\nenable = [\"recorder\"]\n[pipelines.recorder]\nmax_in_flight_bytes = \"16MiB\"\n",
    );
    let c = load(&sources(&f, &[])).unwrap();
    assert_eq!(
        c.pipelines.get::<RecorderConfig>().max_in_flight_bytes,
        16 << 20
    );
    let f = file(
        "[runtime]\nenable = [\"recorder\"]\n[pipelines.recorder]\nmax_in_flight_bytes = 3000000\n",
    );
    let c = load(&sources(&f, &[])).unwrap();
    assert_eq!(
        c.pipelines.get::<RecorderConfig>().max_in_flight_bytes,
        3_000_000
    );
    let c = load(&sources(
        &f,
        &[("ACTORD_RECORDER_MAX_IN_FLIGHT_BYTES", "4MiB")],
    ))
    .unwrap();
    assert_eq!(
        c.pipelines.get::<RecorderConfig>().max_in_flight_bytes,
        4 << 20
    );
    let p = problems(load(&sources(
        &f,
        &[("ACTORD_RECORDER_MAX_IN_FLIGHT_BYTES", "64 megs")],
    )));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "pipelines.recorder.max_in_flight_bytes");
    assert_eq!(
        p[0].origin,
        "environment variable ACTORD_RECORDER_MAX_IN_FLIGHT_BYTES"
    );
    assert!(p[0].message.contains("found \"64 megs\""), "{p:?}");
    let f = file(
        "[runtime]\nenable = [\"recorder\"]\n[pipelines.recorder]\nmax_in_flight_bytes = \"0MiB\"\n",
    );
    let p = problems(load(&sources(&f, &[])));
    assert_eq!(p[0].key, "pipelines.recorder.max_in_flight_bytes", "{p:?}");
    // A bound that cannot hold one database batch (1,000 records, each counted 1,088 bytes at
    // least), and values of the wrong kind, named with what was found beside other problems.
    let f = file(
        "[runtime]\nenable = [\"recorder\"]\n[pipelines.recorder]\nmax_in_flight_bytes = \"1MiB\"\n",
    );
    let p = problems(load(&sources(&f, &[])));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].key, "pipelines.recorder.max_in_flight_bytes");
    assert!(
        p[0].message
            .contains("pipelines.recorder.batch_size (1000)")
            && p[0].message.contains("expected 1088000 or more"),
        "{p:?}"
    );
    let c = load(&sources(&f, &[("BATCH_SIZE", "900")])).unwrap();
    assert_eq!(
        c.pipelines.get::<RecorderConfig>().max_in_flight_bytes,
        1 << 20
    );
    for (value, found) in [
        ("-5", "found -5"),
        ("1.5e6", "found 1500000"),
        ("true", "found true"),
    ] {
        let f = file(&format!(
            "[runtime]\nenable = [\"recorder\"]\n[pipelines.recorder]\nmax_in_flight_bytes = {value}\nbatch_size = 0\n"
        ));
        let p = problems(load(&sources(&f, &[])));
        assert_eq!(p.len(), 2, "{value}: {p:?}");
        let size = p
            .iter()
            .find(|p| p.key == "pipelines.recorder.max_in_flight_bytes")
            .unwrap_or_else(|| panic!("{value}: {p:?}"));
        assert!(size.message.contains(found), "{value}: {p:?}");
    }
}
