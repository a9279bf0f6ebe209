//! Merge a chain into a new full image, and convert an image to new options.

use crate::chain::{Chain, ChainBlocks};
use crate::crypto::{Cipher, Keys};
use crate::error::Result;
use crate::header::Kind;
use crate::parts::PartSink;
use crate::progress::{Cancel, Progress};
use crate::writer::{write_image, Identity, WriteOptions, WriteSummary};

/// Write the chain's newest point as a new, independent full image (a new chain id, the same
/// chain key).
pub fn merge(
    chain: &Chain,
    cipher: Cipher,
    opts: &WriteOptions,
    sink: &mut dyn PartSink,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<WriteSummary> {
    let point = chain.point();
    let blocks = ChainBlocks::new(chain, false)?;
    let keys = point
        .keys()
        .ok_or_else(|| crate::ImageError::PasswordRequired {
            name: point.name().to_owned(),
        })?;
    // Keep the chain key: block hashes stay comparable, so the merged full has the same
    // content digest as the point it was made from and can serve as a base like it.
    let mut ident = Identity::new_full(point.header.method, cipher);
    ident.keys = Keys::with_chain_key(keys.chain_key(), cipher);
    let mut meta = point.meta.clone();
    meta.parent_name = None;
    meta.kind = Kind::Full;
    let note = format!(
        "merged from chain {} up to image {}",
        point.header.chain_id, point.header.image_id
    );
    meta.warnings.retain(|w| !w.starts_with("merged from"));
    meta.warnings.push(note);
    write_image(&blocks, &ident, &meta, None, opts, sink, progress, cancel)
}

/// Re-encode one image (any kind) with a new compression level, cipher, password or split
/// size. The image keeps its id, chain, parent and content digest, so images that depend on
/// it still do.
pub fn convert(
    chain: &Chain,
    cipher: Cipher,
    opts: &WriteOptions,
    sink: &mut dyn PartSink,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<WriteSummary> {
    let point = chain.point();
    let blocks = ChainBlocks::new(chain, true)?;
    let keys = point
        .keys()
        .ok_or_else(|| crate::ImageError::PasswordRequired {
            name: point.name().to_owned(),
        })?;
    let ident = Identity {
        image_id: point.header.image_id,
        chain_id: point.header.chain_id,
        parent_id: point.header.parent_id,
        parent_digest: point.header.parent_digest,
        kind: point.header.kind,
        method: point.header.method,
        keys: Keys::with_chain_key(keys.chain_key(), cipher),
        created: point.header.created,
    };
    write_image(
        &blocks,
        &ident,
        &point.meta,
        None,
        opts,
        sink,
        progress,
        cancel,
    )
}
