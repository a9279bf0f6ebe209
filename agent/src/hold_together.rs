//! Several volumes held at one instant, for a run that images them one after another (a job
//! with several sources): the consistency step of the whole machine rather than of each
//! volume.
//!
//! Each source that is a device-mapper device mounted read-write — an LVM logical volume
//! (linear or striped), a LUKS mapping, a `dmsetup` linear mapping — gets a device-mapper
//! snapshot (`dmsnap.rs`), and all of them are made live together: every source suspended,
//! which freezes the filesystem on it, before any resumes. A write that reached one volume
//! after another was suspended waits until all are, so the snapshots are one instant of the
//! machine, as a power cut would leave it. LVM's own `lvcreate` cannot do that: it suspends
//! one volume at a time, and this kernel refuses its freeze of a filesystem frozen before.
//!
//! Run by the daemon as `holdfast-agent hold-together --source A --source B …` (not for
//! people): it prints one JSON line ([`Together`]: what it holds, where each snapshot is,
//! what it does not hold and why), then reads its standard input: `release N` removes the
//! N-th snapshot (its image is done); the end of input removes the others. The daemon's
//! imaging children read the snapshots (`image create --held-snapshot`). When the daemon
//! dies, the input ends; when this process is killed, the next snapshot or agent start
//! removes what it left (`dmsnap::remove_stale`).
//!
//! Sources it cannot snapshot so (thin volumes, partitions, volumes LVM already
//! snapshots…) are named with the reason and held on their own by their imaging run, as a
//! one-source job holds its source. With fewer than two sources to hold, it holds none.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cli::HoldTogetherArgs;
use crate::device::Device;
use crate::dmsnap::{self, Plan, Snapshot, Store, Volumes};
use crate::lvm::PREFIX;
use crate::outcome::CommandRun;
use crate::snapshot_commands;

/// What `hold-together` holds, printed once the snapshots are live.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Together {
    /// In the order of the sources given.
    pub held: Vec<HeldVolume>,
    pub not_held: Vec<NotHeld>,
    /// When the sources were held (seconds since the epoch, taken just before): what an
    /// image read from a snapshot records as its instant, for the next incremental.
    pub held_at: i64,
    /// The commands run just before and just after the instant.
    pub commands: Vec<CommandRun>,
    /// How long writes to the sources waited while they were made snapshot origins (the
    /// first source suspended to the last resumed), in seconds.
    pub paused_seconds: f64,
}

/// A source held, and what to read instead.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldVolume {
    pub source: String,
    pub snapshot: PathBuf,
    /// How it is held, for the image's metadata.
    pub description: String,
}

/// A source not held together with the others, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotHeld {
    pub source: String,
    pub why: String,
}

/// `hold-together`.
pub fn run(a: HoldTogetherArgs) -> Result<ExitCode> {
    let mut plans = Vec::new();
    let mut not_held = Vec::new();
    for source in &a.source {
        match plan(source, a.snapshot_size) {
            Ok(p) => plans.push((source.clone(), p)),
            Err(why) => not_held.push(NotHeld {
                source: source.display().to_string(),
                why: format!("{why:#}"),
            }),
        }
    }
    // A source another one is built on (a volume under a LUKS mapping of the run) is not
    // held with it: suspending the lower device first would leave the upper one's flush
    // waiting on it for ever.
    for i in beneath_others(&plans, |(_, a), (_, b)| a.source.is_on(&b.source))
        .into_iter()
        .rev()
    {
        let (source, _) = plans.remove(i);
        not_held.push(NotHeld {
            source: source.display().to_string(),
            why: "another source of the run is built on it".into(),
        });
    }
    // One alone is held as a one-source job holds it; several that do not fit the store
    // together, each on its own, one after another.
    let alone = if plans.len() < 2 {
        Some("no other source of the run can be held with it".to_owned())
    } else {
        room_for_all(&plans).err().map(|why| format!("{why:#}"))
    };
    if let Some(why) = alone {
        for (source, _) in plans.drain(..) {
            not_held.push(NotHeld {
                source: source.display().to_string(),
                why: why.clone(),
            });
        }
        crate::outcome::print_line(&Together {
            held: Vec::new(),
            not_held,
            held_at: now(),
            commands: Vec::new(),
            paused_seconds: 0.0,
        });
        return Ok(ExitCode::SUCCESS);
    }

    let pid = std::process::id();
    let mut snaps = Vec::new();
    for (i, (_, plan)) in plans.iter().enumerate() {
        snaps.push(Snapshot::prepare(plan, format!("{PREFIX}{pid}-{i}"))?);
    }
    let (after, before) = snapshot_commands::around(&a.commands, "held")?;
    let mut commands: Vec<_> = before.into_iter().collect();
    let held_at = now();
    let paused = dmsnap::swap_together(&mut snaps)?;
    commands.extend(after.run());

    let shown: Vec<String> = plans.iter().map(|(s, _)| s.display().to_string()).collect();
    let held = plans
        .iter()
        .zip(&snaps)
        .map(|((source, plan), snap)| {
            let others: Vec<&str> = shown
                .iter()
                .filter(|s| Path::new(s.as_str()) != source)
                .map(String::as_str)
                .collect();
            HeldVolume {
                source: source.display().to_string(),
                snapshot: snap.device(),
                description: format!(
                    "{}; taken at one instant together with {}",
                    plan.description(),
                    others.join(", ")
                ),
            }
        })
        .collect();
    crate::outcome::print_line(&Together {
        held,
        not_held,
        held_at,
        commands,
        paused_seconds: paused.as_secs_f64(),
    });

    // Until the input ends: `release N` when the N-th image is done.
    let mut snaps: Vec<Option<Snapshot>> = snaps.into_iter().map(Some).collect();
    let mut failed = None;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let Some(n) = line
            .strip_prefix("release ")
            .and_then(|n| n.trim().parse::<usize>().ok())
        else {
            continue;
        };
        if let Some(snap) = snaps.get_mut(n).and_then(Option::take) {
            if let Err(e) = snap.remove() {
                failed.get_or_insert(e);
            }
        }
    }
    for snap in snaps.into_iter().flatten() {
        if let Err(e) = snap.remove() {
            failed.get_or_insert(e);
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// The snapshot `source` would get, or why it cannot be held with the others.
fn plan(source: &Path, percent: u32) -> Result<Plan> {
    let dev = Device::inspect(source)?;
    if !dev.mounts()?.iter().any(|m| m.read_write) {
        anyhow::bail!("it is not mounted read-write, so it is imaged as it is");
    }
    let mapping = dmsnap::mapping_of(source, Volumes::Include)?.with_context(|| {
        "it is not a device-mapper device (an LVM volume, a LUKS or dmsetup mapping)"
    })?;
    Plan::new(mapping, Store::configured(), percent)
}

/// Now, in seconds since the epoch.
fn now() -> i64 {
    i64::try_from(holdfast_image::writer::now()).unwrap_or(i64::MAX)
}

/// Every snapshot's copy-on-write space fits the store together (each was checked alone);
/// a store that is one device holds one snapshot.
fn room_for_all(plans: &[(PathBuf, Plan)]) -> Result<()> {
    let Some((_, first)) = plans.first() else {
        return Ok(());
    };
    match &first.store {
        Store::Device(dev) => anyhow::bail!(
            "the snapshot store is the device {}, which holds one snapshot at a time",
            dev.display()
        ),
        Store::Directory(dir) => {
            let fs = nix::sys::statvfs::statvfs(dir)
                .with_context(|| format!("cannot read '{}'", dir.display()))?;
            let free = fs.blocks_available() * fs.fragment_size();
            let want: u64 = plans.iter().map(|(_, p)| p.cow).sum();
            if want + want / 50 > free {
                anyhow::bail!(
                    "their snapshots need {} of copy-on-write space together in '{}', which has {} free",
                    crate::output::bytes(want),
                    dir.display(),
                    crate::output::bytes(free)
                );
            }
            Ok(())
        }
    }
}

/// The indexes, in order, of the items another item is built on (`on(a, b)`: a is built on
/// b).
fn beneath_others<T>(items: &[T], on: impl Fn(&T, &T) -> bool) -> Vec<usize> {
    (0..items.len())
        .filter(|&i| {
            items
                .iter()
                .enumerate()
                .any(|(j, upper)| j != i && on(upper, &items[i]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_under_another_is_left_out() {
        // 0: a volume; 1: a LUKS mapping on it; 2: another volume; 3: a mapping on 1.
        let under = [None, Some(0), None, Some(1)];
        let on = |a: &usize, b: &usize| under[*a] == Some(*b);
        let items = [0, 1, 2, 3];
        assert_eq!(beneath_others(&items, on), vec![0, 1]);
        assert!(beneath_others(&[0, 2], on).is_empty());
    }
}
