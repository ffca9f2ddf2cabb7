//! The version of the code a sweep runs, read from git when the CLI submits it: the commit,
//! branch, remote (without credentials), whether the tree was dirty and its diff. Sent in the
//! spec's `source`; every trial's MLflow run carries it as `mlflow.source.*` tags, and the
//! sweep's own run keeps the diff as `diff.patch`.

use std::path::Path;
use std::process::Command;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The spec's `source`, as the daemon reads it (`spotsweep_core::sweep::Source`).
#[derive(Debug, Serialize)]
pub struct Source {
    commit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repo_url: Option<String>,
    dirty: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notebook_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    diff: Option<String>,
    diff_truncated: bool,
}

/// The most of a dirty tree's diff the CLI sends: beyond it the diff is cut (and says so). The
/// daemon takes specs of a few MiB at most, and a diff that size is a new version, not a patch.
pub const MAX_DIFF_BYTES: usize = 1 << 20;

/// Runs git in `dir`; its trimmed stdout when it succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

/// The source of code in `dir`, when `dir` is inside a git repository with a commit.
/// `launched`: the spec file or notebook, named relative to the repository's root in
/// `mlflow.source.name`. `notebook`: the notebook, whose sha256 is recorded.
pub fn detect(dir: &Path, launched: &Path, notebook: Option<&Path>) -> Option<Source> {
    let root = git(dir, &["rev-parse", "--show-toplevel"])?;
    let commit = git(dir, &["rev-parse", "--verify", "-q", "HEAD"])?;
    let branch = git(dir, &["symbolic-ref", "--short", "-q", "HEAD"]).filter(|b| !b.is_empty());
    let remote = git(dir, &["remote"])
        .and_then(|names| {
            // `origin` when there is one, else the first remote.
            let names: Vec<&str> = names.lines().collect();
            let name = names.iter().find(|n| **n == "origin").or(names.first())?;
            git(dir, &["remote", "get-url", name])
        })
        .map(|url| strip_credentials(&url));
    // Untracked files are not in `git diff HEAD` either: the tree is dirty when a tracked file
    // changed.
    let dirty = git(dir, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let (diff, diff_truncated) = if dirty {
        let full = git(dir, &["diff", "HEAD"]).unwrap_or_default();
        let (diff, cut) = bounded_diff(full, MAX_DIFF_BYTES);
        (Some(diff), cut)
    } else {
        (None, false)
    };
    let name = std::path::absolute(launched)
        .ok()
        .and_then(|p| {
            let root = Path::new(&root).canonicalize().ok()?;
            let p = p.parent()?.canonicalize().ok()?.join(p.file_name()?);
            p.strip_prefix(&root).ok().map(|r| r.display().to_string())
        })
        .or_else(|| Some(launched.display().to_string()));
    let notebook_sha256 = notebook
        .and_then(|p| std::fs::read(p).ok())
        .map(|bytes| hex::encode(Sha256::digest(bytes)));
    Some(Source {
        commit: Some(commit),
        branch,
        repo_url: remote,
        dirty,
        name,
        notebook_sha256,
        diff,
        diff_truncated,
    })
}

/// A remote URL without the credentials it may carry (`https://user:token@host/x` ->
/// `https://host/x`). An ssh user name (`ssh://git@host`, `git@host:x`) is no secret and stays;
/// an ssh password does not.
pub fn strip_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // scp-like `user@host:path`, or a local path: no password can be in it.
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let ssh = scheme.eq_ignore_ascii_case("ssh") || scheme.to_ascii_lowercase().contains("ssh");
    match userinfo.split_once(':').map_or(userinfo, |(user, _)| user) {
        user if ssh && !user.is_empty() => format!("{scheme}://{user}@{host}{path}"),
        _ => format!("{scheme}://{host}{path}"),
    }
}

/// `diff` cut to at most `max` bytes (at a line end when one is near, always at a character
/// boundary), with a last line saying it was cut; whether it was.
pub fn bounded_diff(mut diff: String, max: usize) -> (String, bool) {
    if diff.len() <= max {
        return (diff, false);
    }
    let total = diff.len();
    let mut end = max;
    while !diff.is_char_boundary(end) {
        end -= 1;
    }
    if let Some(line_end) = diff[..end].rfind('\n') {
        end = line_end + 1;
    }
    diff.truncate(end);
    diff.push_str(&format!(
        "\n# spotsweep: diff cut at {end} of {total} bytes (the limit is {max} bytes)\n"
    ));
    (diff, true)
}

/// Puts the source of the code in `dir` into `spec` (unless it has one already).
pub fn attach(spec: &mut serde_json::Value, dir: &Path, launched: &Path, notebook: Option<&Path>) {
    if spec.get("source").is_some() {
        return;
    }
    let Some(source) = detect(dir, launched, notebook) else {
        return;
    };
    if source.diff_truncated {
        eprintln!(
            "the working tree's diff is over {} MiB: the sweep keeps its first MiB (diff.patch says where it was cut)",
            MAX_DIFF_BYTES >> 20
        );
    }
    if let Ok(value) = serde_json::to_value(source) {
        spec["source"] = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_stripped_from_remote_urls_and_ssh_users_kept() {
        let cases = [
            (
                "https://user:secret@github.com/o/r.git",
                "https://github.com/o/r.git",
            ),
            (
                "https://ghp_token@github.com/o/r.git",
                "https://github.com/o/r.git",
            ),
            ("https://x:y@host:8443/a@b/r", "https://host:8443/a@b/r"),
            ("https://github.com/o/r.git", "https://github.com/o/r.git"),
            ("ssh://git:pw@host/r.git", "ssh://git@host/r.git"),
            ("ssh://git@host/r.git", "ssh://git@host/r.git"),
            ("git@github.com:o/r.git", "git@github.com:o/r.git"),
            ("/srv/repos/r.git", "/srv/repos/r.git"),
        ];
        for (url, want) in cases {
            assert_eq!(strip_credentials(url), want, "{url}");
        }
    }

    #[test]
    fn a_diff_over_the_limit_is_cut_at_a_line_and_says_so() {
        let small = "a\nb\n".to_owned();
        assert_eq!(bounded_diff(small.clone(), 10), (small, false));
        let (cut, truncated) = bounded_diff("line one\nline two\nline three\n".into(), 20);
        assert!(truncated);
        assert!(cut.starts_with("line one\nline two\n\n# spotsweep: diff cut at 18 of 29 bytes"));
        // Never inside a character, even without a line end.
        let (cut, truncated) = bounded_diff("ééééé".into(), 3);
        assert!(truncated);
        assert!(cut.starts_with("é\n# spotsweep"));
    }
}
