//! What the CLI remembers of the last snapshot packed from a directory, so that submitting
//! unchanged code costs a listing and a `HEAD`, not a compression of the whole tree.
//!
//! One record per directory, under the user's cache directory (`SPOTSWEEP_CACHE_DIR`, else
//! `$XDG_CACHE_HOME/spotsweep`, else `~/.cache/spotsweep`): a fingerprint of every file's name,
//! kind, size, mode, link target, inode and change times, and the id its tar.gz had. The same
//! fingerprint means the same files, with git's one caveat handled as git does: a file changed
//! twice within the time stamp's granularity keeps its time stamp. Such a file can only be one
//! whose time stamp was that close to the moment it was listed ("racy", [`racy`]); for those
//! the record keeps the hash of the content that was packed, and a lookup hashes them again.
//!
//! Best effort: a record that cannot be read or written only costs a packing.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Entry, EntryKind};

/// Changes whenever the archive's layout does; the CLI's version is hashed in too (another
/// version may compress differently).
const FORMAT: &str = "spotsweep-code-index-1";

/// The last snapshot packed from a directory.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// [`FORMAT`].
    format: String,
    /// The [`fingerprint`] of its files.
    fingerprint: String,
    /// The snapshot's id.
    id: String,
    /// The tar.gz's size.
    packed_bytes: u64,
    /// The racy files, by name, with the sha256 of the content that was packed.
    racy: Vec<(String, String)>,
}

/// A snapshot the index knows.
#[derive(Debug)]
pub(super) struct Known {
    /// Its id.
    pub id: String,
    /// Its size.
    pub packed_bytes: u64,
}

/// Where the index lives by default.
pub(super) fn cache_root() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("SPOTSWEEP_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("spotsweep")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("spotsweep")))
}

/// The record's file for `dir` (a canonical path) under the cache `root`.
fn record_path(root: &Path, dir: &Path) -> PathBuf {
    let key = hex::encode(Sha256::digest(dir.as_os_str().as_encoded_bytes()));
    root.join("code-index").join(format!("{}.json", &key[..32]))
}

/// Everything of `entries` that a change to the files would change.
fn fingerprint(entries: &[Entry]) -> String {
    let mut h = Sha256::new();
    h.update(FORMAT);
    h.update(env!("CARGO_PKG_VERSION"));
    for e in entries {
        h.update([0]);
        h.update(e.name.as_bytes());
        h.update([0]);
        match &e.kind {
            EntryKind::File { executable } => h.update([b'f', u8::from(*executable)]),
            EntryKind::Link(target) => {
                h.update([b'l']);
                h.update(target.as_os_str().as_encoded_bytes());
            }
        }
        h.update(e.size.to_le_bytes());
        h.update(e.stamp.mtime_ns.to_le_bytes());
        h.update(e.stamp.ctime_ns.to_le_bytes());
        h.update(e.stamp.ino.to_le_bytes());
        h.update(e.stamp.dev.to_le_bytes());
    }
    hex::encode(h.finalize())
}

/// Whether a file's time stamps are too close to `listed_at` (taken before it was listed) to
/// show a later change: within the file system's granularity, a few milliseconds where time
/// stamps have nanoseconds (the kernel's clock tick), up to two seconds where they have whole
/// seconds (ext3, FAT, HFS+).
pub(super) fn racy(e: &Entry, listed_at: SystemTime) -> bool {
    let Ok(at) = listed_at.duration_since(SystemTime::UNIX_EPOCH) else {
        return true;
    };
    let at = at.as_nanos() as i128;
    let coarse = e.stamp.mtime_ns % 1_000_000_000 == 0 && e.stamp.ctime_ns % 1_000_000_000 == 0;
    let margin: i128 = if coarse { 2_000_000_000 } else { 50_000_000 };
    e.stamp.mtime_ns.max(e.stamp.ctime_ns) >= at - margin
}

/// The sha256 of a file's content.
fn content_hash(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buf).ok()? {
            0 => break,
            n => h.update(&buf[..n]),
        }
    }
    Some(hex::encode(h.finalize()))
}

/// The snapshot last packed from `dir`, if its files are still those.
pub(super) fn lookup(root: &Path, dir: &Path, entries: &[Entry]) -> Option<Known> {
    let text = std::fs::read_to_string(record_path(root, dir)).ok()?;
    let record: Record = serde_json::from_str(&text).ok()?;
    if record.format != FORMAT || record.fingerprint != fingerprint(entries) {
        return None;
    }
    for (name, hash) in &record.racy {
        let i = entries.binary_search_by(|e| e.name.as_str().cmp(name)).ok()?;
        if content_hash(&entries[i].path).as_deref() != Some(hash.as_str()) {
            return None;
        }
    }
    Some(Known {
        id: record.id,
        packed_bytes: record.packed_bytes,
    })
}

/// Remembers that `entries` packed to `id`; `contents` holds the content hashes of the racy
/// files (as packed), in `entries` order. A racy file without one (a link) is not remembered.
pub(super) fn save(
    root: &Path,
    dir: &Path,
    entries: &[Entry],
    id: &str,
    packed_bytes: u64,
    contents: &[Option<String>],
) {
    let path = record_path(root, dir);
    let mut racy = Vec::new();
    for (e, hash) in entries.iter().zip(contents) {
        if let Some(hash) = hash {
            racy.push((e.name.clone(), hash.clone()));
        }
    }
    let record = Record {
        format: FORMAT.into(),
        fingerprint: fingerprint(entries),
        id: id.to_owned(),
        packed_bytes,
        racy,
    };
    let write = || -> std::io::Result<()> {
        let parent = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)?;
        let tmp = tempfile::NamedTempFile::new_in(parent)?;
        serde_json::to_writer(&tmp, &record)?;
        tmp.persist(&path).map_err(|e| e.error)?;
        Ok(())
    };
    if let Err(e) = write() {
        tracing::debug!(error = %e, path = %path.display(), "cannot remember the snapshot");
    }
}

/// Forgets what was packed from `dir`.
pub(super) fn forget(root: &Path, dir: &Path) {
    let _ = std::fs::remove_file(record_path(root, dir));
}

#[cfg(test)]
mod tests {
    use super::super::{list, snapshot};
    use super::*;

    #[test]
    fn files_changed_just_before_they_were_listed_are_racy() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("train.py"), "print(1)\n").unwrap();
        let entries = list(d.path()).unwrap();
        assert!(entries.iter().all(|e| racy(e, SystemTime::now())));
        let later = SystemTime::now() + std::time::Duration::from_secs(10);
        assert!(entries.iter().all(|e| !racy(e, later)));
    }

    #[test]
    fn an_unchanged_tree_is_known_without_packing_and_any_change_is_seen() {
        let cache = tempfile::tempdir().unwrap();
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().canonicalize().unwrap();
        let file = dir.join("train.py");
        std::fs::write(&file, "print(1)\n").unwrap();
        std::fs::write(dir.join("lib.py"), "x = 1\n").unwrap();
        let first = snapshot(&dir, 1 << 20, Some(cache.path())).unwrap();
        assert!(first.file.is_some());
        // Just written, so racy: known again after their contents were hashed.
        let again = snapshot(&dir, 1 << 20, Some(cache.path())).unwrap();
        assert!(again.file.is_none(), "the index knew it");
        assert_eq!(
            (again.id.as_str(), again.packed_bytes),
            (first.id.as_str(), first.packed_bytes)
        );
        // The same size and the same mtime, other bytes: the change time gives it away.
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        std::fs::write(&file, "print(2)\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let changed = snapshot(&dir, 1 << 20, Some(cache.path())).unwrap();
        assert!(changed.file.is_some());
        assert_ne!(changed.id, first.id);
        // A record that does not match its files is never trusted: forgotten, it is packed.
        forget(cache.path(), &dir);
        assert!(
            snapshot(&dir, 1 << 20, Some(cache.path()))
                .unwrap()
                .file
                .is_some()
        );
    }
}
