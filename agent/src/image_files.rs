//! A read-only FUSE filesystem of a few files, each backed by a byte source: how an image
//! point is shown as a drive (`volume.img`, or `disk.img` and `partN.img`), so a loop device
//! and the kernel's own filesystem drivers can read it without a restore.
//!
//! One flat directory; reads go straight to the source (the image's block cache is below).
//! A read the source fails (damage, a target gone away) is an I/O error to the reader, and
//! said once on standard error.

use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, Request,
};
use holdfast_image::io::ReadAt;

/// How long the kernel may keep what it was told: the files never change.
const TTL: Duration = Duration::from_secs(3600);

/// The largest read served at once (the kernel asks for at most 128 KiB to 1 MiB).
const MAX_READ: u64 = 4 << 20;

/// Named byte sources as files, inode numbers from 2 in order.
pub struct ImageFiles {
    files: Vec<(String, Arc<dyn ReadAt>)>,
    made: SystemTime,
    failed: AtomicBool,
}

impl ImageFiles {
    /// `files`: (name, content), shown in that order.
    pub fn new(files: Vec<(String, Arc<dyn ReadAt>)>) -> Self {
        Self {
            files,
            made: SystemTime::now(),
            failed: AtomicBool::new(false),
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let (kind, size, perm, nlink) = if ino == 1 {
            (FileType::Directory, 0, 0o555, 2)
        } else {
            let (_, file) = self.files.get(usize::try_from(ino.checked_sub(2)?).ok()?)?;
            (FileType::RegularFile, file.size(), 0o444, 1)
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.made,
            mtime: self.made,
            ctime: self.made,
            crtime: self.made,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        })
    }

    fn file(&self, ino: INodeNo) -> Option<&Arc<dyn ReadAt>> {
        let index = usize::try_from(u64::from(ino).checked_sub(2)?).ok()?;
        self.files.get(index).map(|(_, f)| f)
    }
}

impl Filesystem for ImageFiles {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = (u64::from(parent) == 1)
            .then(|| self.files.iter().position(|(n, _)| OsStr::new(n) == name))
            .flatten()
            .and_then(|i| self.attr(i as u64 + 2));
        match found {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(u64::from(ino)) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(file) = self.file(ino) else {
            reply.error(Errno::ENOENT);
            return;
        };
        let len = file
            .size()
            .saturating_sub(offset)
            .min(u64::from(size))
            .min(MAX_READ) as usize;
        let mut buf = vec![0u8; len];
        match file.read_exact_at(&mut buf, offset) {
            Ok(()) => reply.data(&buf),
            Err(e) => {
                if !self.failed.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "holdfast-agent: error: reading the image at offset {offset}: {e} \
                         (the reader gets an I/O error)"
                    );
                }
                reply.error(Errno::EIO);
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if u64::from(ino) != 1 {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let mut entries = vec![
            (1, FileType::Directory, "."),
            (1, FileType::Directory, ".."),
        ];
        for (i, (name, _)) in self.files.iter().enumerate() {
            entries.push((i as u64 + 2, FileType::RegularFile, name.as_str()));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}
