//! Snapshots of actors and the tree `/api/tree` serves.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{ActorKind, Probe, Registry, Status};
use crate::path::ActorPath;
use crate::supervision::SupervisionSnapshot;

impl Registry {
    /// Snapshots of every actor, ordered by path.
    pub fn snapshots(&self) -> Vec<ActorSnapshot> {
        let probes = self.all();
        probes.iter().map(Probe::snapshot).collect()
    }

    /// The tree rooted at `/` (or at the shallowest registered paths); siblings appear in the
    /// order they were first started.
    pub fn tree(&self) -> Vec<TreeNode> {
        let mut probes = self.all();
        // Parents before children (path order), then siblings by first start.
        probes.sort_by_key(|p| (p.path().segments().count(), p.seq()));
        let mut nodes: Vec<TreeNode> = Vec::new();
        for p in probes {
            insert_node(&mut nodes, p.snapshot());
        }
        nodes
    }
}

fn insert_node(nodes: &mut Vec<TreeNode>, snap: ActorSnapshot) {
    for node in nodes.iter_mut() {
        if snap.path.starts_with(&node.actor.path) && snap.path != node.actor.path {
            insert_node(&mut node.children, snap);
            return;
        }
    }
    nodes.push(TreeNode {
        actor: snap,
        children: Vec::new(),
    });
}

/// One actor and its children, as `/api/tree` serves it.
#[derive(Clone, Debug, Serialize)]
pub struct TreeNode {
    #[serde(flatten)]
    pub actor: ActorSnapshot,
    pub children: Vec<TreeNode>,
}

/// The observable state of one actor.
#[derive(Clone, Debug, Serialize)]
pub struct ActorSnapshot {
    pub path: ActorPath,
    pub name: String,
    pub kind: ActorKind,
    pub status: Status,
    pub restarts: u64,
    pub last_error: Option<LastError>,
    /// Why the running actor cannot do its work, if it said so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy: Option<String>,
    pub counters: BTreeMap<String, u64>,
    /// RFC 3339 time of the last recorded progress, if any.
    pub last_progress: Option<String>,
    /// Units of work the actor holds and has not finished.
    pub pending: u64,
    /// An operator paused this actor's subtree (`POST /api/pipelines/<name>/pause`).
    pub paused: bool,
    /// State, backoff, progress age and budget, as the supervisor and the clock see them.
    #[serde(flatten)]
    pub supervision: SupervisionSnapshot,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LastError {
    pub message: String,
    /// RFC 3339 time the error was recorded.
    pub at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_survive_lookup_and_build_a_tree() {
        let reg = Registry::new();
        let root = ActorPath::root();
        let a = root.child("a");
        reg.probe(&root, ActorKind::Supervisor);
        reg.probe(&a, ActorKind::Supervisor).count_restart();
        reg.probe(&a.child("w"), ActorKind::Worker);
        reg.probe(&root.child("b"), ActorKind::Worker);
        assert_eq!(reg.probe(&a, ActorKind::Supervisor).restarts(), 1);
        let tree = reg.tree();
        assert_eq!(tree.len(), 1);
        assert_eq!(tree[0].children.len(), 2);
        assert_eq!(tree[0].children[0].children[0].actor.name, "w");
        reg.remove_subtree(&a);
        assert!(reg.get(&a.child("w")).is_none());
        assert!(reg.get(&root.child("b")).is_some());
    }
}
