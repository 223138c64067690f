//! The embedded broker: librdkafka's in-process mock cluster, for the demo and tests only.
//! It keeps at most 5 MiB per partition and loses everything when the process exits.

use std::sync::mpsc;
use std::thread;

use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;
use tracing::info;

enum Cmd {
    CreateTopic(String, i32, mpsc::Sender<Result<(), String>>),
    Stop,
}

/// A running mock cluster. Dropping it stops the cluster.
pub struct EmbeddedKafka {
    bootstrap: String,
    tx: mpsc::Sender<Cmd>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// Starts a one-broker mock cluster on a loopback port.
    pub fn start() -> Result<EmbeddedKafka, String> {
        let (tx, rx) = mpsc::channel::<Cmd>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        // The cluster handle is not Send: one thread owns it for its whole life.
        let thread = thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let producer: BaseProducer = match ClientConfig::new()
                    .set("test.mock.num.brokers", "1")
                    .create()
                {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let Some(cluster) = producer.client().mock_cluster() else {
                    let _ = ready_tx.send(Err("librdkafka did not create a mock cluster".into()));
                    return;
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Cmd::CreateTopic(name, partitions, reply) => {
                            let _ = reply.send(
                                cluster
                                    .create_topic(&name, partitions, 1)
                                    .map_err(|e| e.to_string()),
                            );
                        }
                        Cmd::Stop => break,
                    }
                }
                drop(cluster);
                drop(producer);
            })
            .map_err(|e| e.to_string())?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| "the embedded broker thread died".to_owned())??;
        info!(bootstrap = %bootstrap, "embedded kafka started (in-process mock cluster: demo and tests only, 5 MiB per partition, lost on exit)");
        Ok(EmbeddedKafka {
            bootstrap,
            tx,
            thread: Some(thread),
        })
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (creating an existing one again is harmless).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), String> {
        let (reply, answer) = mpsc::channel();
        self.tx
            .send(Cmd::CreateTopic(name.to_owned(), partitions, reply))
            .map_err(|_| "the embedded broker stopped".to_owned())?;
        answer
            .recv()
            .map_err(|_| "the embedded broker stopped".to_owned())?
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
