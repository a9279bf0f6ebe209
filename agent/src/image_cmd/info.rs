//! `image info`.

use std::process::ExitCode;

use anyhow::Result;
use holdfast_image::header::hex;
use holdfast_image::writer::BlockCounts;

use super::open_image;
use crate::cli::InfoArgs;
use crate::output::bytes;

/// Run.
pub fn run(a: InfoArgs) -> Result<ExitCode> {
    let img = open_image(&a.image, a.common.credentials_file.as_deref())?;
    let h = &img.header;
    let counts = BlockCounts::of(&img.index);
    let created = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(h.created),
    );
    if a.common.json {
        crate::outcome::print(&crate::outcome::Info {
            ok: true,
            image: img.name().to_owned(),
            format_version: h.version,
            image_id: h.image_id.to_string(),
            chain_id: h.chain_id.to_string(),
            parent_id: (!h.parent_id.is_nil()).then(|| h.parent_id.to_string()),
            kind: h.kind,
            coverage: h.method,
            encryption: h.cipher.name().to_owned(),
            compression_level: h.compression_level,
            block_size: h.block_size,
            source_size: h.source_size,
            split_size: h.split_size,
            parts: img.part_count(),
            image_bytes: img.logical_len(),
            data_bytes: img.trailer.data_bytes,
            stored_bytes: img.trailer.stored_bytes,
            frames: img.index.frames.len() as u64,
            blocks: counts,
            content_digest: hex(&img.trailer.content_digest),
            created: created.to_string(),
            metadata: img.meta.clone(),
        });
        return Ok(ExitCode::SUCCESS);
    }
    let m = &img.meta;
    println!("image        {}", img.name());
    println!(
        "kind         {:?}, {:?}, format version {}",
        h.kind, h.method, h.version
    );
    println!("image id     {}", h.image_id);
    println!("chain id     {}", h.chain_id);
    if !h.parent_id.is_nil() {
        println!(
            "base         {} ({})",
            h.parent_id,
            m.parent_name.as_deref().unwrap_or("?")
        );
    }
    println!("created      {created} on {} by {}", m.host, m.tool);
    println!(
        "source       {} ({}), {}",
        m.source.path,
        m.source.kind,
        bytes(h.source_size)
    );
    if let Some(model) = &m.source.model {
        println!(
            "device       {model} {}",
            m.source.serial.as_deref().unwrap_or("")
        );
    }
    if let Some(t) = &m.source.partition_table {
        println!("partitions   {} {}", t.kind, t.disk_id);
        for p in &m.source.partitions {
            let fs = p
                .filesystem
                .as_ref()
                .map(|f| f.fs_type.as_str())
                .unwrap_or("unknown");
            println!(
                "  #{:<3} {:>12} at {:>12}  {fs} ({:?})",
                p.number,
                bytes(p.len),
                p.start,
                p.method
            );
        }
    }
    if let Some(f) = &m.source.filesystem {
        println!(
            "filesystem   {} label {} uuid {}, {} used",
            f.fs_type,
            f.label.as_deref().unwrap_or("-"),
            f.uuid.as_deref().unwrap_or("-"),
            bytes(f.used_bytes)
        );
    }
    if let Some(d) = &m.source.decrypted {
        let inside = d
            .filesystem
            .as_ref()
            .map_or("no filesystem found".to_owned(), |f| {
                format!(
                    "{} label {} uuid {}",
                    f.fs_type,
                    f.label.as_deref().unwrap_or("-"),
                    f.uuid.as_deref().unwrap_or("-")
                )
            });
        println!(
            "decrypted    header {} as it is, then {} of contents decrypted: {inside}",
            bytes(d.data_offset),
            bytes(d.data_size)
        );
    }
    println!("consistency  {}", m.consistency);
    println!("encryption   {}", h.cipher.name());
    println!("compression  zstd level {}", h.compression_level);
    println!("block size   {}", bytes(u64::from(h.block_size)));
    println!(
        "blocks       {} stored, {} inherited, {} zero, {} unallocated",
        counts.data, counts.inherited, counts.zero, counts.unallocated
    );
    println!(
        "size         {} in {} part(s), {} of data",
        bytes(img.logical_len()),
        img.part_count(),
        bytes(img.trailer.data_bytes)
    );
    if let Some(c) = &m.comment {
        println!("comment      {c}");
    }
    for w in &m.warnings {
        println!("warning      {w}");
    }
    Ok(ExitCode::SUCCESS)
}
