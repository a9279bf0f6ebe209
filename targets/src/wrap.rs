//! Behaviour for any backend, as wrappers: retries with back-off, a cap on connections.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::error::TargetError;
use crate::{Body, ObjectKey, ObjectMeta, Target, TargetCaps};

/// Retries operations that fail with a [`TargetError::is_retryable`] error, with exponential
/// back-off. Uploads are not retried here: their body is a stream that cannot be rewound
/// (the caller restarts an upload from its source).
pub struct Retry<T> {
    inner: T,
    attempts: u32,
    first_delay: Duration,
}

impl<T: Target> Retry<T> {
    /// Up to `attempts` tries, waiting `first_delay`, then twice as long each time (≤ 30 s).
    pub fn new(inner: T, attempts: u32, first_delay: Duration) -> Self {
        Self {
            inner,
            attempts: attempts.max(1),
            first_delay,
        }
    }

    async fn again<R, F, Fut>(&self, mut op: F) -> Result<R, TargetError>
    where
        F: FnMut() -> Fut + Send,
        Fut: std::future::Future<Output = Result<R, TargetError>> + Send,
        R: Send,
    {
        let mut delay = self.first_delay;
        let mut tries = 1;
        loop {
            match op().await {
                Err(e) if e.is_retryable() && tries < self.attempts => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                    tries += 1;
                }
                other => return other,
            }
        }
    }
}

#[async_trait]
impl<T: Target> Target for Retry<T> {
    fn caps(&self) -> TargetCaps {
        self.inner.caps()
    }
    async fn put_stream(
        &self,
        key: &ObjectKey,
        body: Body,
        overwrite: bool,
    ) -> Result<u64, TargetError> {
        self.inner.put_stream(key, body, overwrite).await
    }
    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, TargetError> {
        self.again(|| self.inner.get_range(key, range.clone()))
            .await
    }
    async fn size(&self, key: &ObjectKey) -> Result<u64, TargetError> {
        self.again(|| self.inner.size(key)).await
    }
    async fn list(&self, dir: Option<&ObjectKey>) -> Result<Vec<ObjectMeta>, TargetError> {
        self.again(|| self.inner.list(dir)).await
    }
    async fn delete(&self, key: &ObjectKey) -> Result<(), TargetError> {
        self.again(|| self.inner.delete(key)).await
    }
    async fn mkdirs(&self, dir: &ObjectKey) -> Result<(), TargetError> {
        self.again(|| self.inner.mkdirs(dir)).await
    }
    async fn free_space(&self) -> Result<Option<u64>, TargetError> {
        self.again(|| self.inner.free_space()).await
    }
}

/// At most `n` operations of the inner target at once.
pub struct Limited<T> {
    inner: T,
    permits: Arc<Semaphore>,
}

impl<T: Target> Limited<T> {
    /// A cap of `n` (at least 1).
    pub fn new(inner: T, n: usize) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(n.max(1))),
        }
    }

    async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, TargetError> {
        self.permits
            .acquire()
            .await
            .map_err(|_| TargetError::Invalid("target closed".into()))
    }
}

#[async_trait]
impl<T: Target> Target for Limited<T> {
    fn caps(&self) -> TargetCaps {
        self.inner.caps()
    }
    async fn put_stream(
        &self,
        key: &ObjectKey,
        body: Body,
        overwrite: bool,
    ) -> Result<u64, TargetError> {
        let _p = self.permit().await?;
        self.inner.put_stream(key, body, overwrite).await
    }
    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, TargetError> {
        let _p = self.permit().await?;
        self.inner.get_range(key, range).await
    }
    async fn size(&self, key: &ObjectKey) -> Result<u64, TargetError> {
        let _p = self.permit().await?;
        self.inner.size(key).await
    }
    async fn list(&self, dir: Option<&ObjectKey>) -> Result<Vec<ObjectMeta>, TargetError> {
        let _p = self.permit().await?;
        self.inner.list(dir).await
    }
    async fn delete(&self, key: &ObjectKey) -> Result<(), TargetError> {
        let _p = self.permit().await?;
        self.inner.delete(key).await
    }
    async fn mkdirs(&self, dir: &ObjectKey) -> Result<(), TargetError> {
        let _p = self.permit().await?;
        self.inner.mkdirs(dir).await
    }
    async fn free_space(&self) -> Result<Option<u64>, TargetError> {
        let _p = self.permit().await?;
        self.inner.free_space().await
    }
}
