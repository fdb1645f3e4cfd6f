//! `mockall` mocks of the core traits, for tests that script exact calls.
//!
//! ```
//! use keyvault_invalidator_core::SecretCache;
//! use keyvault_invalidator_testkit::mocks::MockSecretCache;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut cache = MockSecretCache::new();
//! cache.expect_invalidate()
//!     .withf(|key| key == "db-password")
//!     .times(1)
//!     .returning(|_| Ok(()));
//! cache.invalidate("db-password").await.unwrap();
//! # }
//! ```

use keyvault_invalidator_core::{
    async_trait, CacheError, Delivery, DeliveryToken, Event, EventSource, InvalidationError,
    Invalidator, NewVersion, Outcome, ProviderError, Secret, SecretCache, SecretProvider,
    Settlement, SourceError,
};

mockall::mock! {
    /// A scripted [`EventSource`].
    pub EventSource {}

    #[async_trait]
    impl EventSource for EventSource {
        async fn receive(&self, max: usize) -> Result<Vec<Delivery>, SourceError>;
        async fn settle(&self, token: DeliveryToken, settlement: Settlement) -> Result<(), SourceError>;
        async fn close(&self) -> Result<(), SourceError>;
    }
}

mockall::mock! {
    /// A scripted [`SecretCache`].
    pub SecretCache {}

    #[async_trait]
    impl SecretCache for SecretCache {
        async fn invalidate(&self, key: &str) -> Result<(), CacheError>;
        async fn new_version(&self, key: &str, change: &NewVersion) -> Result<(), CacheError>;
    }
}

mockall::mock! {
    /// A scripted [`Invalidator`].
    pub Invalidator {}

    #[async_trait]
    impl Invalidator for Invalidator {
        async fn handle(&self, event: &Event) -> Result<Outcome, InvalidationError>;
    }
}

mockall::mock! {
    /// A scripted [`SecretProvider`].
    pub SecretProvider {}

    #[async_trait]
    impl SecretProvider for SecretProvider {
        async fn get_secret(&self, name: &str) -> Result<Secret, ProviderError>;
    }
}
