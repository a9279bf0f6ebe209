//! What a job is: the definition admins write (REST body, stored as JSON, exported and
//! imported), with its validation. Secrets are not part of it: the image password lives
//! in the vault and the target's credentials with the target.

use holdfast_proto::job::{
    ConsistencyMethod, HookCommand, ImageKind, DEFAULT_MAX_FREEZE_SECS, DEFAULT_SNAPSHOT_PERCENT,
};
use holdfast_proto::Inventory;
use serde::{Deserialize, Serialize};

use crate::store::RunState;

/// How a job chains its images, run after run (each image is then one [`ImageKind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChainMode {
    /// A full image every run.
    Full,
    /// A full image first, then increments on the newest image of the chain ("use created
    /// image as base for the following execution").
    IncrementalChain,
    /// A full image first, then differentials against it.
    Differential,
}

/// A command before or after the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Hook {
    pub command: String,
    /// Run as this user (default: the agent's user).
    #[serde(default)]
    pub user: Option<String>,
    /// Seconds before it is stopped and counted as failed.
    #[serde(default = "default_hook_timeout")]
    pub timeout_seconds: u64,
    /// A failure ends the job.
    #[serde(default)]
    pub abort_on_failure: bool,
}

fn default_hook_timeout() -> u64 {
    600
}

impl Hook {
    pub fn order(&self) -> HookCommand {
        HookCommand {
            command: self.command.clone(),
            user: self.user.clone(),
            timeout_seconds: self.timeout_seconds,
            abort_on_failure: self.abort_on_failure,
        }
    }
}

/// When a job's report is mailed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotifyWhen {
    Never,
    Always,
    /// Successful runs only.
    OnSuccess,
    /// Warnings and worse (warning, cancelled, failed, missed).
    OnWarning,
    /// Failed and missed runs.
    OnFailure,
}

impl NotifyWhen {
    /// True when a run that ended `state` is mailed.
    pub fn matches(self, state: RunState) -> bool {
        let failure = matches!(state, RunState::Failed | RunState::Missed);
        let warning = matches!(state, RunState::Warning | RunState::Cancelled);
        match self {
            Self::Never => false,
            Self::Always => true,
            Self::OnSuccess => state == RunState::Successful,
            Self::OnWarning => warning || failure,
            Self::OnFailure => failure,
        }
    }
}

/// Who hears about a job's runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    pub when: NotifyWhen,
    pub recipients: Vec<String>,
    /// Text put before the report in the mail.
    #[serde(default)]
    pub text: String,
}

/// Sites by id: each with its row (defaults as JSON) and its agents.
pub type SiteBook = std::collections::HashMap<i64, (crate::store::sites::SiteRow, Vec<i64>)>;

/// What a site's jobs inherit unless they set it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteDefaults {
    #[serde(default)]
    pub target_id: Option<i64>,
    #[serde(default)]
    pub folder: Option<String>,
    #[serde(default)]
    pub schedule: Option<super::schedule::Schedule>,
    #[serde(default)]
    pub notify: Option<Notify>,
}

impl SiteDefaults {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(f) = &self.folder {
            super::template::check(f).map_err(|e| format!("folder: {e}"))?;
        }
        if let Some(s) = &self.schedule {
            s.validate().map_err(|e| format!("schedule: {e}"))?;
        }
        if let Some(n) = &self.notify {
            crate::mail::mailboxes(&n.recipients).map_err(|e| format!("notify: {e}"))?;
        }
        Ok(())
    }
}

/// When and where a job's restore drills run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrillPlan {
    pub schedule: super::schedule::Schedule,
    /// The agent that restores (default: the one that wrote the image).
    #[serde(default)]
    pub agent_id: Option<i64>,
    /// The folder on that agent for the scratch copy (a sparse file of the volume's size;
    /// default: the agent's state folder).
    #[serde(default)]
    pub scratch_dir: Option<String>,
}

/// Images locked against deletion on an S3 bucket with Object Lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Immutability {
    /// `governance` (default: users with the bypass permission may still lift a lock) or
    /// `compliance` (nobody can, not even the account's root user).
    #[serde(default)]
    #[schema(value_type = String)]
    pub mode: holdfast_proto::job::LockMode,
    /// Days each image stays locked (1–36500). Default: as long as retention may keep the
    /// chain (its `keep_days`, or `keep_last` chains of `new_chain_after_days` each; 30 days
    /// without retention) plus `new_chain_after_days` plus one — an incremental's base must
    /// stay locked as long as the incremental.
    #[serde(default)]
    pub days: Option<u32>,
    /// A chain is closed, and the next run starts a new one with a full image, once its full
    /// image is this many days old (1–365, default 7): so whole chains, locks and all, can
    /// expire.
    #[serde(default = "default_new_chain_after_days")]
    pub new_chain_after_days: u32,
}

fn default_new_chain_after_days() -> u32 {
    7
}

impl Immutability {
    /// Days each image is locked, given the job's retention.
    pub fn lock_days(&self, retention: Option<&super::retention::Retention>) -> u32 {
        if let Some(days) = self.days {
            return days;
        }
        let chain = self.new_chain_after_days;
        let kept = match retention {
            Some(r) => {
                let by_days = r.keep_days.unwrap_or(0);
                let by_count = r
                    .keep_last
                    .map_or(0, |n| n.saturating_add(1).saturating_mul(chain));
                by_days.max(by_count)
            }
            None => 30,
        };
        kept.saturating_add(chain).saturating_add(1).min(36_500)
    }

    fn validate(&self) -> Result<(), String> {
        if self.days.is_some_and(|d| !(1..=36_500).contains(&d)) {
            return Err("days must be 1 to 36500".into());
        }
        if !(1..=365).contains(&self.new_chain_after_days) {
            return Err("new_chain_after_days must be 1 to 365".into());
        }
        Ok(())
    }
}

/// Which disks "all disks of the machine" means.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllDisks {
    /// Also disks the kernel calls removable (USB sticks, card readers); left out by default.
    #[serde(default)]
    pub include_removable: bool,
    /// Disks left out, by path (`/dev/sdb`) or kernel name (`sdb`).
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// Most sources one job may name.
pub const MAX_SOURCES: usize = 64;

impl AllDisks {
    /// The disks of `inventory` this rule takes, as device paths: the machine's own disks,
    /// not what is built on them (loop devices, LVM volumes, LUKS and other device-mapper
    /// mappings, software RAID and network block devices are inside what is imaged, or not
    /// the machine's), nor empty ones.
    pub fn disks(&self, inventory: &Inventory) -> Vec<String> {
        inventory
            .disks
            .iter()
            .filter(|d| d.backing.is_none() && d.size > 0)
            .filter(|d| !["md", "nbd", "drbd"].iter().any(|p| d.name.starts_with(p)))
            .filter(|d| self.include_removable || !d.removable)
            .filter(|d| {
                !self
                    .exclude
                    .iter()
                    .any(|x| x.trim().trim_start_matches("/dev/") == d.name)
            })
            .map(|d| format!("/dev/{}", d.name))
            .collect()
    }
}

/// A job definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The agents that run it (with `site_id`: also every agent of the site).
    #[serde(default)]
    pub agents: Vec<i64>,
    /// A site: the job runs on all its agents and takes the site's defaults for what it
    /// leaves unset (target, folder, schedule, notification).
    #[serde(default)]
    pub site_id: Option<i64>,
    /// Device, partition or image file to image on each agent (e.g. `/dev/sda`); empty
    /// when `sources` or `all_disks` say what to image.
    #[serde(default)]
    pub source: String,
    /// More sources imaged in the same run, after `source` (a whole machine): each into
    /// its own image and chain, with retention applied to each, all in one report.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Image every disk of each agent's machine, as its inventory lists them, instead of
    /// naming sources.
    #[serde(default)]
    pub all_disks: Option<AllDisks>,
    /// The target the images go to (default: the site's).
    #[serde(default)]
    pub target_id: Option<i64>,
    /// Folder inside the target (may use template parameters).
    #[serde(default)]
    pub folder: String,
    /// File name of each image; template parameters `$TEMPL:(Name)` (the syntax of the
    /// O&O command files admins already have):
    /// ComputerName, UserName, Year, Month, Day, Hour, Minute, Second, Weekday, WeekNumber,
    /// RunId. A name one of the job's images already has gets `-r<run id>` added.
    #[serde(default = "default_template")]
    pub name_template: String,
    #[serde(default = "default_method")]
    pub method: ChainMode,
    /// zstd level 0–22.
    #[serde(default = "default_compression")]
    pub compression_level: i32,
    /// `aes128`, `aes192` or `aes256` (the password is set separately and kept in the vault).
    #[serde(default)]
    pub encryption: Option<String>,
    /// Split into parts of at most this many bytes (at least 5 MiB).
    #[serde(default)]
    pub split_size: Option<u64>,
    /// Validate each image after writing it.
    #[serde(default)]
    pub verify: bool,
    /// Replace an existing image of the same name.
    #[serde(default)]
    pub overwrite: bool,
    /// Keep the contents of `pagefile.sys`, `hiberfil.sys` and `swapfile.sys` on NTFS
    /// volumes (by default they are left out: Windows makes them anew).
    #[serde(default)]
    pub keep_windows_system_files: bool,
    #[serde(default)]
    pub comment: String,
    /// How a source mounted read-write is made consistent: `auto` (the default), `unmounted`,
    /// `freeze`, `lock` or `live`.
    #[serde(default)]
    pub consistency: ConsistencyMethod,
    /// The longest the source's filesystem may stay frozen, in seconds (1 to 3600).
    #[serde(default = "default_max_freeze")]
    pub max_freeze_secs: u32,
    /// Incrementals read only the blocks of files the filesystem says changed since the
    /// base (ext2/3/4, XFS, btrfs), instead of hashing every used block (default on).
    #[serde(default = "change_tracking_on")]
    pub change_tracking: bool,
    /// Every this many incrementals of a chain hash every used block as a safeguard
    /// (0 to 1000, default 7; 0: only when the base's state cannot be trusted).
    #[serde(default = "default_full_hash_every")]
    pub full_hash_every: u32,
    /// Keep the LVM thin snapshot an image was read from, for the next incremental to read
    /// only the blocks whose mapping changed (default on; only while the pool is less than
    /// 70 % full; one per volume, named `holdfast-base-<volume>`).
    #[serde(default = "change_tracking_on")]
    pub keep_thin_snapshot: bool,
    /// A classic LVM snapshot's copy-on-write space, in percent of the volume (1 to 100).
    #[serde(default = "default_snapshot_percent")]
    pub snapshot_percent: u32,
    /// A command (`/bin/sh -c`, as root) run just before the source is frozen or locked, e.g.
    /// to flush a database and hold its writes; when it fails, nothing is imaged.
    #[serde(default)]
    pub before_snapshot: Option<String>,
    /// A command run once the freeze or lock is no longer needed; when it fails, the run
    /// ends as warning.
    #[serde(default)]
    pub after_snapshot: Option<String>,
    /// The time limit of each of those commands, in seconds (1 to 3600).
    #[serde(default = "default_snapshot_command_timeout")]
    pub snapshot_command_timeout_seconds: u32,
    #[serde(default)]
    pub before: Option<Hook>,
    #[serde(default)]
    pub after: Option<Hook>,
    /// Stop at the first error (the command after the job is not run).
    #[serde(default)]
    pub abort_on_error: bool,
    /// Restart or shut down the machine once the job is over: `none`, `restart`,
    /// `shutdown` (a minute later, so the report still reaches the server).
    #[serde(default)]
    #[schema(value_type = String)]
    pub after_job: holdfast_proto::job::AfterJob,
    /// Mail the report.
    #[serde(default)]
    pub notify: Option<Notify>,
    /// Images per chain (the full and what is built on it) before the next run starts a
    /// new chain with a full image; none: one chain for ever (while its images are sound).
    #[serde(default)]
    pub chain_length: Option<u32>,
    /// What to keep; older chains are deleted whole after a successful run.
    #[serde(default)]
    pub retention: Option<super::retention::Retention>,
    /// Lock every image against deletion and replacement on its S3 bucket (Object Lock:
    /// the bucket refuses, whoever asks — ransomware with the admin's keys included). The
    /// target must be an `s3://` bucket created with Object Lock.
    #[serde(default)]
    pub immutability: Option<Immutability>,
    /// When it runs by itself; none: only when started by hand.
    #[serde(default)]
    pub schedule: Option<super::schedule::Schedule>,
    /// When its stored images are validated again on their target (with the image
    /// password from the vault: every block; without: structure and ciphertext). An image
    /// found damaged is marked, alerts go out, and the next run starts a new chain. A start
    /// at the same second as an imaging start is skipped.
    #[serde(default)]
    pub verify_schedule: Option<super::schedule::Schedule>,
    /// Restore drills: on this schedule the job's newest sound image is restored into
    /// scratch space, checked, its files compared with a sample taken from the source, timed
    /// and deleted. Images are then made with that sample.
    #[serde(default)]
    pub drill: Option<DrillPlan>,
    /// Free text for admins.
    #[serde(default)]
    pub notes: String,
}

fn default_template() -> String {
    "$TEMPL:(ComputerName)-$TEMPL:(Year)$TEMPL:(Month)$TEMPL:(Day)-$TEMPL:(Hour)$TEMPL:(Minute)$TEMPL:(Second)-r$TEMPL:(RunId).hfi".into()
}

fn default_method() -> ChainMode {
    ChainMode::Full
}

fn change_tracking_on() -> bool {
    true
}

fn default_full_hash_every() -> u32 {
    holdfast_proto::job::DEFAULT_FULL_HASH_EVERY
}

fn default_max_freeze() -> u32 {
    DEFAULT_MAX_FREEZE_SECS
}

fn default_snapshot_percent() -> u32 {
    DEFAULT_SNAPSHOT_PERCENT
}

fn default_snapshot_command_timeout() -> u32 {
    60
}

fn default_compression() -> i32 {
    3
}

impl JobSpec {
    /// The shell commands the job runs as root on its agents (before and after the job,
    /// before and after the snapshot), by where they run; empty ones left out.
    pub fn commands(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for (at, cmd) in [
            ("before", self.before.as_ref().map(|h| &h.command)),
            ("after", self.after.as_ref().map(|h| &h.command)),
            ("before_snapshot", self.before_snapshot.as_ref()),
            ("after_snapshot", self.after_snapshot.as_ref()),
        ] {
            if let Some(c) = cmd.map(|c| c.trim()).filter(|c| !c.is_empty()) {
                out.push((at, c.to_owned()));
            }
        }
        out
    }

    /// Every rule a definition must follow, with what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.agents.is_empty() && self.site_id.is_none() {
            return Err("a job needs agents or a site".into());
        }
        if self.target_id.is_none() && self.site_id.is_none() {
            return Err("a job needs a storage target (or a site with a default target)".into());
        }
        self.check_sources()?;
        if !(0..=22).contains(&self.compression_level) {
            return Err("compression_level must be 0 to 22".into());
        }
        if let Some(c) = &self.encryption {
            if !["aes128", "aes192", "aes256"].contains(&c.as_str()) {
                return Err("encryption must be aes128, aes192 or aes256".into());
            }
        }
        if !(1..=3600).contains(&self.max_freeze_secs) {
            return Err("max_freeze_secs must be 1 to 3600".into());
        }
        if self.full_hash_every > 1000 {
            return Err("full_hash_every must be 0 to 1000".into());
        }
        if !(1..=100).contains(&self.snapshot_percent) {
            return Err("snapshot_percent must be 1 to 100".into());
        }
        if !(1..=3600).contains(&self.snapshot_command_timeout_seconds) {
            return Err("snapshot_command_timeout_seconds must be 1 to 3600".into());
        }
        for c in [&self.before_snapshot, &self.after_snapshot]
            .into_iter()
            .flatten()
        {
            if c.len() > 4096 || c.contains('\0') {
                return Err("a snapshot command must be at most 4096 bytes, without NUL".into());
            }
        }
        if self.split_size.is_some_and(|s| s < 5 << 20) {
            return Err("split_size must be at least 5 MiB (5242880 bytes)".into());
        }
        super::template::check(&self.name_template).map_err(|e| format!("name_template: {e}"))?;
        super::template::check(&self.folder).map_err(|e| format!("folder: {e}"))?;
        if self.name_template.trim().is_empty() {
            return Err("name_template must not be empty".into());
        }
        if let Some(n) = &self.notify {
            if n.when != NotifyWhen::Never && n.recipients.is_empty() {
                return Err("notify: give at least one recipient".into());
            }
            crate::mail::mailboxes(&n.recipients).map_err(|e| format!("notify: {e}"))?;
        }
        if let Some(r) = &self.retention {
            r.validate().map_err(|e| format!("retention: {e}"))?;
        }
        if let Some(i) = &self.immutability {
            i.validate().map_err(|e| format!("immutability: {e}"))?;
        }
        if self.chain_length == Some(0) {
            return Err("chain_length must be at least 1".into());
        }
        if let Some(s) = &self.schedule {
            s.validate().map_err(|e| format!("schedule: {e}"))?;
        }
        if let Some(s) = &self.verify_schedule {
            s.validate().map_err(|e| format!("verify_schedule: {e}"))?;
        }
        if let Some(d) = &self.drill {
            d.schedule
                .validate()
                .map_err(|e| format!("drill.schedule: {e}"))?;
            if d.scratch_dir
                .as_deref()
                .is_some_and(|p| !p.starts_with('/') || p.len() > 4096)
            {
                return Err("drill.scratch_dir must be an absolute folder".into());
            }
        }
        for (what, hook) in [("before", &self.before), ("after", &self.after)] {
            if let Some(h) = hook {
                if h.command.trim().is_empty() {
                    return Err(format!("{what}.command must not be empty"));
                }
                if !(1..=86_400).contains(&h.timeout_seconds) {
                    return Err(format!("{what}.timeout_seconds must be 1 to 86400"));
                }
            }
        }
        Ok(())
    }

    fn check_sources(&self) -> Result<(), String> {
        let named = self.named_sources();
        if let Some(all) = &self.all_disks {
            if !named.is_empty() {
                return Err(
                    "all_disks images every disk: leave source and sources empty with it".into(),
                );
            }
            if all.exclude.len() > MAX_SOURCES
                || all
                    .exclude
                    .iter()
                    .any(|x| x.len() > 4096 || x.contains('\0'))
            {
                return Err(format!(
                    "all_disks.exclude takes at most {MAX_SOURCES} disk names or paths"
                ));
            }
            return Ok(());
        }
        if named.is_empty() {
            return Err(
                "a job needs a source (an absolute device or file path, such as /dev/sda), sources, or all_disks"
                    .into(),
            );
        }
        if named.len() > MAX_SOURCES {
            return Err(format!("a job images at most {MAX_SOURCES} sources"));
        }
        for (i, s) in named.iter().enumerate() {
            if !s.starts_with('/') || s.len() > 4096 || s.contains('\0') {
                return Err(format!(
                    "source '{s}' must be an absolute device or file path, such as /dev/sda"
                ));
            }
            if named[..i].contains(s) {
                return Err(format!("source '{s}' is named twice"));
            }
        }
        Ok(())
    }

    /// `source` and then `sources`, trimmed, empty ones left out.
    fn named_sources(&self) -> Vec<&str> {
        std::iter::once(&self.source)
            .chain(&self.sources)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// The first source the job names (what its images recorded without a source belong
    /// to); none for all disks.
    pub fn first_source(&self) -> Option<&str> {
        self.named_sources().first().copied()
    }

    /// True when a run images more than one source (or every disk), each with its own
    /// chain; otherwise every image is of the job's one source.
    pub fn several_sources(&self) -> bool {
        self.all_disks.is_some() || self.named_sources().len() > 1
    }

    /// What it images, for people: the sources, or which disks.
    pub fn describe_sources(&self) -> String {
        let Some(all) = &self.all_disks else {
            return self.named_sources().join(", ");
        };
        let mut out = String::from("all disks of each machine");
        if all.include_removable {
            out.push_str(", removable ones too");
        }
        let left: Vec<&str> = all.exclude.iter().map(|x| x.trim()).collect();
        if !left.is_empty() {
            out.push_str(&format!(", except {}", left.join(", ")));
        }
        out
    }

    /// What a run images on an agent whose machine is `inventory` (as it last reported it).
    pub fn sources_on(&self, inventory: Option<&Inventory>) -> Result<Vec<String>, String> {
        let Some(all) = &self.all_disks else {
            return Ok(self
                .named_sources()
                .into_iter()
                .map(str::to_owned)
                .collect());
        };
        let inventory = inventory
            .ok_or("the agent has not reported its disks yet, so 'all disks' names none")?;
        let disks = all.disks(inventory);
        if disks.is_empty() {
            return Err(format!(
                "'all disks' names no disk on {}: of the disks it reported ({}), loop devices, device-mapper volumes{} and excluded disks are left out",
                inventory.hostname,
                if inventory.disks.is_empty() {
                    "none".to_owned()
                } else {
                    inventory
                        .disks
                        .iter()
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                if all.include_removable {
                    ""
                } else {
                    ", removable disks"
                }
            ));
        }
        Ok(disks)
    }

    /// The target, once resolved (see [`JobSpec::resolve`]).
    pub fn target(&self) -> i64 {
        self.target_id.unwrap_or_default()
    }

    /// The definition as it runs: the site's agents added and its defaults filled in for
    /// what the job leaves unset. `sites` maps a site id to its defaults and agents.
    pub fn resolve(&self, sites: &SiteBook) -> Result<JobSpec, String> {
        let mut out = self.clone();
        if let Some(id) = self.site_id {
            let (row, agents) = sites
                .get(&id)
                .ok_or_else(|| format!("there is no site {id}"))?;
            let d: SiteDefaults = serde_json::from_str(&row.defaults)
                .map_err(|e| format!("site {id}: its defaults are unreadable: {e}"))?;
            for a in agents {
                if !out.agents.contains(a) {
                    out.agents.push(*a);
                }
            }
            out.target_id = out.target_id.or(d.target_id);
            if out.folder.is_empty() {
                out.folder = d.folder.unwrap_or_default();
            }
            if out.schedule.is_none() {
                out.schedule = d.schedule;
            }
            if out.notify.is_none() {
                out.notify = d.notify;
            }
        }
        if out.target_id.is_none() {
            return Err("the job names no target and its site has no default target".into());
        }
        Ok(out)
    }

    /// The method of the next image, given the newest sound image of the chain on this
    /// agent (its name), if any.
    pub fn next_method(
        &self,
        chain_head: Option<&str>,
        chain_full: Option<&str>,
    ) -> (ImageKind, Option<String>) {
        match (self.method, chain_head, chain_full) {
            (ChainMode::IncrementalChain, Some(head), _) => {
                (ImageKind::Incremental, Some(head.to_owned()))
            }
            (ChainMode::Differential, _, Some(full)) => {
                (ImageKind::Differential, Some(full.to_owned()))
            }
            _ => (ImageKind::Full, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::retention::Retention;
    use super::*;
    use holdfast_proto::inventory::{Backing, Disk};

    fn spec(what: serde_json::Value) -> JobSpec {
        let mut v = serde_json::json!({"agents": [1], "target_id": 1});
        for (k, x) in what.as_object().expect("an object") {
            v[k] = x.clone();
        }
        serde_json::from_value(v).expect("a spec")
    }

    fn disk(name: &str, removable: bool, backing: Option<Backing>) -> Disk {
        Disk {
            name: name.into(),
            size: 1 << 30,
            removable,
            backing,
            ..Disk::default()
        }
    }

    #[test]
    fn all_disks_are_the_machines_own_without_removable_or_excluded_ones() {
        let inv = Inventory {
            hostname: "pc".into(),
            disks: vec![
                disk("nvme0n1", false, None),
                disk("sda", false, None),
                disk("sdb", true, None),
                disk("sdc", false, None),
                disk("loop0", false, Some(Backing::Loop { file: "/x".into() })),
                disk(
                    "dm-0",
                    false,
                    Some(Backing::Lvm {
                        vg: "vg".into(),
                        lv: "root".into(),
                        on: vec!["sda".into()],
                    }),
                ),
                disk("md0", false, None),
                Disk {
                    size: 0,
                    ..disk("sdd", false, None)
                },
            ],
            ..Inventory::default()
        };
        let job = spec(serde_json::json!({"all_disks": {"exclude": ["/dev/sdc"]}}));
        job.validate().expect("valid");
        assert_eq!(
            job.sources_on(Some(&inv)).expect("disks"),
            ["/dev/nvme0n1", "/dev/sda"]
        );
        let all = spec(serde_json::json!({"all_disks": {"include_removable": true}}));
        assert_eq!(
            all.sources_on(Some(&inv)).expect("disks"),
            ["/dev/nvme0n1", "/dev/sda", "/dev/sdb", "/dev/sdc"]
        );
        assert_eq!(
            all.describe_sources(),
            "all disks of each machine, removable ones too"
        );
        // No inventory, or nothing left: the run says why instead of imaging nothing.
        assert!(job.sources_on(None).is_err());
        let none = spec(serde_json::json!({"all_disks": {"exclude": ["nvme0n1", "sda", "sdc"]}}));
        let why = none.sources_on(Some(&inv)).expect_err("no disk");
        assert!(why.contains("names no disk on pc"), "{why}");
    }

    #[test]
    fn sources_are_named_once_each_or_all_disks_alone() {
        let two = spec(serde_json::json!({"source": "/dev/sda", "sources": ["/dev/sdb "]}));
        two.validate().expect("valid");
        assert_eq!(
            two.sources_on(None).expect("named"),
            ["/dev/sda", "/dev/sdb"]
        );
        assert_eq!(two.describe_sources(), "/dev/sda, /dev/sdb");
        let only_list = spec(serde_json::json!({"sources": ["/dev/sda", "/dev/sdb"]}));
        only_list.validate().expect("valid without source");
        for (bad, says) in [
            (serde_json::json!({}), "needs a source"),
            (
                serde_json::json!({"source": "/dev/sda", "sources": ["/dev/sda"]}),
                "named twice",
            ),
            (serde_json::json!({"sources": ["sdb"]}), "absolute"),
            (
                serde_json::json!({"source": "/dev/sda", "all_disks": {}}),
                "leave source and sources empty",
            ),
        ] {
            let e = spec(bad).validate().expect_err("refused");
            assert!(e.contains(says), "{e}");
        }
        let many: Vec<String> = (0..=MAX_SOURCES).map(|i| format!("/dev/d{i}")).collect();
        assert!(spec(serde_json::json!({ "sources": many }))
            .validate()
            .is_err());
    }

    #[test]
    fn an_image_stays_locked_as_long_as_retention_may_keep_its_chain() {
        let lock = |days: Option<u32>, chain: u32| Immutability {
            mode: holdfast_proto::job::LockMode::Governance,
            days,
            new_chain_after_days: chain,
        };
        let keep = |last: Option<u32>, days: Option<u32>| Retention {
            keep_last: last,
            keep_days: days,
        };
        // Given: exactly that.
        assert_eq!(lock(Some(3), 7).lock_days(Some(&keep(None, Some(90)))), 3);
        // 30 days kept + a week of chain + a day.
        assert_eq!(lock(None, 7).lock_days(Some(&keep(None, Some(30)))), 38);
        // 4 chains of up to a week: the oldest goes after 5 weeks at most.
        assert_eq!(lock(None, 7).lock_days(Some(&keep(Some(4), None))), 43);
        // Both: the longer.
        assert_eq!(lock(None, 7).lock_days(Some(&keep(Some(1), Some(30)))), 38);
        // No retention: a month.
        assert_eq!(lock(None, 10).lock_days(None), 41);
        assert!(lock(Some(0), 7).validate().is_err());
        assert!(lock(None, 0).validate().is_err());
        assert!(lock(None, 366).validate().is_err());
    }
}
