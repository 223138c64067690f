//! File transports behind one trait: `ftp`, `ftps` (explicit TLS), `s3` and `file` (a local
//! directory). A transfer streams from one transport into another through a small pipe, stages
//! the upload under a temporary name, verifies it, then renames it into place.

pub mod ftp;
pub mod local;
pub mod pool;
pub mod s3;
pub mod sftp;

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};

/// Why a file operation failed; `permanent` failures are about this job (a missing file, a
/// refused path) and are not retried, the others are about the server or the network.
/// `misconfigured` failures are about how the server is configured here (a refused login, a
/// host key or certificate that does not verify, a missing key file): retrying soon cannot help,
/// and neither the job nor an outage is to blame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferError {
    pub permanent: bool,
    pub misconfigured: bool,
    /// A short class for the DLQ message, e.g. `FileNotFound`, `ConnectionRefused`.
    pub class: &'static str,
    pub message: String,
}

impl TransferError {
    pub fn permanent(class: &'static str, message: impl Into<String>) -> Self {
        TransferError {
            permanent: true,
            misconfigured: false,
            class,
            message: message.into(),
        }
    }

    pub fn transient(class: &'static str, message: impl Into<String>) -> Self {
        TransferError {
            permanent: false,
            misconfigured: false,
            class,
            message: message.into(),
        }
    }

    pub fn misconfigured(class: &'static str, message: impl Into<String>) -> Self {
        TransferError {
            permanent: false,
            misconfigured: true,
            class,
            message: message.into(),
        }
    }
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

impl std::error::Error for TransferError {}

/// How an upload reaches its final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Staging {
    /// Under a hidden temporary name, verified, then renamed into place: readers never see a
    /// partial file.
    #[default]
    Rename,
    /// Straight to the final name, as the original service wrote: for upload-only accounts and
    /// servers that refuse renames. A failed transfer can leave a partial file until it is
    /// retried.
    Direct,
}

impl Staging {
    /// The name an upload of `path` is written under.
    pub fn name(self, path: &str) -> String {
        match self {
            Staging::Rename => temp_name(path),
            Staging::Direct => path.to_owned(),
        }
    }
}

/// An upload written under a temporary name, not yet visible under its final one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub temp: String,
    pub bytes: u64,
}

pub type Reader<'a> = &'a mut (dyn AsyncRead + Send + Unpin);
pub type Writer<'a> = &'a mut (dyn AsyncWrite + Send + Unpin);

/// One server. Implementations pool their connections and are shared by concurrent transfers.
/// Paths given to them are already normalised: absolute, or relative to the login directory.
pub trait Transport: Send + Sync {
    /// `ftp://user@host:21` and the like, never with a password.
    fn describe(&self) -> String;

    /// The size of a file, `None` when the server cannot tell (the transfer then relies on the
    /// byte count alone).
    fn size<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<u64>, TransferError>>;

    /// Streams a file into `out`; returns the bytes read.
    fn download<'a>(
        &'a self,
        path: &'a str,
        out: Writer<'a>,
    ) -> BoxFuture<'a, Result<u64, TransferError>>;

    /// Writes `input` under a temporary name next to `path` (or under `path` itself with
    /// [`Staging::Direct`]), creating directories as needed.
    fn upload<'a>(
        &'a self,
        path: &'a str,
        input: Reader<'a>,
        staging: Staging,
    ) -> BoxFuture<'a, Result<Staged, TransferError>>;

    /// Moves a staged upload to its final name, replacing what is there.
    fn commit<'a>(
        &'a self,
        staged: &'a Staged,
        path: &'a str,
    ) -> BoxFuture<'a, Result<(), TransferError>>;

    /// Removes a staged upload (best effort).
    fn discard<'a>(&'a self, staged: &'a Staged) -> BoxFuture<'a, ()>;

    /// Checks that the server answers and accepts the credentials.
    fn probe(&self) -> BoxFuture<'_, Result<(), TransferError>>;

    /// Removes staged uploads ([`is_staged_name`]) under `dir` last modified more than `age`
    /// ago: what a process that died mid-upload left behind. Returns how many it removed.
    fn sweep<'a>(
        &'a self,
        dir: &'a str,
        age: Duration,
    ) -> BoxFuture<'a, Result<usize, TransferError>>;
}

/// Whether `name` (the last segment of a path) is an upload staged by [`temp_name`]:
/// `.<name>.<12 hex digits>.part`.
pub fn is_staged_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".part")) else {
        return false;
    };
    match rest.rsplit_once('.') {
        Some((base, tag)) => {
            !base.is_empty()
                && tag.len() == 12
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        None => false,
    }
}

/// How deep a sweep walks below its directory: deep enough for date trees, bounded so a
/// directory loop on a server cannot keep it going.
const SWEEP_DEPTH: usize = 16;

/// One entry of a directory listing, as a sweep needs it.
pub struct Listed {
    pub name: String,
    pub is_dir: bool,
    pub is_file: bool,
    pub modified: Option<std::time::SystemTime>,
}

/// What a sweep needs from a server: list a directory, remove a file.
pub trait Tree: Send {
    /// The entries of `dir`; `Ok(None)` when it cannot be listed (it is skipped).
    fn list<'a>(
        &'a mut self,
        dir: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<Listed>>, TransferError>>;
    /// Removes a file; false when the server refused.
    fn remove<'a>(&'a mut self, path: &'a str) -> BoxFuture<'a, bool>;
}

/// Walks `tree` below `dir` (links are neither followed nor removed: a listing reports them as
/// neither directory nor file) and removes staged uploads last modified more than `age` ago.
pub async fn sweep_tree(
    tree: &mut dyn Tree,
    dir: &str,
    age: Duration,
) -> Result<usize, TransferError> {
    let cutoff = std::time::SystemTime::now() - age;
    let mut removed = 0;
    let mut stack = vec![(dir.trim_end_matches('/').to_owned(), 0usize)];
    while let Some((at, depth)) = stack.pop() {
        let listing = if at.is_empty() { "/" } else { at.as_str() };
        let Some(entries) = tree.list(listing).await? else {
            continue;
        };
        for entry in entries {
            if entry.name == "." || entry.name == ".." {
                continue;
            }
            let path = format!("{at}/{}", entry.name);
            if entry.is_dir && depth < SWEEP_DEPTH {
                stack.push((path, depth + 1));
            } else if entry.is_file
                && is_staged_name(&entry.name)
                && entry.modified.is_some_and(|m| m < cutoff)
                && tree.remove(&path).await
            {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Normalises a job path: `.` and `..` resolved, duplicate slashes removed. With a `root`, a
/// relative path is taken under it, and the result must stay strictly inside it. Without one, an
/// absolute path stays absolute and a relative one stays relative, so the server resolves it
/// against the login directory (as the original service did); it may not climb above that.
/// Backslashes and control characters are refused: they mean something else to some servers,
/// and they would reach log lines.
pub fn normalise(path: &str, root: Option<&str>) -> Result<String, TransferError> {
    if path.trim().is_empty() {
        return Err(TransferError::permanent("InvalidPath", "the path is empty"));
    }
    if path.chars().any(char::is_control) {
        return Err(TransferError::permanent(
            "InvalidPath",
            format!("{path:?} contains control characters"),
        ));
    }
    if path.contains('\\') {
        return Err(TransferError::permanent(
            "InvalidPath",
            format!("{path:?} contains a backslash; separate directories with /"),
        ));
    }
    let Some(root) = root.map(|r| clean(r).0) else {
        let (normal, escaped) = if path.starts_with('/') {
            clean(path)
        } else {
            let (absolute, escaped) = clean(&format!("/{path}"));
            (absolute[1..].to_owned(), escaped)
        };
        if escaped {
            return Err(TransferError::permanent(
                "PathOutsideRoot",
                format!("{path:?} climbs above the login directory"),
            ));
        }
        if normal == "/" || normal.is_empty() {
            return Err(TransferError::permanent(
                "InvalidPath",
                format!("{path:?} names no file"),
            ));
        }
        return Ok(normal);
    };
    let full = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("{root}/{path}")
    };
    let (normal, escaped) = clean(&full);
    let inside = root == "/" || normal.starts_with(&format!("{root}/"));
    if normal == root {
        return Err(TransferError::permanent(
            "InvalidPath",
            format!("{path:?} names the server's root itself, not a file in it"),
        ));
    }
    if escaped || !inside {
        return Err(TransferError::permanent(
            "PathOutsideRoot",
            format!("{path:?} is outside the server's root {root:?}"),
        ));
    }
    Ok(normal)
}

/// The absolute form of `path`, and whether a `..` tried to climb above `/`.
fn clean(path: &str) -> (String, bool) {
    let mut parts: Vec<&str> = Vec::new();
    let mut escaped = false;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => escaped |= parts.pop().is_none(),
            p => parts.push(p),
        }
    }
    (format!("/{}", parts.join("/")), escaped)
}

/// The parent directory and file name of a normalised path.
pub fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((dir, name)) => (dir, name),
        // A relative path in the login directory.
        None => ("", path),
    }
}

/// The temporary name an upload is staged under, hidden next to its final name.
pub fn temp_name(path: &str) -> String {
    let (dir, name) = split(path);
    let tag = uuid::Uuid::new_v4().simple().to_string();
    match dir {
        "" => format!(".{name}.{}.part", &tag[..12]),
        "/" => format!("/.{name}.{}.part", &tag[..12]),
        dir => format!("{dir}/.{name}.{}.part", &tag[..12]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_names_are_recognised() {
        let temp = temp_name("/out/day/file.bin");
        assert!(is_staged_name(split(&temp).1), "{temp}");
        for other in [
            "file.bin",
            ".file.bin.part",
            ".file.bin.0123456789ab",
            "..0123456789ab.part",
            ".file.bin.0123456789AB.part",
            ".file.bin.0123456789a.part",
        ] {
            assert!(!is_staged_name(other), "{other}");
        }
    }

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalise("/a//b/./c", None).unwrap(), "/a/b/c");
        assert_eq!(normalise("/a/b/../c", None).unwrap(), "/a/c");
        // Without a root a relative path stays relative: the login directory resolves it.
        assert_eq!(normalise("a/./b", None).unwrap(), "a/b");
        assert_eq!(normalise("a/x/../b", None).unwrap(), "a/b");
        assert_eq!(
            normalise("in/x.csv", Some("/data")).unwrap(),
            "/data/in/x.csv"
        );
        assert_eq!(
            normalise("/data/in/x.csv", Some("/data/")).unwrap(),
            "/data/in/x.csv"
        );
    }

    #[test]
    fn paths_escaping_the_root_are_refused() {
        for bad in [
            "/etc/passwd",
            "../x",
            "/data/../etc/passwd",
            "in/../../x",
            "/datax/y",
        ] {
            let err = normalise(bad, Some("/data")).unwrap_err();
            assert!(err.permanent, "{bad}");
            assert_eq!(err.class, "PathOutsideRoot", "{bad}");
        }
        assert_eq!(normalise("/", None).unwrap_err().class, "InvalidPath");
        assert_eq!(normalise("", None).unwrap_err().class, "InvalidPath");
        assert_eq!(
            normalise("a/../..", None).unwrap_err().class,
            "PathOutsideRoot"
        );
        assert_eq!(normalise(".", None).unwrap_err().class, "InvalidPath");
        for root_itself in ["/data", "/data/", "/data/in/..", "."] {
            assert_eq!(
                normalise(root_itself, Some("/data")).unwrap_err().class,
                "InvalidPath",
                "{root_itself}"
            );
        }
        for bad in [
            "in\\x.csv",
            "..\\..\\etc",
            "in/x\u{1b}[31m.csv",
            "in/\u{7f}",
        ] {
            assert_eq!(
                normalise(bad, None).unwrap_err().class,
                "InvalidPath",
                "{bad:?}"
            );
        }
        assert_eq!(normalise("a\0b", None).unwrap_err().class, "InvalidPath");
    }

    #[test]
    fn temp_names_sit_beside_the_target() {
        let t = temp_name("/out/day/file.bin");
        assert!(
            t.starts_with("/out/day/.file.bin.") && t.ends_with(".part"),
            "{t}"
        );
        assert!(temp_name("/file.bin").starts_with("/.file.bin."));
        assert!(temp_name("file.bin").starts_with(".file.bin."));
        assert!(temp_name("out/file.bin").starts_with("out/.file.bin."));
        assert_eq!(split("c.txt"), ("", "c.txt"));
        assert_eq!(split("/a/b/c.txt"), ("/a/b", "c.txt"));
        assert_eq!(split("/c.txt"), ("/", "c.txt"));
    }
}
