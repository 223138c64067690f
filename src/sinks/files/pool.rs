//! A per-server pool of logged-in connections: at most `max` in use, idle ones kept for the
//! next transfer, and the directories already created on that server.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::TransferError;

pub struct Pool<C> {
    idle: Mutex<Vec<C>>,
    slots: Arc<Semaphore>,
    made: Mutex<HashSet<String>>,
}

/// A connection in use; give it back with [`Pool::settle`].
pub struct Lease<C> {
    pub conn: C,
    _permit: OwnedSemaphorePermit,
}

impl<C> Pool<C> {
    pub fn new(max: usize) -> Self {
        Pool {
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(max.max(1))),
            made: Mutex::new(HashSet::new()),
        }
    }

    /// Waits for a free slot, then hands out an idle connection that `alive` accepts, or one
    /// from `connect`.
    pub async fn lease<A, F>(
        &self,
        mut alive: impl FnMut(C) -> A,
        connect: impl FnOnce() -> F,
    ) -> Result<Lease<C>, TransferError>
    where
        A: std::future::Future<Output = Option<C>>,
        F: std::future::Future<Output = Result<C, TransferError>>,
    {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| TransferError::transient("Closed", "the pool is closed"))?;
        loop {
            let idle = self.idle.lock().expect("pool lock").pop();
            let Some(conn) = idle else {
                break;
            };
            // An idle connection may have been closed by the server meanwhile.
            if let Some(conn) = alive(conn).await {
                return Ok(Lease {
                    conn,
                    _permit: permit,
                });
            }
        }
        Ok(Lease {
            conn: connect().await?,
            _permit: permit,
        })
    }

    /// Returns the connection unless the operation may have broken it: a refused command
    /// leaves it usable, a network error may not.
    pub fn settle<T>(&self, lease: Lease<C>, result: &Result<T, TransferError>) {
        match result {
            Ok(_) => self.idle.lock().expect("pool lock").push(lease.conn),
            Err(e) if e.permanent => self.idle.lock().expect("pool lock").push(lease.conn),
            Err(_) => {}
        }
    }

    /// Forgets `dir` and everything below it: a STOR or MKD into it failed, so it may have been
    /// removed on the server and must be created again.
    pub fn forget(&self, dir: &str) {
        let below = format!("{}/", dir.trim_end_matches('/'));
        self.made
            .lock()
            .expect("dirs lock")
            .retain(|d| d != dir && !d.starts_with(&below));
    }

    /// The levels of `dir` not known to exist (outermost first): these protocols have no
    /// `mkdir -p`, and creating an existing level is harmless. Two uploads into a new directory
    /// may both create it; neither skips it before it exists.
    pub fn dirs_to_make(&self, dir: &str) -> Vec<String> {
        let made = self.made.lock().expect("dirs lock");
        let mut at = String::new();
        let mut out = Vec::new();
        let absolute = dir.starts_with('/');
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            if absolute || !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            if !made.contains(&at) {
                out.push(at.clone());
            }
        }
        out
    }

    /// Remembers that the levels of `dir` exist now.
    pub fn made(&self, levels: Vec<String>) {
        self.made.lock().expect("dirs lock").extend(levels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_are_created_once_level_by_level() {
        let pool: Pool<()> = Pool::new(1);
        let levels = pool.dirs_to_make("/a/b/c");
        assert_eq!(levels, ["/a", "/a/b", "/a/b/c"]);
        // Not remembered until made: a second upload creates them too rather than skip them.
        assert_eq!(pool.dirs_to_make("/a/b/c").len(), 3);
        pool.made(levels);
        assert_eq!(pool.dirs_to_make("/a/b/d"), ["/a/b/d"]);
        assert!(pool.dirs_to_make("/a/b").is_empty());
        assert!(pool.dirs_to_make("/").is_empty());
        // Relative to the login directory.
        assert_eq!(pool.dirs_to_make("out/day"), ["out", "out/day"]);
        assert!(pool.dirs_to_make("").is_empty());
    }

    #[test]
    fn a_forgotten_directory_is_created_again() {
        let pool: Pool<()> = Pool::new(1);
        pool.made(pool.dirs_to_make("/a/b/c"));
        pool.forget("/a/b");
        assert_eq!(pool.dirs_to_make("/a/b/c"), ["/a/b", "/a/b/c"]);
    }
}
