//! Stable actor paths such as `/recorder/timescale/writer`.

use std::fmt;

use serde::{Serialize, Serializer};

/// The stable address of an actor in the tree: its name in the admin tree, in metric labels
/// and in log fields. The root is `/`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActorPath(String);

impl ActorPath {
    /// The root of the tree.
    pub fn root() -> Self {
        ActorPath("/".to_owned())
    }

    /// Parses a path given by an operator (`/a/b`, trailing slash tolerated).
    pub fn parse(raw: &str) -> Option<Self> {
        let trimmed = raw.trim();
        if !trimmed.starts_with('/') {
            return None;
        }
        let segments: Vec<&str> = trimmed.split('/').filter(|s| !s.is_empty()).collect();
        if segments.iter().any(|s| !valid_segment(s)) {
            return None;
        }
        Some(Self::from_segments(&segments))
    }

    fn from_segments(segments: &[&str]) -> Self {
        if segments.is_empty() {
            Self::root()
        } else {
            ActorPath(format!("/{}", segments.join("/")))
        }
    }

    /// The path of a child named `segment` under this one.
    ///
    /// # Panics
    /// When `segment` is empty or contains `/`: child names are chosen by code, not by users.
    pub fn child(&self, segment: &str) -> Self {
        assert!(valid_segment(segment), "invalid actor name {segment:?}");
        if self.is_root() {
            ActorPath(format!("/{segment}"))
        } else {
            ActorPath(format!("{}/{segment}", self.0))
        }
    }

    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }

    /// The parent path, `None` for the root.
    pub fn parent(&self) -> Option<Self> {
        if self.is_root() {
            return None;
        }
        let segments: Vec<&str> = self.segments().collect();
        Some(Self::from_segments(&segments[..segments.len() - 1]))
    }

    /// The last segment (the child id in its supervisor), empty for the root.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }

    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }

    /// The first segment: the pipeline an actor belongs to.
    pub fn pipeline(&self) -> Option<&str> {
        self.segments().next()
    }

    /// True when `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &ActorPath) -> bool {
        other.is_root()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl fmt::Display for ActorPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ActorPath {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_splits_paths() {
        let p = ActorPath::root().child("recorder").child("timescale");
        assert_eq!(p.as_str(), "/recorder/timescale");
        assert_eq!(p.name(), "timescale");
        assert_eq!(p.pipeline(), Some("recorder"));
        assert_eq!(p.parent().unwrap().as_str(), "/recorder");
        assert_eq!(p.parent().unwrap().parent().unwrap(), ActorPath::root());
        assert_eq!(ActorPath::root().parent(), None);
    }

    #[test]
    fn parses_operator_input() {
        assert_eq!(ActorPath::parse("/a/b/").unwrap().as_str(), "/a/b");
        assert_eq!(ActorPath::parse("/").unwrap(), ActorPath::root());
        assert!(ActorPath::parse("a/b").is_none());
        assert!(ActorPath::parse("/a/b c").is_none());
    }

    #[test]
    fn prefix_is_segment_aware() {
        let a = ActorPath::parse("/rec").unwrap();
        assert!(ActorPath::parse("/rec/x").unwrap().starts_with(&a));
        assert!(!ActorPath::parse("/recorder").unwrap().starts_with(&a));
        assert!(a.starts_with(&ActorPath::root()));
    }
}
