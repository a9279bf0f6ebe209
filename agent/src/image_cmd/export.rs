//! `image export`: files and folders of any image point written as one stream — a
//! `tar.gz` or ZIP archive, or one file as it is — to a file or standard output. This is
//! what a download from the console is: the agent's daemon runs it and passes the stream to
//! the server as it comes, so nothing is restored or stored on the way.
//!
//! Every path is found before the first byte is written: a path that is not in the image
//! fails the command with nothing written. Paths are taken inside the image as `image ls`
//! and `image extract` take them (no symbolic link followed on the way).

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use holdfast_proto::ExportFormat;

use super::browse::Private;
use crate::cli::ExportArgs;
use crate::exit::Refused;
use crate::zip_stream::{ZipKind, ZipStream};

/// Output buffered before it is written (and, through a pipe, sent on).
const BUFFER: usize = 256 << 10;

/// One thing to store: where it is here, and its name in the archive.
struct Node<'a> {
    path: &'a Path,
    name: &'a str,
    meta: &'a std::fs::Metadata,
    /// A hard link to the file stored before under this name.
    link_to: Option<&'a str>,
}

/// Walk `path` (stored as `name`; the root's contents at the top when `name` is empty),
/// folders before their contents, names sorted; `visit` stores each.
fn walk(
    path: &Path,
    name: &str,
    seen: &mut HashMap<u64, String>,
    visit: &mut dyn FnMut(Node<'_>) -> Result<()>,
) -> Result<()> {
    if crate::CANCEL.is_cancelled() {
        bail!("cancelled");
    }
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot read '{}' in the image", path.display()))?;
    let ft = meta.file_type();
    if ft.is_socket() {
        eprintln!(
            "holdfast-agent: warning: '{name}' is a socket: not exported (a program makes it when it runs)"
        );
        return Ok(());
    }
    if ft.is_dir() {
        if !name.is_empty() {
            visit(Node {
                path,
                name,
                meta: &meta,
                link_to: None,
            })?;
        }
        let mut names: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("cannot list '{}' in the image", path.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("cannot list '{}' in the image", path.display()))?;
        names.sort();
        for n in names {
            let child = match name {
                "" => n.to_string_lossy().into_owned(),
                _ => format!("{name}/{}", n.to_string_lossy()),
            };
            walk(&path.join(&n), &child, seen, visit)?;
        }
        return Ok(());
    }
    let first = (meta.nlink() > 1)
        .then(|| seen.get(&meta.ino()).cloned())
        .flatten();
    visit(Node {
        path,
        name,
        meta: &meta,
        link_to: first.as_deref(),
    })?;
    if meta.nlink() > 1 && first.is_none() {
        seen.insert(meta.ino(), name.to_owned());
    }
    Ok(())
}

/// Writes nodes into a gzip-compressed tar archive.
fn tar_node(b: &mut tar::Builder<impl Write>, n: Node<'_>) -> Result<()> {
    let fail = || format!("cannot store '{}'", n.name);
    if let Some(first) = n.link_to {
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(n.meta, tar::HeaderMode::Complete);
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        return b.append_link(&mut h, n.name, first).with_context(fail);
    }
    if n.meta.is_dir() {
        b.append_dir(n.name, n.path).with_context(fail)
    } else {
        b.append_path_with_name(n.path, n.name).with_context(fail)
    }
}

/// Writes nodes into a ZIP archive: files, folders and symbolic links (devices and FIFOs
/// have no place in ZIP and are left out with a warning; hard links become copies).
fn zip_node(z: &mut ZipStream<impl Write>, n: Node<'_>) -> Result<()> {
    let ft = n.meta.file_type();
    let (mode, mtime) = (n.meta.mode() & 0o7777, n.meta.mtime());
    let fail = || format!("cannot store '{}'", n.name);
    if ft.is_dir() {
        z.add(
            &format!("{}/", n.name),
            ZipKind::Dir,
            mode,
            mtime,
            0,
            |_| Ok(()),
        )
        .with_context(fail)
    } else if ft.is_symlink() {
        let to = std::fs::read_link(n.path).with_context(fail)?;
        let to = to.as_os_str().as_encoded_bytes().to_vec();
        z.add(
            n.name,
            ZipKind::Symlink,
            mode,
            mtime,
            to.len() as u64,
            |w| w.write_all(&to),
        )
        .with_context(fail)
    } else if ft.is_file() {
        let mut f = std::fs::File::open(n.path).with_context(fail)?;
        z.add(n.name, ZipKind::File, mode, mtime, n.meta.len(), |w| {
            std::io::copy(&mut f, w).map(|_| ())
        })
        .with_context(fail)
    } else {
        eprintln!(
            "holdfast-agent: warning: '{}' is a device or FIFO: ZIP cannot hold it (use tar.gz)",
            n.name
        );
        Ok(())
    }
}

/// Where the stream goes: standard output, or a file written under a temporary name and
/// named when complete.
enum Sink {
    Stdout,
    File { tmp: PathBuf, to: PathBuf },
}

impl Sink {
    fn open(to: &Path) -> Result<(Self, Box<dyn Write>)> {
        if to == Path::new("-") {
            return Ok((Self::Stdout, Box::new(std::io::stdout().lock())));
        }
        let name = to
            .file_name()
            .with_context(|| format!("'{}' is not a file name", to.display()))?;
        let tmp = to.with_file_name(format!(".{}.holdfast-partial", name.to_string_lossy()));
        let f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create '{}'", tmp.display()))?;
        Ok((
            Self::File {
                tmp,
                to: to.to_owned(),
            },
            Box::new(f),
        ))
    }

    fn finish(&self, ok: bool) -> Result<()> {
        if let Self::File { tmp, to } = self {
            if !ok {
                let _ = std::fs::remove_file(tmp);
                return Ok(());
            }
            std::fs::rename(tmp, to).with_context(|| format!("cannot name '{}'", to.display()))?;
        }
        Ok(())
    }
}

/// Run `image export`.
pub fn export(a: ExportArgs) -> Result<ExitCode> {
    let private = Private::open(&a.point, a.common.credentials_file.as_deref())?;
    // Every path is found before anything is written.
    let mut found = Vec::new();
    for path in &a.paths {
        let here = private.resolve(path)?;
        let inside = here.strip_prefix(&private.dir).unwrap_or(Path::new(""));
        let name = inside
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        found.push((here, name));
    }
    if a.format == ExportFormat::File {
        let [(here, _)] = found.as_slice() else {
            return Err(Refused("--format file exports exactly one file".into()).into());
        };
        if !std::fs::symlink_metadata(here)?.is_file() {
            return Err(Refused(format!(
                "'{}' is not a regular file: export it as tar.gz or zip",
                a.paths[0]
            ))
            .into());
        }
    }
    let (sink, out) = Sink::open(&a.output)?;
    let out = BufWriter::with_capacity(BUFFER, out);
    let written = write(a.format, &found, out);
    sink.finish(written.is_ok())?;
    written?;
    private.close()?;
    if a.output != Path::new("-") && !a.common.json {
        println!("exported to '{}'", a.output.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Write the `found` paths (here, name in the archive) to `out` in `format`.
fn write(format: ExportFormat, found: &[(PathBuf, String)], mut out: impl Write) -> Result<()> {
    let mut seen = HashMap::new();
    match format {
        ExportFormat::File => {
            let (here, name) = &found[0];
            let mut f = std::fs::File::open(here)
                .with_context(|| format!("cannot read '{name}' in the image"))?;
            std::io::copy(&mut f, &mut out).with_context(|| format!("cannot export '{name}'"))?;
        }
        ExportFormat::TarGz => {
            let gz = flate2::write::GzEncoder::new(&mut out, flate2::Compression::fast());
            let mut b = tar::Builder::new(gz);
            b.follow_symlinks(false);
            b.mode(tar::HeaderMode::Complete);
            for (here, name) in found {
                walk(here, name, &mut seen, &mut |n| tar_node(&mut b, n))?;
            }
            b.into_inner()
                .and_then(|gz| gz.finish())
                .context("cannot finish the archive")?;
        }
        ExportFormat::Zip => {
            let mut z = ZipStream::new(&mut out);
            for (here, name) in found {
                walk(here, name, &mut seen, &mut |n| zip_node(&mut z, n))?;
            }
            z.finish().context("cannot finish the archive")?;
        }
    }
    out.flush().context("cannot write the export")?;
    Ok(())
}
