//! Checkpoints: each trial's `SPOTSWEEP_CHECKPOINT_DIR`, mirrored to its run's `checkpoints/`
//! artifacts so that the next attempt, on any agent, starts where this one stopped.
//!
//! The mirror uploads only files whose content changed (size and mtime first, then sha256),
//! deletes the artifacts of files the trial removed, and skips names that start with `.` or end
//! with `.tmp` (the usual write-then-rename temporaries). It syncs when the directory has been
//! quiet for a moment, at least once per interval while the trial keeps writing, and a last time
//! when the trial ends or is stopped. Restoring downloads every file under `checkpoints/` before
//! the command starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::Client;

/// The artifact directory, under the run's root, that mirrors the checkpoint directory.
const PREFIX: &str = "checkpoints";

/// A file as the last scan saw it.
#[derive(Clone, PartialEq)]
struct Seen {
    size: u64,
    mtime: SystemTime,
}

/// A file as the daemon has it.
struct Synced {
    seen: Seen,
    digest: [u8; 32],
}

/// What one sync did.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct SyncStats {
    pub uploaded: usize,
    pub deleted: usize,
    pub bytes: u64,
}

/// One trial's checkpoint directory and its mirror among the run's artifacts.
pub(crate) struct Mirror {
    client: Client,
    /// The run's artifact root inside the proxy (`<experiment>/<run>/artifacts`).
    root: String,
    dir: PathBuf,
    synced: BTreeMap<String, Synced>,
}

/// Percent-encodes each segment of an artifact path for the proxy's URL.
pub(crate) fn artifact_url(path: &str) -> String {
    let encoded: Vec<String> = path
        .split('/')
        .map(|s| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string())
        .collect();
    format!("/api/2.0/mlflow-artifacts/artifacts/{}", encoded.join("/"))
}

/// The proxy root of an `mlflow-artifacts:/...` URI; `None` for any other artifact store.
pub(crate) fn proxy_root(artifact_uri: &str) -> Option<String> {
    artifact_uri
        .strip_prefix("mlflow-artifacts:")
        .map(|r| r.trim_matches('/').to_owned())
}

fn skipped(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp")
}

/// Every file under `dir` (relative, `/`-separated) with its size and mtime. An error when a
/// directory cannot be read: a file missing from a partial scan must not look deleted.
fn scan(dir: &Path) -> std::io::Result<BTreeMap<String, Seen>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&path)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if skipped(&name) {
                continue;
            }
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            // Symlinks are not followed: a checkpoint is the trial's own files. A file removed
            // since the listing is simply not there.
            let meta = match entry.path().symlink_metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_dir() {
                stack.push((entry.path(), rel));
            } else if meta.is_file() {
                let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                out.insert(
                    rel,
                    Seen {
                        size: meta.len(),
                        mtime,
                    },
                );
            }
        }
    }
    Ok(out)
}

fn digest_of(path: &Path) -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(hasher.finalize().into()),
            n => hasher.update(&buf[..n]),
        }
    }
}

impl Mirror {
    pub(crate) fn new(client: Client, root: String, dir: PathBuf) -> Self {
        Self {
            client,
            root,
            dir,
            synced: BTreeMap::new(),
        }
    }

    /// Empties the directory (and forgets what was synced), as after a failed restore.
    pub(crate) fn clear(&mut self) -> std::io::Result<()> {
        let _ = std::fs::remove_dir_all(&self.dir);
        self.synced.clear();
        std::fs::create_dir_all(&self.dir)
    }

    fn url(&self, rel: &str) -> String {
        artifact_url(&format!("{}/{PREFIX}/{rel}", self.root))
    }

    /// Downloads the run's `checkpoints/` artifacts into the (empty) directory; returns how many
    /// files came back. Those files count as synced.
    pub(crate) async fn restore(&mut self) -> anyhow::Result<usize> {
        let mut dirs = vec![String::new()];
        let mut files = Vec::new();
        while let Some(rel) = dirs.pop() {
            let path = if rel.is_empty() {
                format!("{}/{PREFIX}", self.root)
            } else {
                format!("{}/{PREFIX}/{rel}", self.root)
            };
            let list = format!(
                "/api/2.0/mlflow-artifacts/artifacts?path={}",
                percent_encoding::utf8_percent_encode(&path, percent_encoding::NON_ALPHANUMERIC)
            );
            let answer: serde_json::Value = self
                .client
                .request(reqwest::Method::GET, &list)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let entries = answer["files"].as_array().cloned().unwrap_or_default();
            for entry in entries {
                let Some(name) = entry["path"].as_str() else {
                    continue;
                };
                // The daemon never answers with these; a name that tries to leave the
                // directory is refused rather than written.
                if name.is_empty() || name.split('/').any(|s| s == ".." || s == "." || s.is_empty()) {
                    anyhow::bail!("the daemon listed a checkpoint file with a bad name: {name:?}");
                }
                let child = if rel.is_empty() {
                    name.to_owned()
                } else {
                    format!("{rel}/{name}")
                };
                if entry["is_dir"].as_bool().unwrap_or(false) {
                    dirs.push(child);
                } else {
                    files.push(child);
                }
            }
        }
        for rel in &files {
            let target = self.dir.join(rel);
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            let mut response = self
                .client
                .request(reqwest::Method::GET, &self.url(rel))
                .send()
                .await?
                .error_for_status()
                .with_context(|| format!("cannot download checkpoint file {rel}"))?;
            let partial = target.with_file_name(format!(
                ".{}.partial",
                target.file_name().unwrap_or_default().to_string_lossy()
            ));
            let mut out = tokio::fs::File::create(&partial).await?;
            let mut hasher = Sha256::new();
            while let Some(chunk) = response.chunk().await? {
                hasher.update(&chunk);
                out.write_all(&chunk).await?;
            }
            out.sync_all().await?;
            drop(out);
            tokio::fs::rename(&partial, &target).await?;
            let meta = tokio::fs::metadata(&target).await?;
            self.synced.insert(
                rel.clone(),
                Synced {
                    seen: Seen {
                        size: meta.len(),
                        mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    },
                    digest: hasher.finalize().into(),
                },
            );
        }
        Ok(files.len())
    }

    /// Whether a scan differs from what the daemon has.
    fn dirty(&self, now: &BTreeMap<String, Seen>) -> bool {
        now.len() != self.synced.len()
            || now
                .iter()
                .any(|(rel, seen)| self.synced.get(rel).is_none_or(|s| &s.seen != seen))
    }

    /// Uploads what changed since the last sync and deletes what is gone.
    pub(crate) async fn sync(&mut self) -> anyhow::Result<SyncStats> {
        let now = scan(&self.dir).with_context(|| format!("cannot read {}", self.dir.display()))?;
        let mut stats = SyncStats::default();
        for (rel, seen) in &now {
            if self.synced.get(rel).is_some_and(|s| &s.seen == seen) {
                continue;
            }
            let path = self.dir.join(rel);
            let digest = {
                let p = path.clone();
                match tokio::task::spawn_blocking(move || digest_of(&p)).await? {
                    Ok(d) => d,
                    // Removed between the scan and now: the next scan says so.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
                }
            };
            if self.synced.get(rel).is_some_and(|s| s.digest == digest) {
                // Touched, not changed.
                self.synced.insert(
                    rel.clone(),
                    Synced {
                        seen: seen.clone(),
                        digest,
                    },
                );
                continue;
            }
            let file = match tokio::fs::File::open(&path).await {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            };
            self.client
                .request(reqwest::Method::PUT, &self.url(rel))
                .body(reqwest::Body::from(file))
                .send()
                .await?
                .error_for_status()
                .with_context(|| format!("cannot upload checkpoint file {rel}"))?;
            stats.uploaded += 1;
            stats.bytes += seen.size;
            self.synced.insert(
                rel.clone(),
                Synced {
                    seen: seen.clone(),
                    digest,
                },
            );
        }
        let gone: Vec<String> = self
            .synced
            .keys()
            .filter(|k| !now.contains_key(*k))
            .cloned()
            .collect();
        for rel in gone {
            self.client
                .request(reqwest::Method::DELETE, &self.url(&rel))
                .send()
                .await?
                .error_for_status()
                .with_context(|| format!("cannot delete checkpoint file {rel}"))?;
            stats.deleted += 1;
            self.synced.remove(&rel);
        }
        Ok(stats)
    }

    /// Syncs while the trial runs: once the directory has been quiet for `quiet`, and at least
    /// every `interval` while it keeps changing; a last time when `last` fires (or its sender is
    /// dropped). A failed sync is retried at the next look.
    pub(crate) async fn run(mut self, interval: Duration, mut last: oneshot::Receiver<()>) -> Self {
        let look = (interval / 4).clamp(Duration::from_millis(50), Duration::from_millis(500));
        let quiet = (interval / 4).min(Duration::from_secs(2));
        let mut previous = scan(&self.dir).unwrap_or_default();
        let mut changed_at = Instant::now();
        let mut dirty_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = &mut last => break,
                _ = tokio::time::sleep(look) => {}
            }
            let Ok(now) = scan(&self.dir) else { continue };
            if now != previous {
                changed_at = Instant::now();
                previous = now.clone();
            }
            if !self.dirty(&now) {
                dirty_since = None;
                continue;
            }
            let since = *dirty_since.get_or_insert_with(Instant::now);
            if changed_at.elapsed() >= quiet || since.elapsed() >= interval {
                match self.sync().await {
                    Ok(stats) => {
                        tracing::debug!(?stats, dir = %self.dir.display(), "checkpoint synced");
                        dirty_since = None;
                    }
                    Err(e) => tracing::warn!(error = %format!("{e:#}"), "checkpoint sync failed; retrying"),
                }
            }
        }
        match self.sync().await {
            Ok(stats) => tracing::debug!(?stats, dir = %self.dir.display(), "last checkpoint sync"),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "the last checkpoint sync failed"),
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_skips_temporaries_and_walks_subdirectories() {
        let dir = std::env::temp_dir().join(format!("spotsweep-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("opt/.hidden")).unwrap();
        std::fs::write(dir.join("model.pt"), b"abc").unwrap();
        std::fs::write(dir.join("model.pt.tmp"), b"half").unwrap();
        std::fs::write(dir.join(".model.pt.partial"), b"half").unwrap();
        std::fs::write(dir.join("opt/state.bin"), b"12345").unwrap();
        std::fs::write(dir.join("opt/.hidden/x"), b"1").unwrap();
        let seen = scan(&dir).unwrap();
        let names: Vec<(&str, u64)> = seen.iter().map(|(k, v)| (k.as_str(), v.size)).collect();
        assert_eq!(names, vec![("model.pt", 3), ("opt/state.bin", 5)]);
        std::fs::remove_dir_all(&dir).unwrap();
        // A missing directory is an error, not "everything was deleted".
        assert!(scan(&dir).is_err());
    }

    #[test]
    fn artifact_urls_encode_each_segment() {
        assert_eq!(
            artifact_url("1/abc/artifacts/checkpoints/a b/c%d.pt"),
            "/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/checkpoints/a%20b/c%25d%2Ept"
        );
        assert_eq!(
            proxy_root("mlflow-artifacts:/1/abc/artifacts").as_deref(),
            Some("1/abc/artifacts")
        );
        assert_eq!(proxy_root("gs://bucket/x"), None);
    }
}
