//! The backend conformance suite's harness: every store test that is not about one backend's
//! files is written once, generic over a [`Backend`], and [`conformance!`] runs it on each
//! backend (`sqlite::<test>` in the test names; a second backend adds its own line).

#![allow(dead_code)]

use std::future::Future;

use spotsweep_store::{
    FleetStore, ModelStore, RegistryStore, SqliteOptions, SqliteStore, SweepStore, TokenStore, TraceStore,
    TrackingStore,
};

/// Every store trait, and closing.
pub trait Stores:
    TrackingStore + SweepStore + FleetStore + TokenStore + RegistryStore + ModelStore + TraceStore + Clone
{
    /// Lets go of the database (what a restart does).
    fn close(&self) -> impl Future<Output = ()>;
}

impl Stores for SqliteStore {
    async fn close(&self) {
        SqliteStore::close(self).await;
    }
}

/// A database for one test: empty when made, and opened (again) as often as the test likes.
pub trait Backend: Sized {
    /// The store on it.
    type Store: Stores;

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
