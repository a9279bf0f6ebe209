//! Behaviour for any backend, as wrappers: retries with back-off, a cap on connections.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::error::TargetError;
use futures_util::StreamExt as _;

use crate::{Body, ByteStream, ObjectKey, ObjectMeta, Target, TargetCaps};

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
    async fn read_stream(
        &self,
        key: &ObjectKey,
        range: Range<u64>,
    ) -> Result<ByteStream, TargetError> {
        // Only opening is retried: a stream that breaks midway is the reader's to restart.
        self.again(|| self.inner.read_stream(key, range.clone()))
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
    async fn read_stream(
        &self,
        key: &ObjectKey,
        range: Range<u64>,
    ) -> Result<ByteStream, TargetError> {
        // The stream holds its connection, so it holds its permit until dropped.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| TargetError::Invalid("target closed".into()))?;
        let stream = self.inner.read_stream(key, range).await?;
        Ok(Box::pin(stream.map(move |item| {
            let _held = &permit;
            item
        })))
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A target whose `size` fails transiently `flaky` times, answers `NotFound` for
    /// "missing", and records how many calls overlap.
    #[derive(Default)]
    struct Probe {
        flaky: AtomicUsize,
        calls: AtomicUsize,
        in_flight: AtomicUsize,
        peak: AtomicUsize,
    }

    #[async_trait]
    impl Target for Probe {
        fn caps(&self) -> TargetCaps {
            TargetCaps {
                display: "probe".into(),
                max_connections: 1,
                stream_reads: false,
            }
        }
        async fn put_stream(&self, _: &ObjectKey, _: Body, _: bool) -> Result<u64, TargetError> {
            Err(TargetError::Invalid("unused".into()))
        }
        async fn get_range(&self, _: &ObjectKey, _: Range<u64>) -> Result<Bytes, TargetError> {
            Err(TargetError::Invalid("unused".into()))
        }
        async fn size(&self, key: &ObjectKey) -> Result<u64, TargetError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            if key.as_str() == "missing" {
                return Err(TargetError::NotFound {
                    target: "probe".into(),
                    key: key.to_string(),
                });
            }
            let left = self.flaky.load(Ordering::SeqCst);
            if left > 0 {
                self.flaky.store(left - 1, Ordering::SeqCst);
                return Err(TargetError::Transient {
                    target: "probe".into(),
                    op: "stat",
                    key: key.to_string(),
                    detail: "dropped".into(),
                });
            }
            Ok(42)
        }
        async fn list(&self, _: Option<&ObjectKey>) -> Result<Vec<ObjectMeta>, TargetError> {
            Ok(Vec::new())
        }
        async fn delete(&self, _: &ObjectKey) -> Result<(), TargetError> {
            Ok(())
        }
        async fn mkdirs(&self, _: &ObjectKey) -> Result<(), TargetError> {
            Ok(())
        }
        async fn free_space(&self) -> Result<Option<u64>, TargetError> {
            Ok(None)
        }
    }

    fn key(k: &str) -> ObjectKey {
        ObjectKey::new(k).expect("key")
    }

    #[tokio::test]
    async fn retry_retries_transient_errors_only() {
        let probe = Probe {
            flaky: AtomicUsize::new(2),
            ..Default::default()
        };
        let r = Retry::new(probe, 3, Duration::from_millis(1));
        assert_eq!(r.size(&key("x")).await.expect("third try works"), 42);
        assert_eq!(r.inner.calls.load(Ordering::SeqCst), 3);
        assert!(r
            .size(&key("missing"))
            .await
            .is_err_and(|e| e.is_not_found()));
        assert_eq!(
            r.inner.calls.load(Ordering::SeqCst),
            4,
            "NotFound is not retried"
        );
        r.inner.flaky.store(5, Ordering::SeqCst);
        assert!(
            r.size(&key("x")).await.is_err_and(|e| e.is_retryable()),
            "gives up after 3 tries"
        );
        assert_eq!(r.inner.calls.load(Ordering::SeqCst), 7);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn limited_caps_concurrent_calls() {
        let l = Arc::new(Limited::new(Probe::default(), 2));
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.size(&key("x")).await })
            })
            .collect();
        for c in calls {
            assert_eq!(c.await.expect("join").expect("size"), 42);
        }
        assert_eq!(l.inner.peak.load(Ordering::SeqCst), 2);
    }
}
