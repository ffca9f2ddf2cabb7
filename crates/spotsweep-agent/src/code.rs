//! Code snapshots on the agent's side: each one downloaded once per machine, checked against
//! its hash, unpacked into a cache, and copied into each trial's own working directory.
//!
//! The cache (`--code-cache`, `<work-dir>/code` by default; the local pool's agents share one)
//! holds `<hex>/`, the unpacked tree, `<hex>.size`, its size in bytes (its mtime is its last
//! use), and `<hex>.lock`. Who owns what: every step on a snapshot (the check, the download,
//! the unpacking, the copy) happens under an exclusive `flock` of its `.lock` file, so two
//! trials of one agent, or two agents sharing the cache, download it once between them and
//! never copy a half-unpacked tree; eviction takes the same lock without waiting and skips a
//! snapshot that is busy. A tree appears under its name only by a rename once it is whole.
//!
//! Each trial gets its own copy (`std::fs::copy`: on Linux `copy_file_range`, which clones the
//! extents on file systems with reflinks, btrfs and XFS, and copies inside the kernel
//! elsewhere). Not hard links: a trial that opens a file of its code for writing (a config it
//! rewrites, a log it appends to) would change it for the cache and every other trial, and
//! read-only bits do not stop a trial running as root.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rand::RngExt;
use sha2::{Digest, Sha256};

use crate::{Client, backoff};

/// Downloads, checks, unpacks, copies and evicts code snapshots.
#[derive(Debug, Clone)]
pub(crate) struct CodeCache {
    /// The cache directory.
    dir: PathBuf,
    /// Unpacked snapshots are evicted, least recently used first, beyond this many bytes (the
    /// one just used stays, however large).
    max_bytes: u64,
}

/// Why a download did not give the snapshot.
enum Failure {
    /// Another try may work (the daemon was away, the bytes came corrupted).
    Retry(String),
    /// It will not (the daemon does not have it, or refuses this agent).
    Fatal(String),
}

/// The hex digest of a snapshot id, or the reason it is not one.
fn digest(id: &str) -> Result<&str, String> {
    let hex = id.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(hex)
    } else {
        Err(format!(
            "the lease names code snapshot '{id}', which is not sha256:<hex>"
        ))
    }
}

impl CodeCache {
    /// A cache in `dir`, bounded to `max_bytes` of unpacked snapshots.
    pub(crate) fn new(dir: PathBuf, max_bytes: u64) -> Self {
        Self { dir, max_bytes }
    }

    /// Makes `dst` a fresh copy of snapshot `id`, downloading and unpacking it first unless
    /// this machine has it. The error is the trial's failure reason.
    pub(crate) async fn checkout(&self, client: &Client, id: &str, dst: &Path) -> Result<(), String> {
        let hex = digest(id)?.to_owned();
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create the code cache {}: {e}", self.dir.display()))?;
        let lock = self.lock(&hex).await?;
        let tree = self.dir.join(&hex);
        let fetched = !tree.is_dir();
        if fetched {
            self.fetch(client, id, &hex).await?;
        }
        // Its last use, for eviction.
        if let Ok(f) = std::fs::File::options()
            .write(true)
            .open(self.dir.join(format!("{hex}.size")))
        {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        let to = dst.to_path_buf();
        let copied = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_dir_all(&to);
            copy_tree(&tree, &to)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        drop(lock);
        copied.map_err(|e| format!("cannot copy code snapshot {id} into {}: {e}", dst.display()))?;
        if fetched {
            let cache = self.clone();
            let _ = tokio::task::spawn_blocking(move || cache.evict(&hex)).await;
        }
        Ok(())
    }

    /// Takes the snapshot's lock, waiting for whoever holds it (another trial fetching it).
    async fn lock(&self, hex: &str) -> Result<std::fs::File, String> {
        let path = self.dir.join(format!("{hex}.lock"));
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            f.lock()?;
            Ok::<_, std::io::Error>(f)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot lock the code cache: {e}"))
    }

    /// Downloads (up to three tries), checks and unpacks a snapshot into `<hex>/`. Called
    /// under its lock.
    async fn fetch(&self, client: &Client, id: &str, hex: &str) -> Result<(), String> {
        // Leftovers of a fetch that a crash cut short: nobody else writes them (the lock).
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!(".tmp-{hex}-"))
                {
                    let _ = std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
                }
            }
        }
        let tag = hex::encode(rand::rng().random::<[u8; 4]>());
        let archive = self.dir.join(format!(".tmp-{hex}-{tag}.tar.gz"));
        let started = std::time::Instant::now();
        let mut tries = 0u32;
        let bytes = loop {
            tries += 1;
            match download(client, id, hex, &archive).await {
                Ok(bytes) => break bytes,
                Err(Failure::Fatal(reason)) => {
                    let _ = std::fs::remove_file(&archive);
                    return Err(reason);
                }
                Err(Failure::Retry(reason)) if tries >= 3 => {
                    let _ = std::fs::remove_file(&archive);
                    return Err(format!(
                        "cannot get code snapshot {id} from the daemon ({tries} tries): {reason}"
                    ));
                }
                Err(Failure::Retry(reason)) => {
                    tracing::warn!(code = %id, %reason, "code snapshot download failed; retrying");
                    tokio::time::sleep(backoff(tries)).await;
                }
            }
        };
        let unpacked = self.dir.join(format!(".tmp-{hex}-{tag}"));
        let (from, into) = (archive.clone(), unpacked.clone());
        let size = tokio::task::spawn_blocking(move || unpack(&from, &into))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let _ = std::fs::remove_file(&archive);
        let size = match size {
            Ok(size) => size,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&unpacked);
                return Err(format!("code snapshot {id} cannot be unpacked: {e}"));
            }
        };
        let whole = (|| {
            let mut f = std::fs::File::create(self.dir.join(format!("{hex}.size")))?;
            write!(f, "{size}")?;
            std::fs::rename(&unpacked, self.dir.join(hex))
        })();
        if let Err(e) = whole {
            let _ = std::fs::remove_dir_all(&unpacked);
            return Err(format!(
                "cannot keep code snapshot {id} in {}: {e}",
                self.dir.display()
            ));
        }
        tracing::info!(
            code = %id,
            bytes,
            unpacked_bytes = size,
            seconds = started.elapsed().as_secs_f64(),
            "code snapshot downloaded"
        );
        Ok(())
    }

    /// Removes the least recently used snapshots other than `keep` while the cache holds more
    /// than its bound, skipping those in use.
    fn evict(&self, keep: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut cached = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".trash-") {
                // An eviction that a crash cut short.
                let _ = std::fs::remove_dir_all(e.path());
                continue;
            }
            let Some(hex) = name.strip_suffix(".size") else {
                continue;
            };
            let size: u64 = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            let used = e.metadata().and_then(|m| m.modified()).ok();
            cached.push((used, hex.to_owned(), size));
        }
        let mut total: u64 = cached.iter().map(|c| c.2).sum();
        cached.sort();
        for (_, hex, size) in cached {
            if total <= self.max_bytes {
                break;
            }
            if hex == keep {
                continue;
            }
            let Ok(lock) = std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(self.dir.join(format!("{hex}.lock")))
            else {
                continue;
            };
            // Busy (being fetched or copied): it stays this time.
            if lock.try_lock().is_err() {
                continue;
            }
            let trash = self.dir.join(format!(".trash-{hex}"));
            let moved = std::fs::rename(self.dir.join(&hex), &trash);
            let _ = std::fs::remove_file(self.dir.join(format!("{hex}.size")));
            drop(lock);
            if moved.is_ok() {
                let _ = std::fs::remove_dir_all(&trash);
            }
            total = total.saturating_sub(size);
            tracing::info!(code = %format!("sha256:{hex}"), bytes = size, "code snapshot evicted from the cache");
        }
    }
}

/// Downloads snapshot `id` into `path`, checking that it hashes to `hex`; its size.
async fn download(client: &Client, id: &str, hex: &str, path: &Path) -> Result<u64, Failure> {
    use tokio::io::AsyncWriteExt;
    let mut r = client
        .request(reqwest::Method::GET, &format!("/api/v1/code/{id}"))
        .send()
        .await
        .map_err(|e| Failure::Retry(e.to_string()))?;
    let status = r.status();
    if !status.is_success() {
        let text = r.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or(text);
        return Err(match status {
            reqwest::StatusCode::NOT_FOUND => Failure::Fatal(format!(
                "code snapshot {id} is missing on the daemon ({message}): submit the sweep again to upload it"
            )),
            reqwest::StatusCode::BAD_REQUEST
            | reqwest::StatusCode::UNAUTHORIZED
            | reqwest::StatusCode::FORBIDDEN => Failure::Fatal(format!(
                "the daemon refused code snapshot {id} to this agent ({status}): {message}"
            )),
            _ => Failure::Retry(format!("HTTP {status}: {message}")),
        });
    }
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| Failure::Fatal(format!("cannot write {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = r
        .chunk()
        .await
        .map_err(|e| Failure::Retry(format!("the download broke off after {bytes} bytes: {e}")))?
    {
        hasher.update(&chunk);
        bytes += chunk.len() as u64;
        file.write_all(&chunk)
            .await
            .map_err(|e| Failure::Fatal(format!("cannot write {}: {e}", path.display())))?;
    }
    file.flush()
        .await
        .map_err(|e| Failure::Fatal(format!("cannot write {}: {e}", path.display())))?;
    let actual = hex::encode(hasher.finalize());
    if actual != hex {
        return Err(Failure::Retry(format!(
            "code snapshot {id} is corrupt: the {bytes} bytes the daemon sent hash to sha256:{actual}"
        )));
    }
    Ok(bytes)
}

/// Downloads snapshot `id` from the daemon at `server` (with `token`), checks its hash and
/// unpacks it into `dst`, a directory that must not exist yet (`spotsweep checkout`); the bytes
/// of its files. The error says what went wrong in words.
pub async fn download_snapshot(
    server: &str,
    token: Option<&str>,
    id: &str,
    dst: &Path,
) -> Result<u64, String> {
    let hex = digest(id)?;
    let client = Client::new(server, token.map(str::to_owned));
    let parent = dst
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let archive = tempfile::Builder::new()
        .prefix(".spotsweep-code-")
        .suffix(".tar.gz")
        .tempfile_in(parent)
        .map_err(|e| format!("cannot write in {}: {e}", parent.display()))?;
    download(&client, id, hex, archive.path())
        .await
        .map_err(|(Failure::Retry(m) | Failure::Fatal(m))| m)?;
    unpack(archive.path(), dst).map_err(|e| format!("cannot unpack {id} into {}: {e}", dst.display()))
}

/// Unpacks a tar.gz into a new directory `dst`; the bytes of its files. Entries that would land
/// outside `dst` (`..`, absolute paths, through links) are refused by `unpack_in`.
fn unpack(archive: &Path, dst: &Path) -> std::io::Result<u64> {
    std::fs::create_dir(dst)?;
    let file = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(archive)?);
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    tar.set_preserve_mtime(false);
    tar.set_preserve_permissions(false);
    tar.set_unpack_xattrs(false);
    let mut total = 0u64;
    for entry in tar.entries()? {
        let mut entry = entry?;
        total += entry.size();
        entry.unpack_in(dst)?;
    }
    Ok(total)
}

/// Copies a tree: directories made, files copied (cloned where the file system can), links
/// made again with their targets.
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let to = dst.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &to)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &to)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(if name.ends_with(".sh") { 0o755 } else { 0o644 });
            tar.append_data(&mut h, name, *data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn a_snapshot_unpacks_with_its_modes_and_copies_apart() {
        let d = tempfile::tempdir().unwrap();
        let archive = d.path().join("a.tar.gz");
        std::fs::write(
            &archive,
            tar_gz(&[("run.sh", b"echo hi\n"), ("src/m.py", b"x = 1\n")]),
        )
        .unwrap();
        let tree = d.path().join("tree");
        assert_eq!(unpack(&archive, &tree).unwrap(), 14);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&tree.join("run.sh")) & 0o100, 0o100);
        std::os::unix::fs::symlink("src/m.py", tree.join("link")).unwrap();
        let (one, two) = (d.path().join("one"), d.path().join("two"));
        copy_tree(&tree, &one).unwrap();
        copy_tree(&tree, &two).unwrap();
        // A trial that rewrites a file of its copy changes neither the cache nor another copy.
        std::fs::write(one.join("src/m.py"), "x = 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(two.join("src/m.py")).unwrap(), "x = 1\n");
        assert_eq!(std::fs::read_to_string(tree.join("src/m.py")).unwrap(), "x = 1\n");
        assert_eq!(
            std::fs::read_link(two.join("link")).unwrap(),
            Path::new("src/m.py")
        );
        assert_eq!(mode(&two.join("run.sh")) & 0o100, 0o100);
    }

    #[test]
    fn an_entry_that_would_escape_is_not_written_outside() {
        let d = tempfile::tempdir().unwrap();
        // A hand-made header: the tar builder itself refuses `..`.
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../evil.t");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.append(&h, &b"x"[..]).unwrap();
        let archive = d.path().join("a.tar.gz");
        std::fs::write(&archive, tar.into_inner().unwrap().finish().unwrap()).unwrap();
        let tree = d.path().join("sub").join("tree");
        std::fs::create_dir_all(tree.parent().unwrap()).unwrap();
        let _ = unpack(&archive, &tree);
        assert!(!d.path().join("sub").join("evil.t").exists());
    }

    #[test]
    fn eviction_keeps_the_bound_the_newest_and_the_busy() {
        let d = tempfile::tempdir().unwrap();
        let cache = CodeCache::new(d.path().to_path_buf(), 250);
        let put = |hex: &str, size: u64, age_s: u64| {
            std::fs::create_dir(d.path().join(hex)).unwrap();
            std::fs::write(d.path().join(format!("{hex}.size")), size.to_string()).unwrap();
            let f = std::fs::File::options()
                .write(true)
                .open(d.path().join(format!("{hex}.size")))
                .unwrap();
            f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(age_s))
                .unwrap();
        };
        put("old", 100, 300);
        put("busy", 100, 200);
        put("mid", 100, 100);
        put("new", 100, 0);
        // "busy" is being copied by another trial: it holds the lock.
        let held = std::fs::File::create(d.path().join("busy.lock")).unwrap();
        held.lock().unwrap();
        cache.evict("new");
        // 400 bytes over a bound of 250: "old" goes, "busy" is skipped, "mid" goes.
        assert!(!d.path().join("old").exists() && !d.path().join("old.size").exists());
        assert!(d.path().join("busy").exists());
        assert!(!d.path().join("mid").exists());
        assert!(d.path().join("new").exists());
    }
}
