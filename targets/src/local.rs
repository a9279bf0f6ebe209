//! A local folder (or anything mounted there).

use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::error::TargetError;
use crate::{is_temp_name, temp_name, Body, ObjectKey, ObjectMeta, Target, TargetCaps};

/// A folder on this machine.
#[derive(Debug, Clone)]
pub struct LocalTarget {
    root: PathBuf,
}

impl LocalTarget {
    /// Images under `root` (which must exist).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn name(&self) -> String {
        self.root.display().to_string()
    }

    fn err(&self, op: &'static str, key: &ObjectKey, e: &std::io::Error) -> TargetError {
        TargetError::from_io(&self.name(), op, key.as_str(), e)
    }
}

/// Remove a temporary upload unless it was renamed (drop guard: also runs on cancellation).
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[async_trait]
impl Target for LocalTarget {
    fn caps(&self) -> TargetCaps {
        TargetCaps {
            display: self.name(),
            max_connections: 8,
            stream_reads: false,
        }
    }

    async fn put_stream(
        &self,
        key: &ObjectKey,
        mut body: Body,
        overwrite: bool,
    ) -> Result<u64, TargetError> {
        let dest = self.path(key);
        if !overwrite && tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            return Err(TargetError::Exists {
                target: self.name(),
                key: key.to_string(),
            });
        }
        let temp = dest.with_file_name(temp_name(key.name()));
        let guard = TempFile(Some(temp.clone()));
        let mut file = tokio::fs::File::create(&temp)
            .await
            .map_err(|e| self.err("create", key, &e))?;
        let n = tokio::io::copy(&mut body, &mut file)
            .await
            .map_err(|e| self.err("write", key, &e))?;
        file.flush().await.map_err(|e| self.err("write", key, &e))?;
        file.sync_all()
            .await
            .map_err(|e| self.err("flush", key, &e))?;
        drop(file);
        if overwrite {
            tokio::fs::rename(&temp, &dest)
                .await
                .map_err(|e| self.err("rename", key, &e))?;
        } else {
            // A hard link fails if the name exists: an atomic "create only if absent".
            tokio::fs::hard_link(&temp, &dest)
                .await
                .map_err(|e| self.err("rename", key, &e))?;
        }
        // After a rename the temporary name is gone; after a hard link it still names the
        // file: either way the guard's removal leaves only `dest`.
        drop(guard);
        Ok(n)
    }

    async fn get_range(&self, key: &ObjectKey, range: Range<u64>) -> Result<Bytes, TargetError> {
        let len = usize::try_from(range.end.saturating_sub(range.start))
            .map_err(|_| TargetError::Invalid("range too large".into()))?;
        let mut f = tokio::fs::File::open(self.path(key))
            .await
            .map_err(|e| self.err("open", key, &e))?;
        f.seek(std::io::SeekFrom::Start(range.start))
            .await
            .map_err(|e| self.err("read", key, &e))?;
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => TargetError::Permanent {
                target: self.name(),
                op: "read",
                key: key.to_string(),
                detail: format!("range {}..{} is past the end", range.start, range.end),
            },
            _ => self.err("read", key, &e),
        })?;
        Ok(Bytes::from(buf))
    }

    async fn size(&self, key: &ObjectKey) -> Result<u64, TargetError> {
        let m = tokio::fs::metadata(self.path(key))
            .await
            .map_err(|e| self.err("stat", key, &e))?;
        Ok(m.len())
    }

    async fn list(&self, dir: Option<&ObjectKey>) -> Result<Vec<ObjectMeta>, TargetError> {
        let path = dir.map_or_else(|| self.root.clone(), |d| self.path(d));
        let key = dir.map(|d| d.to_string()).unwrap_or_default();
        let io = |e: &std::io::Error| TargetError::from_io(&self.name(), "list", &key, e);
        let mut rd = tokio::fs::read_dir(&path).await.map_err(|e| io(&e))?;
        let mut out = Vec::new();
        while let Some(entry) = rd.next_entry().await.map_err(|e| io(&e))? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_temp_name(&name) {
                continue;
            }
            let m = entry.metadata().await.map_err(|e| io(&e))?;
            out.push(ObjectMeta {
                name,
                size: if m.is_dir() { 0 } else { m.len() },
                is_dir: m.is_dir(),
            });
        }
        Ok(out)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), TargetError> {
        tokio::fs::remove_file(self.path(key))
            .await
            .map_err(|e| self.err("delete", key, &e))
    }

    async fn mkdirs(&self, dir: &ObjectKey) -> Result<(), TargetError> {
        tokio::fs::create_dir_all(self.path(dir))
            .await
            .map_err(|e| self.err("mkdir", dir, &e))
    }

    async fn free_space(&self) -> Result<Option<u64>, TargetError> {
        Ok(statvfs_free(&self.root))
    }
}

/// Free bytes for unprivileged writers on the filesystem holding `path`.
fn statvfs_free(path: &Path) -> Option<u64> {
    let v = nix::sys::statvfs::statvfs(path).ok()?;
    Some(v.blocks_available().saturating_mul(v.fragment_size()))
}
