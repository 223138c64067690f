//! The transfer-job message: `{"job_id"?, "source": {"hostname", "path"},
//! "destination": {"hostname", "path"}}`. A missing `job_id` gets a UUID. Everything that
//! can be known about a job before touching a server is checked here: a job that fails these
//! checks is poison and goes to the DLQ at once.

use std::collections::BTreeMap;

use actord_actors::record::{Poison, SourceRecord};
use serde::Deserialize;

use crate::pipelines::from_json;
use crate::sinks::files::normalise;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The server's name as jobs use it (`SRC_FTP_SERVER1`).
    pub hostname: String,
    /// Normalised, absolute, inside the server's root.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: String,
    pub source: Endpoint,
    pub destination: Endpoint,
}

#[derive(Deserialize)]
struct RawJob {
    job_id: Option<serde_json::Value>,
    source: Option<RawEndpoint>,
    destination: Option<RawEndpoint>,
}

#[derive(Deserialize)]
struct RawEndpoint {
    hostname: Option<String>,
    path: Option<String>,
}

/// What the decoder knows about the servers: each name and its root, if any.
pub type Roots = BTreeMap<String, Option<String>>;

pub fn decode(r: &SourceRecord, servers: &Roots) -> Result<Job, Poison> {
    let payload = match r.payload.as_deref() {
        None | Some([]) => return Err(Poison::new("EmptyMessage", "the message has no payload")),
        Some(p) => p,
    };
    let raw: RawJob = from_json(payload)
        .map_err(|e| Poison::new("InvalidJson", format!("not a transfer job: {e}")))?;
    let id = match raw.job_id {
        None | Some(serde_json::Value::Null) => uuid::Uuid::new_v4().to_string(),
        // Control characters would reach log lines and the DLQ's readers as they are.
        Some(serde_json::Value::String(s))
            if !s.trim().is_empty() && !s.chars().any(char::is_control) =>
        {
            s
        }
        Some(other) => {
            return Err(Poison::new(
                "InvalidField",
                format!(
                    "job_id must be a non-empty string without control characters, found {other}"
                ),
            ))
        }
    };
    let source = endpoint("source", raw.source, servers)?;
    let destination = endpoint("destination", raw.destination, servers)?;
    // Writing a file onto itself would truncate the source before it is read.
    if source == destination {
        return Err(Poison::new(
            "SameFile",
            format!(
                "source and destination are the same file ({} on {})",
                source.path, source.hostname
            ),
        ));
    }
    Ok(Job {
        id,
        source,
        destination,
    })
}

fn endpoint(side: &str, raw: Option<RawEndpoint>, servers: &Roots) -> Result<Endpoint, Poison> {
    let missing = |field: &str| Poison::new("MissingField", format!("{side}.{field} is required"));
    let raw = raw.ok_or_else(|| missing("hostname"))?;
    let hostname = raw
        .hostname
        .filter(|h| !h.trim().is_empty())
        .ok_or_else(|| missing("hostname"))?;
    let path = raw
        .path
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| missing("path"))?;
    let root = servers.get(&hostname).ok_or_else(|| {
        Poison::new(
            "UnknownHostname",
            format!("{side}.hostname {hostname:?} is not a configured server"),
        )
    })?;
    let path = normalise(&path, root.as_deref()).map_err(|e| Poison::new(e.class, e.message))?;
    Ok(Endpoint { hostname, path })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actord_actors::record::{Origin, Topic};

    fn record(payload: &str) -> SourceRecord {
        SourceRecord {
            origin: Origin {
                topic: Topic::intern("file-transfer-jobs"),
                partition: 0,
                offset: 0,
                epoch: 1,
            },
            key: None,
            payload: Some(payload.as_bytes().to_vec()),
            timestamp_ms: None,
            headers: Vec::new(),
        }
    }

    fn servers() -> Roots {
        BTreeMap::from([
            ("SRC".to_owned(), None),
            ("DST".to_owned(), Some("/data".to_owned())),
        ])
    }

    #[test]
    fn a_job_decodes_with_normalised_paths() {
        let job = decode(
            &record(r#"{"job_id": "j1", "source": {"hostname": "SRC", "path": "/in//a/../b.csv"}, "destination": {"hostname": "DST", "path": "out/b.csv"}}"#),
            &servers(),
        )
        .unwrap();
        assert_eq!(job.id, "j1");
        assert_eq!(job.source.path, "/in/b.csv");
        assert_eq!(job.destination.path, "/data/out/b.csv");
        // Without a root, a relative path is the login directory's.
        let job = decode(
            &record(r#"{"source": {"hostname": "SRC", "path": "in/a.csv"}, "destination": {"hostname": "DST", "path": "b.csv"}}"#),
            &servers(),
        )
        .unwrap();
        assert_eq!(job.source.path, "in/a.csv");
    }

    #[test]
    fn a_missing_job_id_gets_a_uuid() {
        let job = decode(
            &record(r#"{"source": {"hostname": "SRC", "path": "/a"}, "destination": {"hostname": "DST", "path": "/data/a"}}"#),
            &servers(),
        )
        .unwrap();
        assert!(uuid::Uuid::parse_str(&job.id).is_ok(), "{}", job.id);
    }

    #[test]
    fn bad_jobs_are_poison_with_a_reason() {
        let cases = [
            ("", "EmptyMessage"),
            ("{nope", "InvalidJson"),
            (
                r#"{"source": {"hostname": "SRC", "path": "/a"}}"#,
                "MissingField",
            ),
            (
                r#"{"source": {"hostname": "SRC"}, "destination": {"hostname": "DST", "path": "/data/a"}}"#,
                "MissingField",
            ),
            (
                r#"{"source": {"hostname": "NOPE", "path": "/a"}, "destination": {"hostname": "DST", "path": "/data/a"}}"#,
                "UnknownHostname",
            ),
            (
                r#"{"source": {"hostname": "SRC", "path": "/a"}, "destination": {"hostname": "DST", "path": "/data/../etc/passwd"}}"#,
                "PathOutsideRoot",
            ),
            (
                r#"{"job_id": 5, "source": {"hostname": "SRC", "path": "/a"}, "destination": {"hostname": "DST", "path": "/data/a"}}"#,
                "InvalidField",
            ),
            (
                r#"{"job_id": "j\n2025-01-01 INFO forged line", "source": {"hostname": "SRC", "path": "/a"}, "destination": {"hostname": "DST", "path": "/data/a"}}"#,
                "InvalidField",
            ),
            (
                r#"{"source": {"hostname": "SRC", "path": "in\\x.csv"}, "destination": {"hostname": "DST", "path": "/data/a"}}"#,
                "InvalidPath",
            ),
            (
                r#"{"source": {"hostname": "SRC", "path": "/a"}, "destination": {"hostname": "DST", "path": "/data"}}"#,
                "InvalidPath",
            ),
            (
                r#"{"source": {"hostname": "DST", "path": "x.csv"}, "destination": {"hostname": "DST", "path": "/data/./x.csv"}}"#,
                "SameFile",
            ),
        ];
        for (payload, class) in cases {
            let err = decode(&record(payload), &servers()).unwrap_err();
            assert_eq!(err.class, class, "{payload}");
        }
    }

    use crate::pipelines::poison::{self, Field, Rng, Shape};
    use serde_json::{json, Map, Value};

    fn segments(rng: &mut Rng) -> String {
        (0..1 + rng.below(4))
            .map(|_| rng.alnum(10))
            .collect::<Vec<_>>()
            .join("/")
    }

    fn good_job(rng: &mut Rng) -> (Map<String, Value>, Job) {
        let id = rng.text(20);
        // No root: absolute or relative as given. Root /data: relative paths go under it.
        let source = segments(rng);
        let source = if rng.one_in(2) {
            format!("/{source}")
        } else {
            source
        };
        let destination = segments(rng);
        let (sent, normal) = if rng.one_in(2) {
            (
                format!("/data/{destination}"),
                format!("/data/{destination}"),
            )
        } else {
            (destination.clone(), format!("/data/{destination}"))
        };
        let m = json!({
            "job_id": id,
            "source": {"hostname": "SRC", "path": source},
            "destination": {"hostname": "DST", "path": sent},
        });
        let job = Job {
            id,
            source: Endpoint {
                hostname: "SRC".into(),
                path: source,
            },
            destination: Endpoint {
                hostname: "DST".into(),
                path: normal,
            },
        };
        (m.as_object().unwrap().clone(), job)
    }

    #[test]
    fn generated_malformed_jobs_are_all_poison_and_good_ones_decode() {
        let shape = Shape {
            fields: vec![("source", Field::Object), ("destination", Field::Object)],
            rules: vec![
                ("job_id", json!(5)),
                ("job_id", json!("")),
                ("job_id", json!("  ")),
                ("job_id", json!("a\nb")),
                ("job_id", json!(["j"])),
                ("source", json!({"hostname": "NOPE", "path": "/a"})),
                ("source", json!({"hostname": "SRC"})),
                ("source", json!({"path": "/a"})),
                ("source", json!({"hostname": "", "path": "/a"})),
                ("source", json!({"hostname": 5, "path": "/a"})),
                ("source", json!({"hostname": "SRC", "path": ["a"]})),
                ("source", json!({"hostname": "SRC", "path": "../x"})),
                ("source", json!({"hostname": "SRC", "path": "a\\b"})),
                ("source", json!({"hostname": "SRC", "path": "/"})),
                ("source", json!({"hostname": "SRC", "path": "a\u{1}b"})),
                (
                    "destination",
                    json!({"hostname": "DST", "path": "/data/../etc/passwd"}),
                ),
                ("destination", json!({"hostname": "DST", "path": "../../x"})),
                (
                    "destination",
                    json!({"hostname": "DST", "path": "/etc/passwd"}),
                ),
                ("destination", json!({"hostname": "DST", "path": "/data"})),
                ("destination", json!({"hostname": "DST", "path": " "})),
            ],
        };
        let tally = poison::run(21, &shape, good_job, |payload| {
            decode(&poison::record("file-transfer-jobs", payload), &servers())
        });
        eprintln!("transfer jobs: {tally:?}");
    }
}
