//! The backend conformance suite's harness: every store test that is not about one backend's
//! files is written once, generic over a [`Backend`], and [`conformance!`] runs it on each
//! backend that has the traits it needs (`sqlite::<test>`, `postgres::<test>` in the test
//! names).
//!
//! PostgreSQL: `SPOTSWEEP_TEST_DATABASE_URL` names a server where the tests may create
//! databases (`scripts/test` starts a throw-away cluster and sets it); each test gets a fresh
//! database. Without it the PostgreSQL tests fail, saying how to run them.

#![allow(dead_code)]

use std::future::Future;

use spotsweep_store::{
    FleetStore, ModelStore, PgOptions, PgStore, RegistryStore, SqliteOptions, SqliteStore, SweepStore,
    TokenStore, TraceStore, TrackingStore,
};

/// A store that can let go of its database (what a restart does).
pub trait Close: Clone + Send + Sync + 'static {
    /// Closes every connection.
    fn close(&self) -> impl Future<Output = ()>;
}

impl Close for SqliteStore {
    async fn close(&self) {
        SqliteStore::close(self).await;
    }
}

impl Close for PgStore {
    async fn close(&self) {
        PgStore::close(self).await;
    }
}

/// Every store trait: what a backend the daemon can run on has.
pub trait Stores:
    Close + TrackingStore + SweepStore + FleetStore + TokenStore + RegistryStore + ModelStore + TraceStore
{
}

impl<S> Stores for S where
    S: Close + TrackingStore + SweepStore + FleetStore + TokenStore + RegistryStore + ModelStore + TraceStore
{
}

/// The tracking tables: what the MLflow tests need (and a restart).
pub trait Tracking: Close + TrackingStore {}

impl<S> Tracking for S where S: Close + TrackingStore {}

/// The trial queue with the fleet's view of it: what the queue's tests that log nothing need.
pub trait Queue: Close + SweepStore + FleetStore {}

impl<S> Queue for S where S: Close + SweepStore + FleetStore {}

/// The trial queue and the tracking store: for the queue's tests that log metrics or read runs.
pub trait TrackedQueue: Queue + TrackingStore {}

impl<S> TrackedQueue for S where S: Queue + TrackingStore {}

/// A database for one test: empty when made, and opened (again) as often as the test likes.
pub trait Backend: Sized {
    /// The store on it.
    type Store: Close;

    /// A fresh, empty database.
    fn start() -> impl Future<Output = Self>;

    /// The store on this database (again after a close: a restart).
    fn open(&self) -> impl Future<Output = Self::Store>;
}

/// SQLite: a file in a temporary directory.
pub struct Sqlite {
    dir: tempfile::TempDir,
}

impl Backend for Sqlite {
    type Store = SqliteStore;

    async fn start() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn open(&self) -> SqliteStore {
        SqliteStore::open(&SqliteOptions::new(self.dir.path().join("t.db")))
            .await
            .unwrap()
    }
}

/// PostgreSQL: a fresh database on the server of `SPOTSWEEP_TEST_DATABASE_URL`.
pub struct Postgres {
    url: String,
}

impl Postgres {
    /// The test database's URL, for a test that writes what no store would (a damaged row).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Backend for Postgres {
    type Store = PgStore;

    async fn start() -> Self {
        use sqlx::Connection;
        let admin = std::env::var("SPOTSWEEP_TEST_DATABASE_URL").unwrap_or_else(|_| {
            panic!(
                "SPOTSWEEP_TEST_DATABASE_URL is not set: run scripts/test (it starts a throw-away PostgreSQL), \
                 or point it at a server where these tests may create databases, e.g. \
                 postgres://user@127.0.0.1:5432/postgres"
            )
        });
        let (server, _) = admin
            .rsplit_once('/')
            .expect("SPOTSWEEP_TEST_DATABASE_URL ends with /DATABASE");
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        Self {
            url: format!("{server}/{name}"),
        }
    }

    async fn open(&self) -> PgStore {
        PgStore::open(&PgOptions::new(&self.url)).await.unwrap()
    }
}

/// Runs each named generic test (`async fn name<B: Backend>()`) on `backend`, as tests in
/// module `module`.
#[macro_export]
macro_rules! conformance {
    ($module:ident: $backend:ty; $($test:ident),+ $(,)?) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test::<$backend>().await
                }
            )+
        }
    };
}

/// The model registry alone.
pub trait Registry: Close + RegistryStore {}

impl<S> Registry for S where S: Close + RegistryStore {}

/// Experiments and runs with what MLflow 3 keeps beside them: the registry (whose sources name
/// runs and logged models), logged models and traces.
pub trait Models: Close + TrackingStore + RegistryStore + ModelStore + TraceStore {}

impl<S> Models for S where S: Close + TrackingStore + RegistryStore + ModelStore + TraceStore {}
