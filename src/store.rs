//! One-time values with an expiry: client-assertion `jti`s (used once) and the session bridge's
//! codes (redeemed once). The in-memory store serves one instance; a shared store (Redis, SQL)
//! implements the same trait when several replicas must agree.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::SystemTime;

/// A boxed future, so that stores and resolvers can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a store could not answer.
pub type StoreError = String;

/// Values that live until they expire and are consumed at most once.
pub trait OneTimeStore: Send + Sync {
    /// Stores `value` under `key` until `expires_at`; `Ok(false)` when `key` is already live.
    fn insert_new<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expires_at: SystemTime,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Removes and returns the live value under `key`; an expired one is gone.
    fn take<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;
}

/// Values by key, each with its expiry.
type Entries = HashMap<String, (SystemTime, Vec<u8>)>;

/// A [`OneTimeStore`] in this process's memory.
#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<Entries>,
}

impl MemoryStore {
    fn entries(&self) -> Result<std::sync::MutexGuard<'_, Entries>, StoreError> {
        self.entries
            .lock()
            .map_err(|_| "store lock poisoned".to_string())
    }
}

impl OneTimeStore for MemoryStore {
    fn insert_new<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        expires_at: SystemTime,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let now = SystemTime::now();
            let mut entries = self.entries()?;
            // Purging on insert keeps the map as small as the set of live values.
            entries.retain(|_, (until, _)| *until > now);
            if entries.contains_key(key) {
                return Ok(false);
            }
            entries.insert(key.to_owned(), (expires_at, value));
            Ok(true)
        })
    }

    fn take<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            let now = SystemTime::now();
            let mut entries = self.entries()?;
            Ok(entries
                .remove(key)
                .filter(|(until, _)| *until > now)
                .map(|(_, value)| value))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_key_is_accepted_once_until_it_expires() {
        let store = MemoryStore::default();
        let later = SystemTime::now() + Duration::from_secs(60);
        assert!(store.insert_new("c\0j1", vec![], later).await.unwrap());
        assert!(!store.insert_new("c\0j1", vec![], later).await.unwrap());
        let past = SystemTime::now() - Duration::from_secs(1);
        assert!(store.insert_new("c\0j2", vec![], past).await.unwrap());
        assert!(
            store.insert_new("c\0j2", vec![], later).await.unwrap(),
            "expired entries are forgotten"
        );
    }

    #[tokio::test]
    async fn a_value_is_taken_once_and_never_after_expiry() {
        let store = MemoryStore::default();
        let later = SystemTime::now() + Duration::from_secs(60);
        store
            .insert_new("code", b"v".to_vec(), later)
            .await
            .unwrap();
        assert_eq!(store.take("code").await.unwrap(), Some(b"v".to_vec()));
        assert_eq!(store.take("code").await.unwrap(), None);
        let past = SystemTime::now() - Duration::from_secs(1);
        store.insert_new("old", b"v".to_vec(), past).await.unwrap();
        assert_eq!(store.take("old").await.unwrap(), None);
    }
}
