//! Pipeline-agnostic building blocks of actord: the supervisor, the scheduler, actor observation and error kinds.
//!
//! Nothing in this crate talks to a network. Pipelines in the `actord` binary compose these
//! pieces with their own connectors.

pub mod backoff;
pub mod buffer;
pub mod decoder;
pub mod error;
pub mod fence;
pub mod names;
pub mod observe;
pub mod offsets;
pub mod path;
pub mod record;
pub mod scheduler;
pub mod sink;
pub mod spec;
pub mod supervision;
pub mod supervisor;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod writer;

pub use backoff::Backoff;
pub use error::ErrorKind;
pub use fence::Fence;
pub use observe::{ActorKind, ActorSnapshot, Probe, Registry, Status};
pub use path::ActorPath;
pub use scheduler::{
    Entry, Job, RunContext, RunSummary, Schedule, Scheduler, SchedulerConfig, SchedulerHandle,
    SchedulerMsg,
};
pub use spec::{ChildContext, ChildSpec, Restart, Strategy, SupervisorSpec};
pub use supervision::State;
pub use supervisor::{Supervisor, SupervisorArgs, SupervisorError, SupervisorMsg, Supervisors};
