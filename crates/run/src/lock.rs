//! One process per run: a lease object `LOCK` in the run folder, local or on S3.
//!
//! Two processes on one run would both pay for the same rows (each journal is read only when
//! opened) and each would enforce `--max-*` alone, so a run, a repair or a vacuum first takes
//! the lease. It is created only if absent (a conditional create: `O_EXCL` locally,
//! `If-None-Match` on S3), names its holder (process, host, command, since when) and is
//! renewed every [`HEARTBEAT`]. A lease is stale, and taken over, when its holder's heartbeat
//! is older than [`STALE_AFTER`], or at once when the holder was on this host and its process
//! is gone (a `kill -9`). A holder that finds the lease taken from it stops its run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use caiflow_llm::CancellationToken;
use serde::{Deserialize, Serialize};

use crate::error::{Result, RunError};
use crate::store::RunStore;

const LOCK: &str = "LOCK";
/// How often the holder renews its lease.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// A lease not renewed for this long is stale (its holder died on another machine).
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// What the lease object holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Lease {
    /// Unique per acquisition: tells the holder whether the lease is still its own.
    pub id: String,
    pub pid: u32,
    pub host: String,
    pub command: String,
    pub started_unix: u64,
    pub heartbeat_unix: u64,
}

impl Lease {
    /// "caiflow run (pid 123 on host h, started 42 s ago)".
    pub fn holder(&self) -> String {
        format!(
            "caiflow {} (pid {} on host {}, started {} s ago)",
            self.command,
            self.pid,
            self.host,
            unix_now().saturating_sub(self.started_unix)
        )
    }

    fn stale(&self, now: u64) -> bool {
        if now.saturating_sub(self.heartbeat_unix) > STALE_AFTER.as_secs() {
            return true;
        }
        self.host == host_name() && !process_alive(self.pid)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// This machine's name (Linux: the kernel's hostname; elsewhere `$HOSTNAME`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Whether process `pid` of this host runs (assumed yes where it cannot be told).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// The lease held on a run; renewed in the background until [`RunLock::release`] (or drop,
/// which stops renewing: the lease then goes stale).
#[derive(Debug)]
pub struct RunLock {
    store: RunStore,
    lease: Lease,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

impl RunLock {
    /// Take the run's lease for `command` (`run`, `repair`, `vacuum`); `stop` is cancelled
    /// should another process take the lease over later. Fails, naming the holder, when a
    /// live process holds it.
    pub async fn acquire(
        store: &RunStore,
        command: &str,
        stop: CancellationToken,
    ) -> Result<RunLock> {
        let now = unix_now();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let lease = Lease {
            // This process at this moment: unique among the run's holders.
            id: format!("{nanos:x}-{}-{}", std::process::id(), host_name()),
            pid: std::process::id(),
            host: host_name(),
            command: command.to_string(),
            started_unix: now,
            heartbeat_unix: now,
        };
        let bytes = encode(&lease)?;
        // Two rounds: the second after clearing a stale lease.
        for _ in 0..2 {
            if store.put_new(LOCK, bytes.clone()).await? {
                return Ok(Self::held(store.clone(), lease, stop));
            }
            match current(store).await? {
                Some(held) if !held.stale(unix_now()) => {
                    return Err(RunError::Store(format!(
                        "run {} is in use by {}: wait for it to finish (a holder that died is taken over after {} s without a heartbeat, at once on its own host)",
                        store.display,
                        held.holder(),
                        STALE_AFTER.as_secs()
                    )));
                }
                Some(held) => {
                    tracing::warn!(
                        "run {}: taking over the lease of {}, which is gone",
                        store.display,
                        held.holder()
                    );
                    store.delete_one(LOCK).await?;
                }
                // Released between our attempt and the read: try again.
                None => {}
            }
        }
        Err(RunError::Store(format!(
            "run {}: another process took the run's lease at the same moment; try again",
            store.display
        )))
    }

    fn held(store: RunStore, lease: Lease, stop: CancellationToken) -> RunLock {
        let heartbeat = {
            let (store, mut lease) = (store.clone(), lease.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(HEARTBEAT).await;
                    match current(&store).await {
                        Ok(Some(now)) if now.id != lease.id => {
                            tracing::error!(
                                "run {}: {} took the run's lease over; stopping",
                                store.display,
                                now.holder()
                            );
                            stop.cancel();
                            return;
                        }
                        Err(e) => {
                            tracing::warn!("run {}: lease not renewed: {e}", store.display);
                            continue;
                        }
                        _ => {}
                    }
                    lease.heartbeat_unix = unix_now();
                    if let Ok(bytes) = encode(&lease) {
                        let _ = store.put(LOCK, bytes).await;
                    }
                }
            })
        };
        RunLock {
            store,
            lease,
            heartbeat,
        }
    }

    /// The lease as written.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Give the run free (only if the lease is still this process's).
    pub async fn release(self) {
        self.heartbeat.abort();
        if let Ok(Some(held)) = current(&self.store).await
            && held.id == self.lease.id
        {
            let _ = self.store.delete_one(LOCK).await;
        }
    }
}

/// The lease on the run now, if any (an unreadable one counts as stale).
pub async fn current(store: &RunStore) -> Result<Option<Lease>> {
    Ok(store.get(LOCK).await?.map(|b| {
        serde_json::from_slice(&b).unwrap_or(Lease {
            id: String::new(),
            pid: 0,
            host: String::new(),
            command: "(unreadable lease)".into(),
            started_unix: 0,
            heartbeat_unix: 0,
        })
    }))
}

fn encode(lease: &Lease) -> Result<Bytes> {
    serde_json::to_vec_pretty(lease)
        .map(Bytes::from)
        .map_err(|e| RunError::Json {
            what: "encoding the run's lease".into(),
            cause: e,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_holder_is_refused_and_a_dead_one_taken_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RunStore::open(dir.path().to_str().expect("utf-8"), "r").expect("store");
        let first = RunLock::acquire(&store, "run", CancellationToken::new())
            .await
            .expect("free");
        let e = RunLock::acquire(&store, "repair", CancellationToken::new())
            .await
            .expect_err("held");
        assert!(e.to_string().contains("in use by caiflow run (pid"), "{e}");
        first.release().await;
        let second = RunLock::acquire(&store, "repair", CancellationToken::new())
            .await
            .expect("released");
        drop(second);
        // A lease of a process of this host that is gone is taken over at once.
        let mut dead = current(&store).await.expect("read").expect("held");
        dead.pid = u32::MAX - 1;
        store
            .put(LOCK, encode(&dead).expect("json"))
            .await
            .expect("write");
        let third = RunLock::acquire(&store, "run", CancellationToken::new()).await;
        assert!(third.is_ok(), "{third:?}");
    }
}
