//! The CLI's view of a daemon: where it is, which token to use, and the few calls it makes.

use std::path::Path;

use anyhow::{Context, bail};
use spotsweep_api::{SweepBody, SweepList, TrialList};

/// A daemon to talk to.
pub struct Daemon {
    http: reqwest::Client,
    /// Base URL.
    pub url: String,
    /// The bearer token, if any.
    pub token: Option<String>,
}

impl Daemon {
    /// From flags or `SPOTSWEEP_SERVER`/`SPOTSWEEP_TOKEN`, else from the data dir's
    /// `server.url` and `admin.token` (written by `spotsweep serve`).
    pub fn locate(server: Option<String>, token: Option<String>, data_dir: &Path) -> anyhow::Result<Self> {
        let url = match server {
            Some(s) => s,
            None => std::fs::read_to_string(data_dir.join("server.url"))
                .map(|s| s.trim().to_owned())
                .with_context(|| {
                    format!(
                        "no daemon given: pass --server URL, set SPOTSWEEP_SERVER, or run `spotsweep serve --data-dir {}`",
                        data_dir.display()
                    )
                })?,
        };
        let token = token.or_else(|| {
            std::fs::read_to_string(data_dir.join("admin.token"))
                .ok()
                .map(|t| t.trim().to_owned())
        });
        Ok(Self::new(url, token))
    }

    /// A daemon at `url`.
    pub fn new(url: String, token: Option<String>) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: url.trim_end_matches('/').to_owned(),
            token,
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.url));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn parse<T: serde::de::DeserializeOwned>(r: reqwest::Response) -> anyhow::Result<T> {
        let status = r.status();
        let text = r.text().await?;
        if !status.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
                .unwrap_or(text);
            bail!("{status}: {message}");
        }
        serde_json::from_str(&text).with_context(|| format!("unexpected answer: {text}"))
    }

    /// Submits a spec (JSON value).
    pub async fn submit(&self, spec: &serde_json::Value) -> anyhow::Result<SweepBody> {
        Self::parse(
            self.request(reqwest::Method::POST, "/api/v1/sweeps")
                .json(spec)
                .send()
                .await?,
        )
        .await
    }

    /// One sweep.
    pub async fn sweep(&self, id: i64) -> anyhow::Result<SweepBody> {
        Self::parse(
            self.request(reqwest::Method::GET, &format!("/api/v1/sweeps/{id}"))
                .send()
                .await?,
        )
        .await
    }

    /// Every sweep.
    pub async fn sweeps(&self) -> anyhow::Result<SweepList> {
        Self::parse(
            self.request(reqwest::Method::GET, "/api/v1/sweeps")
                .send()
                .await?,
        )
        .await
    }

    /// A sweep's trials.
    pub async fn trials(&self, id: i64) -> anyhow::Result<TrialList> {
        Self::parse(
            self.request(reqwest::Method::GET, &format!("/api/v1/sweeps/{id}/trials"))
                .send()
                .await?,
        )
        .await
    }

    /// One trial of a sweep.
    pub async fn trial(&self, sweep: i64, number: i64) -> anyhow::Result<spotsweep_api::TrialBody> {
        let path = format!("/api/v1/sweeps/{sweep}/trials/{number}");
        Self::parse(self.request(reqwest::Method::GET, &path).send().await?).await
    }

    /// Queues a rerun of a finished trial (on `pool`, or the sweep's).
    pub async fn rerun(
        &self,
        sweep: i64,
        number: i64,
        pool: Option<&str>,
    ) -> anyhow::Result<spotsweep_api::TrialBody> {
        let path = format!("/api/v1/sweeps/{sweep}/trials/{number}/rerun");
        let body = spotsweep_api::RerunRequest {
            pool: pool.map(str::to_owned),
        };
        Self::parse(
            self.request(reqwest::Method::POST, &path)
                .json(&body)
                .send()
                .await?,
        )
        .await
    }

    /// How a trial was launched: its command, environment and code.
    pub async fn launch(&self, sweep: i64, number: i64) -> anyhow::Result<spotsweep_api::TrialLaunchBody> {
        let path = format!("/api/v1/sweeps/{sweep}/trials/{number}/launch");
        Self::parse(self.request(reqwest::Method::GET, &path).send().await?).await
    }

    /// What the fleet has cost (one sweep's trials too, with `sweep_id`).
    pub async fn cost(&self, sweep_id: Option<i64>) -> anyhow::Result<spotsweep_api::CostReport> {
        let path = match sweep_id {
            Some(id) => format!("/api/v1/cost?sweep_id={id}"),
            None => "/api/v1/cost".to_string(),
        };
        Self::parse(self.request(reqwest::Method::GET, &path).send().await?).await
    }

    /// Whether the daemon has the code snapshot `id` (`HEAD /api/v1/code/{id}`).
    pub async fn has_code(&self, id: &str) -> anyhow::Result<bool> {
        let r = self
            .request(reqwest::Method::HEAD, &format!("/api/v1/code/{id}"))
            .send()
            .await?;
        match r.status() {
            s if s.is_success() => Ok(true),
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            s => bail!("{s}: the daemon cannot say whether it has code snapshot {id}"),
        }
    }

    /// Uploads a code snapshot (`size` bytes read from `file`), streamed.
    pub async fn put_code(
        &self,
        id: &str,
        file: std::fs::File,
        size: u64,
    ) -> anyhow::Result<spotsweep_api::CodeSnapshotBody> {
        let stream = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 1 << 20);
        let r = self
            .request(reqwest::Method::PUT, &format!("/api/v1/code/{id}"))
            .header(reqwest::header::CONTENT_TYPE, "application/gzip")
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .with_context(|| format!("cannot upload code snapshot {id}"))?;
        Self::parse(r)
            .await
            .with_context(|| format!("the daemon refused code snapshot {id}"))
    }

    /// Whether `/health` answers.
    pub async fn healthy(&self) -> bool {
        matches!(self.http.get(format!("{}/health", self.url)).send().await, Ok(r) if r.status().is_success())
    }
}

/// Reads a spec file: YAML or JSON (JSON is YAML).
pub fn read_spec(path: &Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value = serde_yaml::from_str(&text)
        .with_context(|| format!("{} is not valid YAML or JSON", path.display()))?;
    Ok(value)
}
