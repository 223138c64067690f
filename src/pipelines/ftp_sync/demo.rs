//! `/ftp-sync/demo`: writes small files into the demo source directory and publishes a job
//! per file that moves it into the demo destination directory.

use std::path::PathBuf;
use std::time::Duration;

use actord_actors::{ActorPath, ChildSpec, Probe};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::json;

use super::{FtpSyncConfig, DEMO_DESTINATION, DEMO_SOURCE};
use crate::config::Config;
use crate::pipelines::Resources;
use crate::sources::kafka::producer::{Publication, PublisherMsg, PublisherSlot};

pub fn child(root: &ActorPath, config: &Config, resources: &Resources) -> ChildSpec {
    let slot = PublisherSlot::default();
    let publisher = slot.child(resources.kafka.clone());
    let c = config.pipelines.get::<FtpSyncConfig>().clone();
    let dir: PathBuf = c.servers[DEMO_SOURCE]
        .root
        .clone()
        .unwrap_or_default()
        .into();
    let generator = ChildSpec::worker("generator", move |ctx| {
        let publisher = slot.get();
        let (topic, rate, dir) = (c.topics[0].clone(), c.demo_rate, dir.clone());
        async move {
            let args = JobsArgs {
                probe: ctx.probe,
                publisher: publisher?,
                topic,
                rate,
                dir,
            };
            let (actor, _) = Actor::spawn_linked(None, Jobs, args, ctx.supervisor).await?;
            Ok(actor.get_cell())
        }
    });
    crate::pipelines::demo_subtree(root, config, publisher, generator)
}

pub struct Jobs;

pub struct JobsArgs {
    probe: Probe,
    publisher: ActorRef<PublisherMsg>,
    topic: String,
    rate: u32,
    /// The demo source server's directory.
    dir: PathBuf,
}

pub struct JobsState {
    args: JobsArgs,
    seq: u64,
}

impl Actor for Jobs {
    type Msg = ();
    type State = JobsState;
    type Arguments = JobsArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        args: JobsArgs,
    ) -> Result<JobsState, ActorProcessingErr> {
        myself.send_after(Duration::from_millis(200), || ());
        Ok(JobsState { args, seq: 0 })
    }

    async fn handle(
        &self,
        myself: ActorRef<()>,
        _: (),
        state: &mut JobsState,
    ) -> Result<(), ActorProcessingErr> {
        if state.args.probe.is_paused() {
            myself.send_after(Duration::from_millis(200), || ());
            return Ok(());
        }
        state.seq += 1;
        let seq = state.seq;
        let name = format!("file-{seq:06}.bin");
        let incoming = state.args.dir.join("incoming");
        tokio::fs::create_dir_all(&incoming).await?;
        // Sizes from 1 KiB to 64 KiB; the content is derived from the sequence number.
        let size = 1024 * (1 + (seq * 7919 % 64) as usize);
        let content: Vec<u8> = (0..size).map(|i| (i as u64 ^ seq) as u8).collect();
        tokio::fs::write(incoming.join(&name), content).await?;
        let day = chrono::Utc::now().format("%Y-%m-%d");
        let job = json!({
            "job_id": format!("demo-{seq}"),
            "source": {"hostname": DEMO_SOURCE, "path": format!("/incoming/{name}")},
            "destination": {"hostname": DEMO_DESTINATION, "path": format!("/archive/{day}/{name}")},
        });
        let publication = Publication {
            topic: state.args.topic.clone(),
            key: Some(name.into_bytes()),
            payload: serde_json::to_vec(&job)?,
            headers: Vec::new(),
        };
        state
            .args
            .publisher
            .cast(PublisherMsg::Publish(publication, None))
            .map_err(|_| "the publisher is gone")?;
        state.args.probe.progress(1, size as u64);
        let every = Duration::from_secs_f64(1.0 / state.args.rate.max(1) as f64);
        myself.send_after(every, || ());
        Ok(())
    }
}
