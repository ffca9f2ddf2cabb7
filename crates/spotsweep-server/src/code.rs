//! Code snapshots: the tar.gz of a sweep's working directory that `spotsweep submit` packs, kept
//! by the daemon under `<data-dir>/code/<hex>.tar.gz` and named by the sha256 of its bytes
//! (`sha256:<hex>`, a spec's `code`). Uploaded once (`HEAD` first, then `PUT`), streamed to a
//! private temporary file while it is hashed, and renamed into place only when the hash
//! matches the name: a stored snapshot is always whole and what its name says. Agents download
//! it (`GET`) once per machine and check the hash again.
//!
//! Who may read one: API tokens, and a pool's agents (a VM's token) the snapshots of that pool's
//! running or paused sweeps; a trial's token none.

use std::path::{Path, PathBuf};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use spotsweep_api::{ApiErrorBody, CodeSnapshotBody};
use spotsweep_core::sweep::code_digest;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::api::{ApiError, ApiPath};
use crate::auth::VmPrincipal;

/// The routes of code snapshots.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_code, head_code, put_code))
}

/// The snapshots on disk.
#[derive(Debug)]
pub struct CodeStore {
    /// `<data-dir>/code`.
    dir: PathBuf,
    /// Largest upload taken, in bytes.
    max_bytes: u64,
}

/// Why an upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// More bytes than the daemon takes.
    #[error("the snapshot is larger than this daemon takes ({limit} bytes, code_max_mb in its config)")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// The bytes do not hash to the name they were sent under.
    #[error(
        "the upload does not match its name: its {bytes} bytes hash to sha256:{actual}, not sha256:{expected}; \
         nothing was stored (a transfer that went wrong, or a client that named the snapshot wrongly)"
    )]
    Mismatch {
        /// The hash in the URL.
        expected: String,
        /// The hash of what came.
        actual: String,
        /// How many bytes came.
        bytes: u64,
    },
    /// The client went away or sent a broken body.
    #[error("the upload was cut short: {0}")]
    Body(String),
    /// The disk.
    #[error("cannot store the snapshot: {0}")]
    Io(#[from] std::io::Error),
}

/// Removes a temporary file when dropped, unless it was renamed into place.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl CodeStore {
    /// The store in `dir` (created, owner-only), taking uploads up to `max_bytes`. Temporary
    /// files of uploads that a crash cut short are removed.
    pub fn open(dir: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        for entry in std::fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self { dir, max_bytes })
    }

    /// Where the snapshot with this hex digest is (or would be).
    pub fn path(&self, hex: &str) -> PathBuf {
        self.dir.join(format!("{hex}.tar.gz"))
    }

    /// Its size, when the daemon has it.
    pub async fn size(&self, hex: &str) -> Option<u64> {
        tokio::fs::metadata(self.path(hex)).await.ok().map(|m| m.len())
    }

    /// Streams `body` to a private temporary file, hashing it, and renames it into place when
    /// it hashes to `hex`; its size. Never holds more than one chunk in memory.
    pub async fn store(
        &self,
        hex: &str,
        body: impl futures::Stream<Item = Result<axum::body::Bytes, axum::Error>>,
    ) -> Result<u64, UploadError> {
        use tokio::io::AsyncWriteExt;
        let tmp_path = self
            .dir
            .join(format!(".tmp-{hex}-{}", hex::encode(rand::random::<[u8; 6]>())));
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        let mut file = options.open(&tmp_path).await?;
        let mut tmp = TempFile(Some(tmp_path.clone()));
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        futures::pin_mut!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
            bytes += chunk.len() as u64;
            if bytes > self.max_bytes {
                return Err(UploadError::TooLarge {
                    limit: self.max_bytes,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != hex {
            return Err(UploadError::Mismatch {
                expected: hex.to_owned(),
                actual,
                bytes,
            });
        }
        // On disk before it is acknowledged: a crash after the answer keeps it.
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&tmp_path, self.path(hex)).await?;
        tmp.0 = None;
        if let Ok(dir) = tokio::fs::File::open(&self.dir).await {
            let _ = dir.sync_all().await;
        }
        Ok(bytes)
    }
}

/// The hex digest of a snapshot id from a URL, or a 400 saying what an id looks like.
fn digest(id: &str) -> Result<&str, ApiError> {
    code_digest(id).ok_or_else(|| {
        ApiError::invalid(format!(
            "'{id}' is not a code snapshot id: use sha256:<64 lowercase hex digits>, the sha256 of the tar.gz"
        ))
    })
}

/// Whether `pool`'s agents may download snapshot `id`: a running or paused sweep of the pool
/// runs in it, or a rerun on the pool does.
async fn pool_uses(s: &AppState, pool: &str, id: &str) -> Result<bool, ApiError> {
    Ok(s.sweeps.pool_uses_code(pool, id).await?)
}

/// Whether the daemon has a code snapshot: 200 with its size as `Content-Length`, or 404. The
/// CLI asks first, so that unchanged code is not sent again.
#[utoipa::path(
    head,
    path = "/api/v1/code/{id}",
    tag = "code",
    params(("id" = String, Path, description = "sha256:<hex> of the snapshot's bytes")),
    responses(
        (status = 200, description = "The daemon has it; Content-Length is its size"),
        (status = 404, description = "The daemon does not have it"),
        (status = 400, description = "Not a snapshot id"),
        (status = 401, description = "No valid bearer token"),
    ),
    security(("bearer" = []))
)]
pub async fn head_code(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let hex = digest(&id)?;
    let size = s
        .code
        .size(hex)
        .await
        .ok_or_else(|| ApiError::not_found(format!("no code snapshot {id} on this daemon")))?;
    let mut response = Response::new(Body::empty());
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    Ok(response)
}

/// Downloads a code snapshot (a tar.gz). A pool's agents may read the snapshots of that pool's
/// running or paused sweeps; a trial's token none.
#[utoipa::path(
    get,
    path = "/api/v1/code/{id}",
    tag = "code",
    params(("id" = String, Path, description = "sha256:<hex> of the snapshot's bytes")),
    responses(
        (status = 200, description = "The snapshot", content_type = "application/gzip"),
        (status = 400, description = "Not a snapshot id", body = ApiErrorBody),
        (status = 403, description = "An agent's token, and no sweep of its pool runs in this snapshot", body = ApiErrorBody),
        (status = 404, description = "The daemon does not have it", body = ApiErrorBody),
        (status = 401, description = "No valid bearer token"),
    ),
    security(("bearer" = []))
)]
pub async fn get_code(
    State(s): State<AppState>,
    vm: Option<axum::Extension<VmPrincipal>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let hex = digest(&id)?;
    if let Some(axum::Extension(VmPrincipal(scope))) = &vm
        && !pool_uses(&s, &scope.pool, &id).await?
    {
        return Err(ApiError::forbidden(format!(
            "this token belongs to agent {} of pool {}: it can read the code of that pool's sweeps, and no running \
             or paused sweep (nor rerun) of pool {} runs in {id}",
            scope.name, scope.pool, scope.pool
        )));
    }
    let path = s.code.path(hex);
    let file = tokio::fs::File::open(&path).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ApiError::not_found(format!(
            "no code snapshot {id} on this daemon (it was never uploaded, or its file {} was removed)",
            path.display()
        )),
        _ => ApiError::internal(format!("cannot read {}: {e}", path.display())),
    })?;
    let len = file.metadata().await.map(|m| m.len()).ok();
    tracing::info!(code = %id, agent = vm.as_ref().map(|v| v.0.0.name.as_str()).unwrap_or("-"), bytes = len, "code snapshot sent");
    let mut response = Response::new(Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        file,
        256 << 10,
    )));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/gzip"));
    if let Some(len) = len {
        headers.insert(header::CONTENT_LENGTH, len.into());
    }
    Ok(response)
}

/// Uploads a code snapshot under the sha256 of its bytes. It is streamed to disk and kept only
/// when the bytes hash to the id in the URL (400 otherwise, nothing stored); one the daemon has
/// already is not written again (200, `created: false`). At most `code_max_mb` (default 512 MiB).
#[utoipa::path(
    put,
    path = "/api/v1/code/{id}",
    tag = "code",
    params(("id" = String, Path, description = "sha256:<hex> of the snapshot's bytes")),
    request_body(content = Vec<u8>, description = "The tar.gz", content_type = "application/gzip"),
    responses(
        (status = 201, description = "Stored", body = CodeSnapshotBody),
        (status = 200, description = "The daemon already had it", body = CodeSnapshotBody),
        (status = 400, description = "Not a snapshot id, or the bytes do not hash to it", body = ApiErrorBody),
        (status = 413, description = "Larger than the daemon takes", body = ApiErrorBody),
        (status = 401, description = "No valid bearer token"),
    ),
    security(("bearer" = []))
)]
pub async fn put_code(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<CodeSnapshotBody>), ApiError> {
    let hex = digest(&id)?.to_owned();
    if let Some(size) = s.code.size(&hex).await {
        return Ok((
            StatusCode::OK,
            Json(CodeSnapshotBody {
                code: id,
                size_bytes: size,
                created: false,
            }),
        ));
    }
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = |limit: u64| {
        ApiError::with_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the code snapshot is larger than this daemon takes ({} MiB, code_max_mb in its config): keep data \
                 out of the working directory (.gitignore or .spotsweepignore) and read it from a bucket",
                limit >> 20
            ),
        )
    };
    if announced.is_some_and(|n| n > s.code.max_bytes) {
        return Err(too_large(s.code.max_bytes));
    }
    let size = match s.code.store(&hex, body.into_data_stream()).await {
        Ok(size) => size,
        Err(UploadError::TooLarge { limit }) => return Err(too_large(limit)),
        Err(e @ (UploadError::Mismatch { .. } | UploadError::Body(_))) => {
            tracing::warn!(code = %id, error = %e, "code snapshot refused");
            return Err(ApiError::invalid(e.to_string()));
        }
        Err(UploadError::Io(e)) => {
            return Err(ApiError::internal(format!(
                "cannot store code snapshot {id}: {e}"
            )));
        }
    };
    tracing::info!(code = %id, bytes = size, "code snapshot stored");
    Ok((
        StatusCode::CREATED,
        Json(CodeSnapshotBody {
            code: id,
            size_bytes: size,
            created: true,
        }),
    ))
}

/// A 400 when a spec names a snapshot this daemon does not have.
pub(crate) async fn check_exists(s: &AppState, id: &str) -> Result<(), ApiError> {
    let hex = digest(id)?;
    if s.code.size(hex).await.is_none() {
        return Err(ApiError::invalid(format!(
            "code: this daemon has no snapshot {id}: upload it first with PUT /api/v1/code/{id} (spotsweep submit \
             does this for a spec with workdir)"
        )));
    }
    Ok(())
}

/// The code store's directory under a data dir.
pub fn dir_in(data_dir: &Path) -> PathBuf {
    data_dir.join("code")
}
