//! Chain-aware retention: which images a successful run may delete. Images are grouped in
//! chains (a full image and everything built on it); only whole chains are deleted, so no
//! kept image ever loses an image it depends on, and the newest chain is always kept.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::store::jobs::ImageRow;

/// What to keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep the newest N chains (with `full` images: the newest N images).
    #[serde(default)]
    pub keep_last: Option<u32>,
    /// Keep chains whose newest image is at most N days old.
    #[serde(default)]
    pub keep_days: Option<u32>,
}

impl Retention {
    pub fn validate(&self) -> Result<(), String> {
        match (self.keep_last, self.keep_days) {
            (None, None) => Err("give keep_last, keep_days or both".into()),
            (Some(0), _) | (_, Some(0)) => Err("keep_last and keep_days must be at least 1".into()),
            _ => Ok(()),
        }
    }
}

/// The chains of `images` (oldest first), each as its images' indexes; an image whose
/// base is not among them is a chain of its own (it cannot be restored anyway, and
/// deleting it harms nothing that depends on more).
fn chains(images: &[&ImageRow]) -> Vec<Vec<usize>> {
    let index: HashMap<&str, usize> = images
        .iter()
        .enumerate()
        .map(|(i, img)| (img.name.as_str(), i))
        .collect();
    let root = |mut i: usize| {
        for _ in 0..images.len() {
            match images[i].base_name.as_deref().and_then(|b| index.get(b)) {
                Some(&parent) if parent != i => i = parent,
                _ => break,
            }
        }
        i
    };
    let mut by_root: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in 0..images.len() {
        let r = root(i);
        match by_root.iter_mut().find(|(k, _)| *k == r) {
            Some((_, members)) => members.push(i),
            None => by_root.push((r, vec![i])),
        }
    }
    by_root.sort_by_key(|(r, _)| *r);
    by_root.into_iter().map(|(_, m)| m).collect()
}

/// The names a run may delete once it has written its image: `images` are the job's
/// images on this agent and `target_id` (not deleted), `starts_chain` says whether the new
/// image is a full one (a new chain), `now` is in Unix seconds.
pub fn expired(
    images: &[ImageRow],
    target_id: i64,
    starts_chain: bool,
    rule: &Retention,
    now: i64,
) -> Vec<String> {
    let on_target: Vec<&ImageRow> = images
        .iter()
        .filter(|i| i.target_id == Some(target_id) && i.deleted_at.is_none())
        .collect();
    let all = chains(&on_target);
    // The new image counts: a new chain of its own, or part of the newest.
    let total = all.len() + usize::from(starts_chain);
    let keep_last = rule.keep_last.map(|n| n as usize);
    let mut out = Vec::new();
    for (pos, members) in all.iter().enumerate() {
        let newer = total - pos - 1; // chains newer than this one
        if newer == 0 {
            continue; // the newest chain stays
        }
        let newest_at = members
            .iter()
            .map(|&i| on_target[i].created_at)
            .max()
            .unwrap_or(now);
        let kept_by_count = keep_last.is_some_and(|n| newer < n);
        let kept_by_age = rule
            .keep_days
            .is_some_and(|d| now - newest_at <= i64::from(d) * 86_400);
        if !kept_by_count && !kept_by_age {
            out.extend(members.iter().map(|&i| on_target[i].name.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: i64, name: &str, base: Option<&str>, day: i64) -> ImageRow {
        ImageRow {
            id,
            run_id: id,
            job_id: Some(1),
            agent_id: 1,
            target_id: Some(7),
            name: name.into(),
            method: if base.is_some() {
                "incremental"
            } else {
                "full"
            }
            .into(),
            base_name: base.map(str::to_owned),
            image_id: String::new(),
            bytes: 1,
            verified: None,
            created_at: day * 86_400,
            deleted_at: None,
            source: None,
        }
    }

    fn keep(last: Option<u32>, days: Option<u32>) -> Retention {
        Retention {
            keep_last: last,
            keep_days: days,
        }
    }

    #[test]
    fn whole_chains_go_never_a_base_of_a_kept_image() {
        // Two chains: a1 <- a2 <- a3 and b1 <- b2.
        let images = [
            img(1, "a1", None, 1),
            img(2, "a2", Some("a1"), 2),
            img(3, "a3", Some("a2"), 3),
            img(4, "b1", None, 4),
            img(5, "b2", Some("b1"), 5),
        ];
        // Keep 1 chain, the run adds an increment to b: chain a goes, all of it.
        assert_eq!(
            expired(&images, 7, false, &keep(Some(1), None), 6 * 86_400),
            ["a1", "a2", "a3"]
        );
        // Keep 2 chains, the run adds an increment: nothing goes.
        assert!(expired(&images, 7, false, &keep(Some(2), None), 6 * 86_400).is_empty());
        // Keep 2 chains, the run starts a new chain: a goes, b stays.
        assert_eq!(
            expired(&images, 7, true, &keep(Some(2), None), 6 * 86_400),
            ["a1", "a2", "a3"]
        );
        // Keep 1 chain and the run starts one: both old chains go.
        assert_eq!(
            expired(&images, 7, true, &keep(Some(1), None), 6 * 86_400).len(),
            5
        );
        // Only images on this target count.
        assert!(expired(&images, 8, true, &keep(Some(1), None), 6 * 86_400).is_empty());
    }

    #[test]
    fn age_counts_from_the_newest_image_of_a_chain() {
        let images = [
            img(1, "a1", None, 1),
            img(2, "a2", Some("a1"), 9),
            img(3, "b1", None, 10),
        ];
        // On day 12, keeping 3 days: chain a's newest image is 3 days old: kept although
        // its full is 11 days old.
        assert!(expired(&images, 7, true, &keep(None, Some(3)), 12 * 86_400).is_empty());
        // On day 13 it is 4 days old: it goes. The newest chain always stays.
        assert_eq!(
            expired(&images, 7, false, &keep(None, Some(3)), 13 * 86_400 + 1),
            ["a1", "a2"]
        );
        assert!(expired(&images, 7, false, &keep(None, Some(3)), 100 * 86_400).len() == 2);
        // Both rules: kept when either keeps it.
        assert!(expired(&images, 7, false, &keep(Some(2), Some(1)), 100 * 86_400).is_empty());
    }

    #[test]
    fn rules_need_a_limit() {
        assert!(keep(None, None).validate().is_err());
        assert!(keep(Some(0), None).validate().is_err());
        assert!(keep(Some(3), None).validate().is_ok());
    }
}
