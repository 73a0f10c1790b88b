//! `KeyCache`: key lookups by SHA-256 of the key, guarded by an invalidation generation.
//!
//! A lookup reads the generation before it asks the store and inserts its answer tagged
//! with that generation; `invalidate()` bumps the generation after an admin change
//! committed. An answer read before the change (and so possibly stale) carries an older
//! generation: it is not inserted, and if it was inserted just before the bump it is never
//! served again. `KeyCacheFollower` invalidates on each change of keys or users the
//! change feed delivers (this instance's before the admin's answer, other instances' as
//! they arrive).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;

use crate::actors::feed::{Changed, NotApplied};
use crate::domain::records::KeyGrant;

/// A cached lookup: `None` caches an unknown key.
type Entry = (u64, Option<Arc<KeyGrant>>);

pub struct KeyCache {
    cache: moka::future::Cache<[u8; 32], Entry>,
    generation: AtomicU64,
}

impl KeyCache {
    pub fn new(max_capacity: u64, time_to_live: Duration) -> Self {
        Self {
            cache: moka::future::Cache::builder()
                .max_capacity(max_capacity)
                .time_to_live(time_to_live)
                .build(),
            generation: AtomicU64::new(0),
        }
    }

    /// The current generation; read it before asking the store.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The cached lookup of `hash`: `Some(None)` is a cached unknown key, `None` a miss.
    pub async fn get(&self, hash: &[u8; 32]) -> Option<Option<Arc<KeyGrant>>> {
        let (generation, grant) = self.cache.get(hash).await?;
        (generation == self.generation()).then_some(grant)
    }

    /// Caches a lookup made at `generation`, unless an invalidation happened since.
    pub async fn insert_if_current(
        &self,
        generation: u64,
        hash: [u8; 32],
        grant: Option<Arc<KeyGrant>>,
    ) {
        if generation == self.generation() {
            self.cache.insert(hash, (generation, grant)).await;
        }
    }

    /// Forgets every lookup, including those still on their way from the store.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
    }
}

/// The key cache's subscription to the change feed.
pub struct KeyCacheFollower(pub Arc<KeyCache>);

impl Actor for KeyCacheFollower {
    type Context = Context<Self>;
}

impl Handler<Changed> for KeyCacheFollower {
    type Result = Result<(), NotApplied>;

    fn handle(&mut self, msg: Changed, _: &mut Self::Context) -> Self::Result {
        if msg.0.touches_keys() {
            self.0.invalidate();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::records::Role;

    fn grant() -> Option<Arc<KeyGrant>> {
        Some(Arc::new(KeyGrant {
            key_id: "key_1".into(),
            user_id: "u".into(),
            role: Role::User,
            models: None,
            topics: None,
            rpm_limit: None,
            expires_at: None,
            user_disabled: false,
            limits: Default::default(),
        }))
    }

    fn cache() -> KeyCache {
        KeyCache::new(100, Duration::from_secs(3600))
    }

    #[actix::test]
    async fn a_lookup_made_before_an_invalidation_is_not_cached_after_it() {
        let keys = cache();
        // Lookup reads the generation and the (not yet revoked) key...
        let generation = keys.generation();
        // ...the revocation commits and invalidates...
        keys.invalidate();
        // ...then the lookup's stale answer arrives.
        keys.insert_if_current(generation, [1; 32], grant()).await;
        assert_eq!(keys.get(&[1; 32]).await, None);
    }

    #[actix::test]
    async fn an_entry_inserted_just_before_the_bump_is_never_served_after_it() {
        let keys = cache();
        let generation = keys.generation();
        keys.insert_if_current(generation, [2; 32], grant()).await;
        assert_eq!(keys.get(&[2; 32]).await, Some(grant()));
        // Only the generation moves (as if `invalidate_all` had not reached the entry yet).
        keys.generation.fetch_add(1, Ordering::SeqCst);
        assert_eq!(keys.get(&[2; 32]).await, None);
    }

    #[actix::test]
    async fn a_lookup_made_after_the_invalidation_is_cached() {
        let keys = cache();
        keys.invalidate();
        let generation = keys.generation();
        keys.insert_if_current(generation, [3; 32], None).await;
        assert_eq!(keys.get(&[3; 32]).await, Some(None));
        keys.insert_if_current(generation, [4; 32], grant()).await;
        assert_eq!(keys.get(&[4; 32]).await, Some(grant()));
        keys.invalidate();
        assert_eq!(keys.get(&[4; 32]).await, None);
    }
}
