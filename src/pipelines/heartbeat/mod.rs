//! The built-in heartbeat pipeline: a ticker publishes a beat to Kafka every interval and a
//! consumer path reads the beats back and counts them. It gives a fresh install data flowing
//! through the whole delivery core (producer, consumer, decoder, buffer, writer, commits) on
//! the embedded broker, and serves as a smoke test of the runtime. With a `schedule` section it
//! also runs a scheduled entry (`/heartbeat/scheduler`) that publishes a marked beat per run.

mod config;
pub mod names;
mod scheduled;
mod sink;
mod ticker;

use std::sync::Arc;
use std::time::Duration;

use actord_actors::buffer::BufferLimits;
use actord_actors::record::{Poison, SourceRecord};
use actord_actors::scheduler::{Scheduler, SchedulerConfig, SchedulerHandle};
use actord_actors::writer::RetryPolicy;
use actord_actors::{ActorPath, ChildSpec, Status, Strategy};
use anyhow::Context;
use ractor::Actor;
use serde::Deserialize;

use super::{HealthCheck, Pipeline, PipelineDef, Resources, TopicSpec};
use crate::config::schedule::{self, ScheduleSettings};
use crate::config::{Check, Config, EnvKey, Section, Unit};
use crate::leases::LeaseKind;
use crate::sources::kafka::path::KafkaPath;
use crate::sources::kafka::producer::PublisherSlot;
use crate::sources::kafka::SourceSettings;
use sink::BeatSink;
use ticker::{Ticker, TickerArgs};

pub use config::*;

pub const DEF: PipelineDef = PipelineDef {
    name: "heartbeat",
    summary:
        "publishes a beat to Kafka every interval and counts the beats it reads back (smoke test)",
    env: &[
        EnvKey::new("INTERVAL_MS", "interval", Unit::Millis),
        EnvKey::new("TOPIC", "topic", Unit::Str),
        EnvKey::new("GROUP_ID", "group", Unit::Str),
    ],
    env_scan: None,
    kafka_keys: Some(super::KafkaKeys {
        topic: ("topic", Unit::Str),
        group: "group",
    }),
    describe_metrics: names::describe,
    section: Section::of::<HeartbeatConfig>(),
    topics,
    build,
};

#[derive(Debug, Clone)]
pub struct HeartbeatConfig {
    pub interval: Duration,
    pub topic: String,
    pub group: String,
    /// The scheduled entry `beat`, when `[pipelines.heartbeat.schedule]` is present.
    pub schedule: Option<ScheduleSettings>,
    /// How long a scheduled run lasts after its beat was delivered.
    pub schedule_hold: Duration,
}

impl HeartbeatConfig {
    pub(crate) fn validate(raw: &RawHeartbeat, check: &mut Check<'_>) -> Self {
        let topic = raw
            .topic
            .clone()
            .unwrap_or_else(|| "actord.heartbeat".to_owned());
        if topic.is_empty() {
            check.problem("pipelines.heartbeat.topic", "expected a topic name");
        }
        let key = "pipelines.heartbeat.schedule";
        let schedule = raw
            .schedule
            .as_ref()
            .and_then(|s| schedule::validate(s, key, check));
        if let Some(s) = &schedule {
            if s.lease != LeaseKind::None && s.lease_url.is_none() {
                check.problem(
                    &format!("{key}.lease_url"),
                    format!(
                        "needed for lease = \"{}\": the heartbeat uses no store of its own",
                        s.lease.as_str()
                    ),
                );
            }
        }
        HeartbeatConfig {
            interval: check.positive_duration(
                "pipelines.heartbeat.interval",
                raw.interval.as_deref(),
                Duration::from_secs(1),
            ),
            topic,
            group: raw
                .group
                .clone()
                .unwrap_or_else(|| "actord-heartbeat".to_owned()),
            schedule,
            schedule_hold: check.duration(
                "pipelines.heartbeat.schedule_hold",
                raw.schedule_hold.as_deref(),
                Duration::ZERO,
            ),
        }
    }
}

/// One beat as published: `{"seq": 42, "at": "2025-11-19T16:12:34.123Z"}`; a scheduled run's
/// beat adds `"scheduled": true`.
#[derive(Debug, Clone, Deserialize)]
pub struct Beat {
    pub seq: u64,
    pub at: String,
    #[serde(default)]
    pub scheduled: bool,
}

/// Decodes a beat; a message that is not one is poison.
pub fn decode(r: &SourceRecord) -> Result<Beat, Poison> {
    super::from_json(r.payload.as_deref().unwrap_or_default())
        .map_err(|e| Poison::new("JsonError", e))
}

fn topics(config: &Config) -> Vec<TopicSpec> {
    let topic = &config.pipelines.get::<HeartbeatConfig>().topic;
    vec![
        TopicSpec {
            name: topic.clone(),
            partitions: 1,
        },
        TopicSpec {
            name: format!("{topic}-dlq"),
            partitions: 1,
        },
    ]
}

fn build(config: &Config, resources: &Resources) -> anyhow::Result<Pipeline> {
    let root = ActorPath::root().child(DEF.name);
    let hb = config.pipelines.get::<HeartbeatConfig>().clone();
    let slot = PublisherSlot::default();
    let publisher = slot.child(resources.kafka.clone());
    let scheduler = match &hb.schedule {
        None => None,
        Some(settings) => {
            let job = scheduled::job(slot.clone(), hb.topic.clone(), hb.schedule_hold);
            let entry = settings
                .entry(scheduled::ENTRY, job)
                .context("opening the schedule's lease store")?;
            let handle = SchedulerHandle::new();
            resources.schedules.register(DEF.name, handle.clone());
            let spec = Scheduler::spec(
                "scheduler",
                SchedulerConfig::new(DEF.name, vec![entry]),
                handle,
            )?;
            Some(config.supervision.child(&root.child("scheduler"), spec))
        }
    };
    let (interval, topic) = (hb.interval, hb.topic.clone());
    let ticker = ChildSpec::worker("ticker", move |ctx| {
        let publisher = slot.get();
        let topic = topic.clone();
        async move {
            let publisher = publisher?;
            let args = TickerArgs {
                probe: ctx.probe,
                interval,
                publisher,
                topic,
            };
            let (actor, _) = Actor::spawn_linked(None, Ticker, args, ctx.supervisor).await?;
            Ok(actor.get_cell())
        }
    })
    // Stopping a ticker cancels a timer, nothing more.
    .shutdown(Duration::from_secs(1));
    let mut source = SourceSettings::new(vec![hb.topic.clone()], hb.group.clone());
    source.max_in_flight_records = 10_000;
    let beats = KafkaPath::<Beat, BeatSink> {
        id: "beats".into(),
        connection: resources.kafka.clone(),
        source,
        decode: Arc::new(decode),
        sink: BeatSink::factory(),
        lanes: 1,
        buffer: BufferLimits {
            max_records: 1_000,
            max_bytes: 1 << 20,
            max_age: Duration::from_millis(200),
        },
        retry: RetryPolicy::default(),
        dlq_suffix: Some("-dlq".into()),
    };
    // Reader first, then the writing side; the ticker holds the publisher's address, so under
    // rest_for_one a publisher restart takes the ticker along and nothing else. The scheduler
    // looks the publisher up at each run, and its handle keeps its state across the restart.
    let mut children = vec![
        beats.child_spec(&root, &config.supervision),
        config
            .supervision
            .child(&root.child("publisher"), publisher),
        config.supervision.child(&root.child("ticker"), ticker),
    ];
    children.extend(scheduler);
    let spec = config.supervision.child(
        &root,
        ChildSpec::supervisor(
            DEF.name,
            config
                .supervision
                .supervisor_spec(&root, Strategy::RestForOne),
            children,
        ),
    );
    let fresh = move |path: ActorPath, component: &'static str| HealthCheck {
        component,
        check: Arc::new(move |registry| {
            registry.get(&path).is_some_and(|p| {
                p.status() == Status::Running
                    && p.since_progress(tokio::time::Instant::now())
                        .is_none_or(|d| d <= interval * 5 + Duration::from_secs(2))
            })
        }),
    };
    Ok(Pipeline {
        spec,
        health: vec![
            fresh(root.child("ticker"), "ticker"),
            fresh(root.child("beats").child("consumer-0"), "consumer"),
        ],
        notes: Arc::new(Vec::new),
    })
}

#[cfg(test)]
mod tests {
    use actord_actors::record::{Origin, Topic};

    use super::*;

    fn record(payload: &[u8]) -> SourceRecord {
        SourceRecord {
            origin: Origin {
                topic: Topic::intern("actord.heartbeat"),
                partition: 0,
                offset: 0,
                epoch: 1,
            },
            key: None,
            payload: Some(payload.to_vec()),
            timestamp_ms: None,
            headers: Vec::new(),
        }
    }

    #[test]
    fn a_beat_decodes() {
        let beat = decode(&record(br#"{"seq": 7, "at": "2025-11-19T16:12:34.123Z"}"#)).unwrap();
        assert_eq!((beat.seq, beat.scheduled), (7, false));
    }

    /// As every decoder: bytes that are not UTF-8 are refused even in a field nobody reads.
    #[test]
    fn a_beat_that_is_not_utf8_is_poison() {
        let p = decode(&record(
            b"{\"seq\": 7, \"at\": \"now\", \"note\": \"\xff\xfe\"}",
        ))
        .unwrap_err();
        assert!(p.message.contains("not UTF-8"), "{p}");
    }
}
