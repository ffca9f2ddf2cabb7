//! Starts the real daemon (`spotsweep_server::run`) on 127.0.0.1:0 with a temporary data dir.

#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;

use spotsweep_server::{Config, LogFormat};
use tokio::sync::oneshot;

pub struct TestServer {
    pub url: String,
    pub token: String,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_path_buf();
        let mut s = Self::start_in(data_dir, false).await;
        s._dir = Some(dir);
        s
    }

    pub async fn start_in(data_dir: PathBuf, no_auth: bool) -> Self {
        Self::start_with(data_dir, no_auth, |_| {}).await
    }

    /// Starts on the PostgreSQL database at `url` with a data dir of its own. The first daemon
    /// on a database writes the admin token; the others are given it (`token`).
    pub async fn start_on_database(url: &str, token: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().to_path_buf();
        if let Some(token) = token {
            // As an operator copies it from the first daemon.
            std::fs::write(data_dir.join("admin.token"), format!("{token}\n")).unwrap();
        }
        let database_url = spotsweep_server::config::DatabaseUrl::parse(url).unwrap();
        let mut s = Self::start_with(data_dir, false, |c| c.database_url = Some(database_url)).await;
        s._dir = Some(dir);
        s
    }

    /// Starts in `data_dir` with the config changed by `change` (pools, fleet timings).
    pub async fn start_with(data_dir: PathBuf, no_auth: bool, change: impl FnOnce(&mut Config)) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let config = Config {
            listen: addr,
            database_url: None,
            data_dir: data_dir.clone(),
            artifacts_destination: data_dir.join("artifacts").display().to_string(),
            log_format: LogFormat::Text,
            no_auth,
            local_agents: 0,
            public_url: None,
            pools: Default::default(),
            fleet: Default::default(),
            agent_binary: None,
            mlflow_ui: Some("off".into()),
            code_max_bytes: spotsweep_server::config::DEFAULT_CODE_MAX_MB << 20,
        };
        let mut config = config;
        change(&mut config);
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(spotsweep_server::run(config, listener, async {
            let _ = rx.await;
        }));
        let url = format!("http://{addr}");
        let client = reqwest::Client::new();
        // The token file is written before the server accepts requests.
        let token_path = data_dir.join("admin.token");
        for _ in 0..200 {
            if client.get(format!("{url}/health")).send().await.is_ok() && token_path.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let token = std::fs::read_to_string(&token_path).unwrap().trim().to_owned();
        Self {
            url,
            token,
            data_dir,
            client,
            shutdown: Some(tx),
            handle: Some(handle),
            _dir: None,
        }
    }

    /// The typed client of `/api/v1`, with the admin token.
    pub fn api(&self) -> spotsweep_api::client::Client {
        spotsweep_api::client::Client::with_http(self.client.clone(), &self.url, Some(self.token.clone()))
    }

    /// The typed client with another token (a VM's, a trial's).
    pub fn api_as(&self, token: &str) -> spotsweep_api::client::Client {
        spotsweep_api::client::Client::with_http(self.client.clone(), &self.url, Some(token.to_owned()))
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    pub fn post(&self, path: &str, body: serde_json::Value) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(&body)
    }

    /// POSTs to the MLflow API and returns (status, JSON body).
    pub async fn mlflow(&self, endpoint: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .post(&format!("/api/2.0/mlflow/{endpoint}"), body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// GETs from the MLflow API and returns (status, JSON body).
    pub async fn mlflow_get(&self, endpoint_and_query: &str) -> (u16, serde_json::Value) {
        let r = self
            .get(&format!("/api/2.0/mlflow/{endpoint_and_query}"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }
}
