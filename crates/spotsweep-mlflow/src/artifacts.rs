//! The artifact proxy (`/api/2.0/mlflow-artifacts/artifacts/...`) over an [`object_store`]: the
//! local disk by default, or a GCS bucket. Bodies stream in both directions, so a file of any
//! size passes through in bounded memory.
//!
//! Path safety: the request path is percent-decoded exactly once (by the router) and then split
//! into segments; any empty, `.` or `..` segment, a backslash or a NUL is refused with a 400
//! before the store is touched. object_store encodes each segment again on its side, so even a
//! literal `%2e%2e` that survived as a name stays a name inside the root.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::MlflowState;
use crate::error::{MlflowError, MlflowResult};
use crate::extract::RunRef;

/// Where artifacts are kept: a root inside an object store.
#[derive(Debug, Clone)]
pub struct ArtifactRepo {
    store: Arc<dyn ObjectStore>,
    /// Prefix inside the store (empty for a local directory; the bucket prefix for GCS).
    prefix: Vec<String>,
    /// Human-readable location for logs.
    location: String,
    /// The directory, when the store is the local disk (empty directories are pruned there).
    local_root: Option<std::path::PathBuf>,
}

/// Errors of artifact configuration.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactConfigError {
    /// The destination could not be opened.
    #[error("cannot open artifact destination {0}: {1}")]
    Open(String, String),
}

impl ArtifactRepo {
    /// Opens a destination: a local directory (created if missing), or `gs://bucket/prefix`
    /// (credentials from the environment, as object_store's GCS builder reads them).
    pub fn open(destination: &str) -> Result<Self, ArtifactConfigError> {
        let fail =
            |e: &dyn std::fmt::Display| ArtifactConfigError::Open(destination.to_owned(), e.to_string());
        if let Some(rest) = destination.strip_prefix("gs://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| fail(&e))?;
            let prefix = prefix
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            return Ok(Self {
                store: Arc::new(store),
                prefix,
                location: destination.to_owned(),
                local_root: None,
            });
        }
        std::fs::create_dir_all(destination).map_err(|e| fail(&e))?;
        let store =
            object_store::local::LocalFileSystem::new_with_prefix(destination).map_err(|e| fail(&e))?;
        let local_root = Some(std::path::PathBuf::from(destination));
        Ok(Self {
            store: Arc::new(store),
            prefix: vec![],
            location: destination.to_owned(),
            local_root,
        })
    }

    /// Where the artifacts are, for logs.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn store_path(&self, segments: &[&str]) -> StorePath {
        StorePath::from_iter(
            self.prefix
                .iter()
                .map(String::as_str)
                .chain(segments.iter().copied()),
        )
    }

    /// Lists one level under `dir`: `(name, is_dir, size)`, names relative to `dir`.
    pub async fn list(&self, dir: &[&str]) -> MlflowResult<Vec<(String, bool, Option<u64>)>> {
        let prefix = self.store_path(dir);
        let listing = match self.store.list_with_delimiter(Some(&prefix)).await {
            Ok(l) => l,
            Err(object_store::Error::NotFound { .. }) => return Ok(vec![]),
            Err(e) => return Err(MlflowError::internal(&e)),
        };
        let name_of = |p: &StorePath| {
            p.filename().map(|f| {
                percent_encoding::percent_decode_str(f)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        };
        let mut out: Vec<(String, bool, Option<u64>)> = Vec::new();
        for d in &listing.common_prefixes {
            if let Some(name) = name_of(d) {
                out.push((name, true, None));
            }
        }
        for o in &listing.objects {
            if let Some(name) = name_of(&o.location) {
                out.push((name, false, Some(o.size)));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Splits and checks an artifact path. `..`, `.`, empty segments (`a//b`, a leading `/`),
/// backslashes and NULs are refused, however they were encoded on the wire.
pub fn safe_segments(path: &str) -> MlflowResult<Vec<&str>> {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if trimmed.is_empty() {
        return Ok(vec![]);
    }
    let invalid = || {
        MlflowError::invalid(format!(
            "Invalid path: '{path}'. Artifact paths are relative and may not contain '..', '.', '\\' or empty segments."
        ))
    };
    if trimmed.contains(['\\', '\0']) {
        return Err(invalid());
    }
    let segments: Vec<&str> = trimmed.split('/').collect();
    if segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return Err(invalid());
    }
    // File systems refuse names over 255 bytes; the store writes each segment encoded.
    if let Some(long) = segments
        .iter()
        .find(|s| object_store::path::PathPart::from(**s).as_ref().len() > MAX_SEGMENT_BYTES)
    {
        return Err(MlflowError::invalid(format!(
            "Invalid path: the name '{}...' is longer than {MAX_SEGMENT_BYTES} bytes (as stored); shorten it",
            long.chars().take(40).collect::<String>()
        )));
    }
    Ok(segments)
}

/// The longest file or directory name an artifact path may have, as stored.
const MAX_SEGMENT_BYTES: usize = 255;

/// `PUT /api/2.0/mlflow-artifacts/artifacts/<path>`: streams the body into the store.
/// The object appears only when the upload completes (a temporary file is renamed, or the
/// bucket's multipart upload is completed), so a broken upload never leaves a truncated artifact.
pub async fn upload_artifact(
    State(s): State<MlflowState>,
    UrlPath(path): UrlPath<String>,
    body: Body,
) -> MlflowResult<Json<Value>> {
    let segments = safe_segments(&path)?;
    store_body(&s.artifacts, &segments, body).await?;
    Ok(Json(json!({})))
}

/// Streams a request body into the artifact at `segments`.
async fn store_body(repo: &ArtifactRepo, segments: &[&str], body: Body) -> MlflowResult<()> {
    if segments.is_empty() {
        return Err(MlflowError::invalid("An artifact upload needs a file path"));
    }
    let location = repo.store_path(segments);
    let upload = repo
        .store
        .put_multipart(&location)
        .await
        .map_err(|e| MlflowError::storage(&e))?;
    let mut writer = WriteMultipart::new(upload);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => {
                // Bound the parts in flight: memory stays at a few chunks whatever the size.
                // A failed part must abort the upload: WriteMultipart does not on drop, and a
                // bucket bills the parts of an unfinished upload until someone aborts it.
                if let Err(e) = writer.wait_for_capacity(4).await {
                    let _ = writer.abort().await;
                    return Err(MlflowError::storage(&e));
                }
                writer.put(bytes);
            }
            Err(e) => {
                let _ = writer.abort().await;
                return Err(MlflowError::invalid(format!("the upload was interrupted: {e}")));
            }
        }
    }
    writer.finish().await.map_err(|e| MlflowError::storage(&e))?;
    Ok(())
}

/// `GET /api/2.0/mlflow-artifacts/artifacts/<path>`: streams a file.
pub async fn download_artifact(State(s): State<MlflowState>, UrlPath(path): UrlPath<String>) -> Response {
    match download(&s, &path).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

pub(crate) async fn download(s: &MlflowState, path: &str) -> MlflowResult<Response> {
    let segments = safe_segments(path)?;
    if segments.is_empty() {
        return Err(MlflowError::not_found("No artifact path given"));
    }
    let repo = &s.artifacts;
    let got = match repo.store.get(&repo.store_path(&segments)).await {
        Ok(g) => g,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(MlflowError::not_found(format!(
                "Artifact '{path}' does not exist"
            )));
        }
        Err(e) => return Err(MlflowError::internal(&e)),
    };
    let size = got.meta.size;
    let name = segments.last().copied().unwrap_or("artifact");
    let mime = mime_guess::from_path(name).first_or_octet_stream();
    let stream = got.into_stream().map_err(std::io::Error::other);
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(mime.essence_str()) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    let disposition = format!(
        "attachment; filename*=UTF-8''{}",
        percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// `?path=` of the proxy's listing route.
#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    path: Option<String>,
}

fn files_json(entries: Vec<(String, bool, Option<u64>)>, prefix: &str) -> Vec<Value> {
    entries
        .into_iter()
        .map(|(name, is_dir, size)| {
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            match size {
                Some(size) if !is_dir => json!({ "path": path, "is_dir": false, "file_size": size }),
                _ => json!({ "path": path, "is_dir": true }),
            }
        })
        .collect()
}

/// `GET /api/2.0/mlflow-artifacts/artifacts?path=<dir>`: one level, names relative to `dir`.
pub async fn list_artifacts(
    State(s): State<MlflowState>,
    Query(q): Query<ListQuery>,
) -> MlflowResult<Json<Value>> {
    let path = q.path.unwrap_or_default();
    let segments = safe_segments(&path)?;
    let entries = s.artifacts.list(&segments).await?;
    if entries.is_empty() {
        return Ok(Json(json!({})));
    }
    Ok(Json(json!({ "files": files_json(entries, "") })))
}

/// `DELETE /api/2.0/mlflow-artifacts/artifacts/<path>`: a file, or a directory recursively.
pub async fn delete_artifact(
    State(s): State<MlflowState>,
    UrlPath(path): UrlPath<String>,
) -> MlflowResult<Json<Value>> {
    let segments = safe_segments(&path)?;
    if segments.is_empty() {
        return Err(MlflowError::invalid("Refusing to delete the artifact root"));
    }
    let repo = &s.artifacts;
    let location = repo.store_path(&segments);
    // The path is a file, a directory, or nothing: delete the object if there is one (an error
    // here just means it is not a file), then everything below it.
    let _ = repo.store.delete(&location).await;
    let mut children = repo.store.list(Some(&location));
    while let Some(meta) = children.next().await {
        let meta = meta.map_err(|e| MlflowError::internal(&e))?;
        match repo.store.delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(MlflowError::internal(&e)),
        }
    }
    // A local directory outlives its files; remove it so that listings no longer show it. The
    // segments were checked by `safe_segments`, so the joined path stays under the root.
    if let Some(root) = &repo.local_root {
        let dir = segments.iter().fold(root.clone(), |p, s| p.join(s));
        if dir.is_dir() {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
    }
    Ok(Json(json!({})))
}

/// `GET /api/2.0/mlflow/artifacts/list?run_id=&path=`: the tracking API's listing, with paths
/// relative to the run's artifact root and that root as `root_uri`.
#[derive(Deserialize)]
pub struct RunArtifactsQuery {
    #[serde(flatten)]
    run: RunRef,
    #[serde(default)]
    path: Option<String>,
}

/// Lists a run's artifacts through the tracking API.
pub async fn list_run_artifacts(
    State(s): State<MlflowState>,
    Query(q): Query<RunArtifactsQuery>,
) -> MlflowResult<Json<Value>> {
    let run = s.store.get_run(q.run.id()?).await?;
    list_under(&s, &run.info.artifact_uri, q.path.as_deref().unwrap_or_default()).await
}

/// One level of the artifacts under `root_uri` (a run's or a logged model's root) at `rel`,
/// paths relative to the root: `{"root_uri": ..., "files": [...]}`. A root outside this
/// server's proxy lists as just its `root_uri`, as the reference does.
pub(crate) async fn list_under(s: &MlflowState, root_uri: &str, rel: &str) -> MlflowResult<Json<Value>> {
    let rel_segments = safe_segments(rel)?;
    let Some(root) = root_uri.strip_prefix("mlflow-artifacts:") else {
        return Ok(Json(json!({ "root_uri": root_uri })));
    };
    let root = root.trim_start_matches('/');
    let mut segments = safe_segments(root)?;
    segments.extend(rel_segments.iter().copied());
    let entries = s.artifacts.list(&segments).await?;
    let prefix = rel_segments.join("/");
    let mut out = serde_json::Map::new();
    out.insert("root_uri".into(), json!(root_uri));
    if !entries.is_empty() {
        out.insert("files".into(), json!(files_json(entries, &prefix)));
    }
    Ok(Json(Value::Object(out)))
}

/// Streams the file at `rel` under `root_uri` (a run's, a logged model's or a model version's
/// root), which must be behind this server's proxy.
pub(crate) async fn download_under(s: &MlflowState, root_uri: &str, rel: &str) -> MlflowResult<Response> {
    let mut path = proxied_root(root_uri)?.join("/");
    if safe_segments(rel)?.is_empty() {
        return Err(MlflowError::invalid("An artifact path is required"));
    }
    path.push('/');
    path.push_str(rel);
    download(s, &path).await
}

/// The segments of an artifact root inside the proxy's store, or a 400 for roots that live
/// elsewhere (an explicit `artifact_location` the client writes to directly).
fn proxied_root(root_uri: &str) -> MlflowResult<Vec<String>> {
    let Some(root) = root_uri.strip_prefix("mlflow-artifacts:") else {
        return Err(MlflowError::invalid(format!(
            "The artifacts at {root_uri} are not behind this server's proxy"
        )));
    };
    Ok(safe_segments(root.trim_start_matches('/'))?
        .into_iter()
        .map(str::to_owned)
        .collect())
}

impl ArtifactRepo {
    /// Writes `bytes` as the file at `rel` under `root_uri` (a run's artifact root behind this
    /// server's proxy): how the daemon itself logs an artifact, such as a sweep run's spec.
    pub async fn put_under(&self, root_uri: &str, rel: &str, bytes: Vec<u8>) -> MlflowResult<()> {
        let root = proxied_root(root_uri)?;
        let mut segments: Vec<&str> = root.iter().map(String::as_str).collect();
        segments.extend(safe_segments(rel)?);
        let body = Body::from(bytes);
        store_body(self, &segments, body).await
    }
}

/// The segments of a run's artifact root inside the proxy's store.
async fn run_root(s: &MlflowState, run_id: &str) -> MlflowResult<Vec<String>> {
    let run = s.store.get_run(run_id).await?;
    proxied_root(&run.info.artifact_uri)
}

/// `?run_id=&path=` (or `run_uuid`) of the UI's artifact routes.
#[derive(Deserialize)]
pub struct RunArtifactQuery {
    #[serde(flatten)]
    run: RunRef,
    path: Option<String>,
}

/// `GET /get-artifact?run_id=&path=`: the UI's artifact viewer.
pub async fn get_run_artifact(State(s): State<MlflowState>, Query(q): Query<RunArtifactQuery>) -> Response {
    let result = async {
        let run = s.store.get_run(q.run.id()?).await?;
        download_under(&s, &run.info.artifact_uri, q.path.as_deref().unwrap_or("")).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /ajax-api/2.0/mlflow/upload-artifact?run_uuid=&path=`: the UI's upload.
pub async fn upload_run_artifact(
    State(s): State<MlflowState>,
    Query(q): Query<RunArtifactQuery>,
    body: Body,
) -> MlflowResult<Json<Value>> {
    let root = run_root(&s, q.run.id()?).await?;
    let rel = q.path.as_deref().ok_or_else(|| MlflowError::missing("path"))?;
    let mut segments: Vec<&str> = root.iter().map(String::as_str).collect();
    segments.extend(safe_segments(rel)?);
    store_body(&s.artifacts, &segments, body).await?;
    Ok(Json(json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused() {
        for bad in [
            "../x",
            "a/../b",
            "..",
            "/etc/passwd",
            "a//b",
            "a\\..\\b",
            "./a",
            "a/./b",
            "a\0b",
        ] {
            assert!(safe_segments(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            safe_segments("1/abc/artifacts/m.txt").unwrap(),
            vec!["1", "abc", "artifacts", "m.txt"]
        );
        assert_eq!(safe_segments("").unwrap(), Vec::<&str>::new());
        assert_eq!(safe_segments("dir/").unwrap(), vec!["dir"]);
        // A literal `%2e%2e` (double-encoded on the wire) is a plain name, not a parent reference.
        assert_eq!(safe_segments("%2e%2e/x").unwrap(), vec!["%2e%2e", "x"]);
    }
}
