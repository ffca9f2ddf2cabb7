//! Code snapshots on the CLI's side: a spec's `workdir` packed into a deterministic tar.gz,
//! named by its sha256, and uploaded to the daemon once.
//!
//! What goes in: the files git would see. `.gitignore` files (in the directory, below it and
//! above it), `.git/info/exclude` and `.spotsweepignore` files are honoured, `.git` itself is
//! left out, hidden files are kept. The user's global git excludes are not read: the snapshot
//! of a tree is the same on every machine. Regular files keep their executable bit, symbolic
//! links are kept as links; directories come with the files in them (git tracks no empty
//! directory).
//!
//! Deterministic: entries sorted by path, every mtime 0, uid and gid 0, no user or group
//! names, modes 0644 or 0755, gzip without a name or a time. The same tree gives the same
//! bytes, so the same id, and an unchanged tree is not sent again. An unchanged tree is not
//! even packed again: [`index`] remembers the id of the last tree packed from a directory by
//! its files' names, sizes and change times, as git's index does.

mod index;

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::client::Daemon;

/// The default packing limit, in MiB of files (before compression).
pub const DEFAULT_LIMIT_MB: u64 = 200;

/// A file of the working directory, as it goes into the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its path below the working directory, `/`-separated: the archive's order and name.
    pub name: String,
    /// Where it is.
    pub path: PathBuf,
    /// Bytes (0 for a link).
    pub size: u64,
    /// What it is.
    pub kind: EntryKind,
    /// When it last changed, and which inode it is: what tells that it changed.
    pub stamp: Stamp,
}

/// A file's change times (ns since the epoch) and identity, as `stat` gives them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    /// Last modification.
    pub mtime_ns: i128,
    /// Last change of content or metadata (no tool can set it back).
    pub ctime_ns: i128,
    /// Inode.
    pub ino: u64,
    /// Device.
    pub dev: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
            Self {
                mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
                ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
                ino: meta.ino(),
                dev: meta.dev(),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = meta;
            Self::default()
        }
    }
}

/// A regular file or a symbolic link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file, executable or not.
    File {
        /// Any execute bit set.
        executable: bool,
    },
    /// A symbolic link to this target (as written, not followed).
    Link(PathBuf),
}

/// A snapshot of a directory: its id, and its tar.gz in an anonymous temporary file unless the
/// index knew the id (then it is packed only if the daemon turns out not to have it).
#[derive(Debug)]
pub struct Snapshot {
    /// `sha256:<hex>` of the tar.gz.
    pub id: String,
    /// The directory.
    dir: PathBuf,
    /// The index's directory, when one is used.
    index: Option<PathBuf>,
    /// Its files.
    entries: Vec<Entry>,
    /// The tar.gz, positioned at its start, once packed.
    file: Option<std::fs::File>,
    /// Its size in bytes.
    pub packed_bytes: u64,
    /// Files (and links) in it.
    pub files: usize,
    /// Their bytes before compression.
    pub bytes: u64,
}

/// The files of `dir` that a snapshot holds, sorted by name.
pub fn list(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    let mut walk = ignore::WalkBuilder::new(dir);
    walk.standard_filters(false)
        .hidden(false)
        .parents(true)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        // A directory that is not (yet) a git repository still has its .gitignore honoured.
        .require_git(false)
        .follow_links(false)
        .add_custom_ignore_filename(".spotsweepignore")
        .filter_entry(|e| e.file_name() != ".git");
    let mut entries = Vec::new();
    for item in walk.build() {
        let item = item.with_context(|| format!("cannot list the files of {}", dir.display()))?;
        if item.depth() == 0 {
            continue;
        }
        let Some(file_type) = item.file_type() else {
            continue;
        };
        let path = item.path().to_path_buf();
        let rel = path.strip_prefix(dir).unwrap_or(&path);
        let name = rel
            .components()
            .map(|c| c.as_os_str().to_str())
            .collect::<Option<Vec<_>>>()
            .map(|parts| parts.join("/"))
            .with_context(|| format!("{} is not a UTF-8 path: rename it, or ignore it", path.display()))?;
        if file_type.is_symlink() {
            let target =
                std::fs::read_link(&path).with_context(|| format!("cannot read link {}", path.display()))?;
            let meta = std::fs::symlink_metadata(&path)
                .with_context(|| format!("cannot read link {}", path.display()))?;
            entries.push(Entry {
                name,
                path,
                size: 0,
                kind: EntryKind::Link(target),
                stamp: Stamp::of(&meta),
            });
        } else if file_type.is_file() {
            let meta = item
                .metadata()
                .with_context(|| format!("cannot read {}", path.display()))?;
            #[cfg(unix)]
            let executable = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0;
            #[cfg(not(unix))]
            let executable = false;
            entries.push(Entry {
                name,
                path,
                size: meta.len(),
                kind: EntryKind::File { executable },
                stamp: Stamp::of(&meta),
            });
        }
        // Directories come with their files; sockets and pipes are not code.
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// The refusal of a tree over `limit` bytes: its size, its largest files, and what to do.
fn over_limit(dir: &Path, entries: &[Entry], total: u64, limit: u64) -> anyhow::Error {
    let mut largest: Vec<&Entry> = entries.iter().collect();
    largest.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.name.cmp(&b.name)));
    let lines: Vec<String> = largest
        .iter()
        .take(10)
        .map(|e| format!("  {:>10}  {}", mib(e.size), e.name))
        .collect();
    anyhow::anyhow!(
        "the working directory {} holds {} in {} files, over the {} limit of a code snapshot \
         (--code-limit-mb or SPOTSWEEP_CODE_LIMIT_MB). Its largest files:\n{}\n\
         Code should be small: keep data, checkpoints and outputs out of it (list them in .gitignore or \
         .spotsweepignore) and have trials read data from a bucket (gs://...) or a setup command.",
        dir.display(),
        mib(total),
        entries.len(),
        mib(limit),
        lines.join("\n")
    )
}

/// Bytes for people: bytes, KiB or MiB.
fn mib(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} bytes"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What [`write_archive`] wrote.
struct Written<W> {
    /// The sha256 (hex) of the tar.gz.
    hex: String,
    /// Its size.
    bytes: u64,
    /// Where it went.
    out: W,
    /// The sha256 of each file's content as packed, for the entries asked for.
    contents: Vec<Option<String>>,
}

/// Writes the tar.gz of `entries` to `out`, hashing the content of the entries that
/// `hash_content` flags.
fn write_archive<W: Write>(entries: &[Entry], hash_content: &[bool], out: W) -> anyhow::Result<Written<W>> {
    let mut contents = vec![None; entries.len()];
    let hashing = Hashing {
        inner: out,
        hasher: Sha256::new(),
        bytes: 0,
    };
    // Level 1: code compresses well enough at it, and packing stays far under a second for
    // tens of megabytes (level 6 takes about three times as long for a few percent).
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(hashing, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (i, e) in entries.iter().enumerate() {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        match &e.kind {
            EntryKind::File { executable } => {
                let file = std::fs::File::open(&e.path)
                    .with_context(|| format!("cannot read {}", e.path.display()))?;
                let size = file.metadata()?.len();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if *executable { 0o755 } else { 0o644 });
                header.set_size(size);
                let mut counted = Counted {
                    inner: file.take(size),
                    bytes: 0,
                    hasher: hash_content.get(i).copied().unwrap_or(false).then(Sha256::new),
                };
                tar.append_data(&mut header, &e.name, &mut counted)
                    .with_context(|| format!("cannot pack {}", e.path.display()))?;
                if counted.bytes != size {
                    bail!("{} changed while it was packed: submit again", e.path.display());
                }
                contents[i] = counted.hasher.map(|h| hex::encode(h.finalize()));
            }
            EntryKind::Link(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                tar.append_link(&mut header, &e.name, target)
                    .with_context(|| format!("cannot pack the link {}", e.path.display()))?;
            }
        }
    }
    let gz = tar.into_inner()?;
    let mut hashing = gz.finish()?;
    hashing.flush()?;
    Ok(Written {
        hex: hex::encode(hashing.hasher.finalize()),
        bytes: hashing.bytes,
        out: hashing.inner,
        contents,
    })
}

/// A reader that counts (and may hash) what it gave.
struct Counted<R> {
    inner: R,
    bytes: u64,
    hasher: Option<Sha256>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// Packs `entries` into an anonymous temporary file (at its start); the sha256 (hex), the
/// size, and the content hashes asked for.
fn pack_entries(entries: &[Entry], hash_content: &[bool]) -> anyhow::Result<Written<std::fs::File>> {
    let out = std::io::BufWriter::with_capacity(1 << 20, tempfile::tempfile()?);
    let written = write_archive(entries, hash_content, out)?;
    let mut file = written.out.into_inner().map_err(|e| e.into_error())?;
    file.rewind()?;
    Ok(Written {
        hex: written.hex,
        bytes: written.bytes,
        out: file,
        contents: written.contents,
    })
}

/// The files of `dir`, refusing a tree of more than `limit` bytes (before compression) with its
/// largest files named; and their total size.
fn list_within(dir: &Path, limit: u64) -> anyhow::Result<(Vec<Entry>, u64)> {
    let meta = std::fs::metadata(dir).with_context(|| format!("workdir {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("workdir {} is not a directory", dir.display());
    }
    let entries = list(dir)?;
    let total: u64 = entries.iter().map(|e| e.size).sum();
    if total > limit {
        return Err(over_limit(dir, &entries, total, limit));
    }
    Ok((entries, total))
}

/// The snapshot of `dir`: its id from the index in `index_root` when the tree has not changed
/// since it was last packed, else packed now (and the index told).
pub fn snapshot(dir: &Path, limit: u64, index_root: Option<&Path>) -> anyhow::Result<Snapshot> {
    // Before listing: a file changed after this instant may hide behind a time stamp equal to
    // the one listed (see `index::racy`).
    let listed_at = std::time::SystemTime::now();
    let (entries, total) = list_within(dir, limit)?;
    if let Some(known) = index_root.and_then(|root| index::lookup(root, dir, &entries)) {
        return Ok(Snapshot {
            id: known.id,
            dir: dir.to_path_buf(),
            index: index_root.map(Path::to_path_buf),
            files: entries.len(),
            entries,
            file: None,
            packed_bytes: known.packed_bytes,
            bytes: total,
        });
    }
    let racy: Vec<bool> = match index_root {
        Some(_) => entries.iter().map(|e| index::racy(e, listed_at)).collect(),
        None => Vec::new(),
    };
    let written = pack_entries(&entries, &racy)?;
    let id = format!("sha256:{}", written.hex);
    if let Some(root) = index_root {
        index::save(root, dir, &entries, &id, written.bytes, &written.contents);
    }
    Ok(Snapshot {
        id,
        dir: dir.to_path_buf(),
        index: index_root.map(Path::to_path_buf),
        files: entries.len(),
        entries,
        file: Some(written.out),
        packed_bytes: written.bytes,
        bytes: total,
    })
}

/// Packs a spec's `workdir` (relative to `base`, the spec file's directory), if it has one.
pub fn pack_workdir(
    spec: &serde_json::Value,
    base: &Path,
    limit_mb: u64,
) -> anyhow::Result<Option<Snapshot>> {
    let Some(workdir) = spec.get("workdir") else {
        return Ok(None);
    };
    let Some(workdir) = workdir.as_str() else {
        bail!("workdir must be a directory (a string), relative to the spec file");
    };
    if spec.get("code").is_some() {
        bail!("the spec gives both workdir and code: give one (code names a snapshot already uploaded)");
    }
    let dir = base.join(workdir);
    let dir = dir
        .canonicalize()
        .with_context(|| format!("workdir {}", dir.display()))?;
    let started = Instant::now();
    let index = index::cache_root();
    let snapshot = snapshot(&dir, limit_mb.saturating_mul(1 << 20), index.as_deref())?;
    eprintln!(
        "code: {} ({} files, {}{}) in {:.2} s",
        snapshot.id,
        snapshot.files,
        mib(snapshot.bytes),
        match snapshot.file {
            Some(_) => format!(" packed to {}", mib(snapshot.packed_bytes)),
            None => ", unchanged since it was last packed".into(),
        },
        started.elapsed().as_secs_f64()
    );
    Ok(Some(snapshot))
}

/// Uploads `snapshot` unless the daemon has it already, and makes `spec` refer to it (`code`
/// instead of `workdir`).
pub async fn attach(
    daemon: &Daemon,
    spec: &mut serde_json::Value,
    snapshot: Option<Snapshot>,
) -> anyhow::Result<()> {
    let Some(mut snapshot) = snapshot else {
        return Ok(());
    };
    let started = Instant::now();
    if daemon.has_code(&snapshot.id).await? {
        eprintln!("code: {} is already on the daemon: nothing uploaded", snapshot.id);
    } else {
        let (file, size) = match snapshot.file.take() {
            Some(file) => (file, snapshot.packed_bytes),
            // Known by the index, but this daemon lacks it: packed now, from the same files.
            None => {
                let written = pack_entries(&snapshot.entries, &[])?;
                let id = format!("sha256:{}", written.hex);
                if id != snapshot.id {
                    if let Some(root) = &snapshot.index {
                        index::forget(root, &snapshot.dir);
                    }
                    snapshot.id = id;
                }
                (written.out, written.bytes)
            }
        };
        let stream = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 1 << 20);
        let stored = daemon
            .put_code(&snapshot.id, reqwest::Body::wrap_stream(stream), size)
            .await
            .with_context(|| format!("cannot upload code snapshot {}", snapshot.id))?;
        eprintln!(
            "code: {} uploaded ({} bytes) in {:.2} s",
            stored.code,
            stored.size_bytes,
            started.elapsed().as_secs_f64()
        );
    }
    if let Some(fields) = spec.as_object_mut() {
        fields.remove("workdir");
        fields.insert("code".into(), serde_json::Value::String(snapshot.id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        list(dir).unwrap().into_iter().map(|e| e.name).collect()
    }

    fn archive_names(snapshot: Snapshot) -> Vec<(String, u32)> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(snapshot.file.unwrap()));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                assert_eq!(h.mtime().unwrap(), 0);
                assert_eq!(h.uid().unwrap(), 0);
                (e.path().unwrap().display().to_string(), h.mode().unwrap())
            })
            .collect()
    }

    #[test]
    fn gitignore_spotsweepignore_and_dot_git_are_left_out_hidden_files_kept() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        write(dir, "train.py", "print(1)\n");
        write(dir, ".gitignore", "*.ckpt\ndata/\n/outputs\n");
        write(dir, ".spotsweepignore", "notes.md\n");
        write(dir, ".env.example", "A=1\n");
        write(dir, "model.ckpt", "big");
        write(dir, "data/train.bin", "big");
        write(dir, "outputs/run1.txt", "x");
        write(
            dir,
            "src/outputs/kept.txt",
            "anchored patterns only match at the root",
        );
        write(dir, "notes.md", "private");
        write(dir, "src/lib/util.py", "x = 1\n");
        write(dir, "src/.gitignore", "*.tmp\n");
        write(dir, "src/scratch.tmp", "x");
        write(dir, ".git/HEAD", "ref: refs/heads/main\n");
        write(dir, ".git/info/exclude", "secret.txt\n");
        write(dir, "secret.txt", "x");
        assert_eq!(
            names(dir),
            [
                ".env.example",
                ".gitignore",
                ".spotsweepignore",
                "src/.gitignore",
                "src/lib/util.py",
                "src/outputs/kept.txt",
                "train.py"
            ]
        );
    }

    #[test]
    fn the_same_tree_packs_to_the_same_bytes_whatever_its_times_and_order() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        // The same files, written in another order, at other times, with other modes.
        for name in ["z.py", "a/b/c.txt", "m.sh", "a/a.txt"] {
            write(a.path(), name, name);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        for name in ["a/a.txt", "m.sh", "z.py", "a/b/c.txt"] {
            write(b.path(), name, name);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for d in [a.path(), b.path()] {
                std::fs::set_permissions(d.join("m.sh"), std::fs::Permissions::from_mode(0o700)).unwrap();
            }
            std::fs::set_permissions(b.path().join("z.py"), std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::symlink("a/a.txt", a.path().join("link")).unwrap();
            std::os::unix::fs::symlink("a/a.txt", b.path().join("link")).unwrap();
        }
        let one = snapshot(a.path(), 1 << 20, None).unwrap();
        let two = snapshot(b.path(), 1 << 20, None).unwrap();
        assert!(one.file.is_some());
        assert_eq!(one.id, two.id);
        assert_eq!(one.files, 5);
        assert!(one.id.starts_with("sha256:") && one.id.len() == 7 + 64);
        let listed = archive_names(one);
        assert_eq!(
            listed,
            [
                ("a/a.txt".to_string(), 0o644),
                ("a/b/c.txt".to_string(), 0o644),
                ("link".to_string(), 0o777),
                ("m.sh".to_string(), 0o755),
                ("z.py".to_string(), 0o644),
            ]
        );
        // A changed byte is another snapshot.
        write(b.path(), "z.py", "z.pY");
        assert_ne!(snapshot(b.path(), 1 << 20, None).unwrap().id, two.id);
    }

    #[test]
    fn a_tree_over_the_limit_is_refused_naming_its_largest_files() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "train.py", "print(1)\n");
        write(d.path(), "data/big.bin", &"x".repeat(3000));
        write(d.path(), "weights.pt", &"x".repeat(2000));
        let err = snapshot(d.path(), 4096, None).unwrap_err().to_string();
        assert!(
            err.contains("4.9 KiB in 3 files, over the 4.0 KiB limit"),
            "{err}"
        );
        let big = err.find("data/big.bin").expect(&err);
        let weights = err.find("weights.pt").expect(&err);
        assert!(big < weights, "largest first: {err}");
        assert!(
            err.contains(".gitignore or .spotsweepignore") && err.contains("bucket"),
            "{err}"
        );
        // Ignored, the data no longer counts.
        write(d.path(), ".gitignore", "data/\n*.pt\n");
        let ok = snapshot(d.path(), 4096, None).unwrap();
        assert_eq!(ok.files, 2);
        assert!(ok.bytes < 4096);
    }

    #[test]
    fn a_long_path_survives_packing() {
        let d = tempfile::tempdir().unwrap();
        let long = format!("{}/{}.py", "deep".repeat(40), "name".repeat(30));
        write(d.path(), &long, "x");
        let listed = archive_names(snapshot(d.path(), 1 << 20, None).unwrap());
        assert_eq!(listed, [(long, 0o644)]);
    }
}
