//! What flows through a pipeline: source records with their origin, decoded envelopes, batches,
//! acknowledgements and dead letters.

use std::fmt;
use std::sync::Arc;

/// An interned topic (or stream) name: `Copy`, compared and hashed by identity, so origins
/// move between actors without reference counting. Names are few and live for the process.
#[derive(Clone, Copy)]
pub struct Topic(&'static str);

impl Topic {
    /// The one `Topic` for `name`.
    pub fn intern(name: &str) -> Topic {
        static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
        let mut names = NAMES.lock().expect("topic interner lock");
        if let Some(t) = names.iter().find(|t| **t == name) {
            return Topic(t);
        }
        let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
        names.push(leaked);
        Topic(leaked)
    }

    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

impl PartialEq for Topic {
    fn eq(&self, other: &Topic) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}

impl Eq for Topic {}

impl PartialOrd for Topic {
    fn partial_cmp(&self, other: &Topic) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Topic {
    fn cmp(&self, other: &Topic) -> std::cmp::Ordering {
        self.0.cmp(other.0)
    }
}

impl std::hash::Hash for Topic {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.0.as_ptr() as usize).hash(state)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Where a record came from: enough to acknowledge it to its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub topic: Topic,
    pub partition: i32,
    pub offset: i64,
    /// The assignment of the partition the record was read under; acks from an older
    /// assignment are ignored.
    pub epoch: u64,
}

/// Acknowledges records to the source that produced them. Cheap to clone.
#[derive(Clone)]
pub struct Acker(Arc<dyn Fn(Vec<Origin>) + Send + Sync>);

impl Acker {
    pub fn new(f: impl Fn(Vec<Origin>) + Send + Sync + 'static) -> Self {
        Acker(Arc::new(f))
    }

    pub fn ack(&self, origins: Vec<Origin>) {
        if !origins.is_empty() {
            (self.0)(origins)
        }
    }

    pub fn same(&self, other: &Acker) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Acker")
    }
}

/// A record as read from its source, before decoding.
#[derive(Clone, Debug)]
pub struct SourceRecord {
    pub origin: Origin,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Milliseconds since the Unix epoch, when the source has a timestamp.
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// What a record costs in memory while it is in flight, besides its bytes
/// ([`SourceRecord::size`]): the record itself and its decoded form in the buffers and
/// writers, the slots of the vectors that hold them, its offset entry and the allocator's
/// share. Measured with the recorder's ticks (about 140 bytes each) held in flight as a path
/// holds them (README, "Bounded memory"). The in-flight byte bounds count it per record.
pub const IN_FLIGHT_OVERHEAD: usize = 1024;

/// What [`SourceRecord::size`] counts for a record's fixed part, whatever its bytes.
pub const RECORD_FIXED_SIZE: usize = 64;

/// The least a record is counted in flight: an empty one.
pub const MIN_IN_FLIGHT_SIZE: usize = RECORD_FIXED_SIZE + IN_FLIGHT_OVERHEAD;

impl SourceRecord {
    /// The record's bytes (payload, key and headers, and a small fixed part), for batch
    /// sizes and progress.
    pub fn size(&self) -> usize {
        self.payload.as_ref().map_or(0, Vec::len)
            + self.key.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + RECORD_FIXED_SIZE
    }

    /// What the record holds in memory while in flight: its bytes plus
    /// [`IN_FLIGHT_OVERHEAD`]. In-flight byte bounds count this.
    pub fn in_flight_size(&self) -> usize {
        self.size() + IN_FLIGHT_OVERHEAD
    }
}

/// A decoded record with its source record (kept for dead-lettering) and how to ack it.
#[derive(Debug)]
pub struct Envelope<R> {
    pub record: R,
    pub source: SourceRecord,
    pub acker: Acker,
    /// Bytes counted against buffer and in-flight bounds.
    pub bytes: usize,
}

/// What a buffer holds: a decoded record, or a poison record on its way to the dead-letter
/// queue. Poison travels with the good records of its partition so that no sink can make a
/// later offset durable before the dead-letter queue holds the earlier poison record.
#[derive(Debug)]
pub enum Item<R> {
    Good(Envelope<R>),
    Poison(DeadLetter),
}

impl<R> Item<R> {
    pub fn origin(&self) -> &Origin {
        match self {
            Item::Good(e) => &e.source.origin,
            Item::Poison(d) => &d.source.origin,
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            Item::Good(e) => e.bytes,
            Item::Poison(d) => d.source.size(),
        }
    }
}

/// A batch handed from a buffer to a writer. Items of one partition are in offset order.
#[derive(Debug)]
pub struct Batch<R> {
    pub id: u64,
    pub items: Vec<Item<R>>,
    pub bytes: usize,
    /// Whether its buffer sent more batches after this one.
    pub queued: Queued,
}

/// A batch's place in the sequence its buffer sent: the writer learns from it whether more
/// batches are already on their way behind the one it handles (see [`crate::writer`]'s group
/// commit). The default knows of none.
#[derive(Clone, Debug, Default)]
pub struct Queued {
    seq: u64,
    sent: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl Queued {
    /// The next batch of a buffer that counts what it sent in `sent`; call it right before
    /// sending the batch.
    pub fn next(sent: &Arc<std::sync::atomic::AtomicU64>) -> Queued {
        let seq = sent.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        Queued {
            seq,
            sent: Some(sent.clone()),
        }
    }

    /// The buffer sent another batch after this one (it is in the writer's mailbox or about
    /// to be).
    pub fn more_behind(&self) -> bool {
        self.sent
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Acquire) > self.seq)
    }
}

/// Why a record cannot be processed: it goes to the dead-letter queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Poison {
    /// A short class of failure, e.g. `DecodeError`, `MissingField`, `UnknownServer`.
    pub class: String,
    pub message: String,
}

impl Poison {
    pub fn new(class: impl Into<String>, message: impl Into<String>) -> Self {
        Poison {
            class: class.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Poison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

/// The most of a poison record's error text that a dead letter carries: a decoder's message may
/// quote the whole record.
pub const MAX_ERROR_BYTES: usize = 4096;

impl Poison {
    /// `<class>: <message>`, cut to [`MAX_ERROR_BYTES`].
    pub fn bounded_text(&self) -> String {
        bounded(&self.to_string(), MAX_ERROR_BYTES)
    }

    /// The message alone, cut to [`MAX_ERROR_BYTES`].
    pub fn bounded_message(&self) -> String {
        bounded(&self.message, MAX_ERROR_BYTES)
    }
}

/// `text` cut to at most `max` bytes (on a character boundary), saying how much was left out.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end)
}

/// A record on its way to the dead-letter queue; acked to its source once the DLQ holds it.
#[derive(Debug)]
pub struct DeadLetter {
    pub source: SourceRecord,
    pub acker: Acker,
    pub poison: Poison,
    /// The pipeline stage that rejected it: `decode` or `sink`.
    pub stage: &'static str,
    /// Attempts made before giving up.
    pub retry_count: u32,
}

/// Messages to a dead-letter queue actor.
// Nearly every message is a `Send`; boxing the letter would cost an allocation each for the
// sake of the rare `Failed`.
#[allow(clippy::large_enum_variant)]
pub enum DlqMsg {
    /// Write the record to the DLQ, ack it to its source, then answer `done` (if given).
    Send(DeadLetter, Option<ractor::RpcReplyPort<()>>),
    /// Sent by a DLQ actor's own delivery task that gave up on a letter: the actor fails, so its
    /// path restarts and the letter is read again.
    Failed(String),
}

/// Messages from a source to its decoder.
pub enum SourceMsg {
    /// Records in source order, with the acker of the source that read them.
    Records(Vec<SourceRecord>, Acker),
    /// These partitions were taken away: drop what is buffered for them (up to `epoch`).
    Revoked(Vec<(Topic, i32, u64)>),
    /// The source reached its in-flight bound: flush every buffer now.
    FlushNow,
}
