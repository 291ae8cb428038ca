//! Opening the store `[store] backend` names, behind one handle the server
//! holds (shared as `Arc<dyn Store>`, closed at shutdown).

use std::sync::Arc;

use super::Store;
use super::embedded::{EmbeddedStore, OpenError};
use super::postgres::{PgOpenError, PostgresStore};
use crate::config::{Config, StoreBackend};

#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    #[error(transparent)]
    Embedded(#[from] OpenError),
    #[error(transparent)]
    Postgres(#[from] PgOpenError),
}

/// The store a hub runs on.
#[derive(Clone)]
pub enum HubStore {
    Embedded(EmbeddedStore),
    Postgres(PostgresStore),
}

impl HubStore {
    /// Opens the configured backend with one consumer per destination; a
    /// destination seen for the first time starts at the end of the log.
    pub async fn open(cfg: &Config) -> Result<HubStore, StoreOpenError> {
        Ok(match cfg.store.backend {
            StoreBackend::Embedded => HubStore::Embedded(EmbeddedStore::open(
                &cfg.data_dir.join("store"),
                cfg.store_options(),
                cfg.consumer_specs(),
            )?),
            StoreBackend::Postgres => HubStore::Postgres(
                PostgresStore::open(cfg.postgres_options(), cfg.consumer_specs()).await?,
            ),
        })
    }

    pub fn shared(&self) -> Arc<dyn Store> {
        match self {
            HubStore::Embedded(s) => Arc::new(s.clone()),
            HubStore::Postgres(s) => Arc::new(s.clone()),
        }
    }

    /// Answers every queued write, then stops the store.
    pub async fn close(self) {
        match self {
            HubStore::Embedded(s) => s.close().await,
            HubStore::Postgres(s) => s.close().await,
        }
    }
}
