//! Sets of byte ranges: which parts of a source hold data worth imaging.

/// Sorted, non-overlapping, non-adjacent half-open byte ranges `[start, end)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extents {
    ranges: Vec<(u64, u64)>,
}

impl Extents {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// One range covering `[0, len)`.
    pub fn full(len: u64) -> Self {
        let mut e = Self::new();
        e.add(0, len);
        e
    }

    /// Add `[start, start + len)`. Cheap when ranges arrive in ascending order (the common case
    /// for bitmap scans); otherwise the set is re-normalised.
    pub fn add(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let end = start.saturating_add(len);
        match self.ranges.last_mut() {
            Some(last) if start >= last.0 && start <= last.1 => last.1 = last.1.max(end),
            Some(last) if start > last.1 => self.ranges.push((start, end)),
            None => self.ranges.push((start, end)),
            Some(_) => {
                self.ranges.push((start, end));
                self.normalise();
            }
        }
    }

    /// Add every range of `other`, shifted by `shift` bytes.
    pub fn add_shifted(&mut self, other: &Extents, shift: u64) {
        for &(s, e) in &other.ranges {
            self.add(s + shift, e - s);
        }
    }

    /// Remove `[start, start + len)`.
    pub fn remove(&mut self, start: u64, len: u64) {
        let end = start.saturating_add(len);
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        for &(s, e) in &self.ranges {
            if e <= start || s >= end {
                out.push((s, e));
                continue;
            }
            if s < start {
                out.push((s, start));
            }
            if e > end {
                out.push((end, e));
            }
        }
        self.ranges = out;
    }

    /// What both sets cover.
    pub fn intersect(&self, other: &Extents) -> Extents {
        let (mut i, mut j) = (0, 0);
        let mut out = Extents::new();
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a, b) = (self.ranges[i], other.ranges[j]);
            let (s, e) = (a.0.max(b.0), a.1.min(b.1));
            if s < e {
                out.add(s, e - s);
            }
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        out
    }

    /// Keep only what lies below `len`.
    pub fn truncate(&mut self, len: u64) {
        self.remove(len, u64::MAX - len);
    }

    fn normalise(&mut self) {
        self.ranges.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len());
        for &(s, e) in &self.ranges {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        self.ranges = out;
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Total bytes covered.
    pub fn total(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    /// True when nothing is covered.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The parts of `[start, end)` covered by the set, as ranges clipped to it.
    pub fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let first = self.ranges.partition_point(|&(_, e)| e <= start);
        self.ranges[first..]
            .iter()
            .take_while(move |&&(s, _)| s < end)
            .map(move |&(s, e)| (s.max(start), e.min(end)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_merges_and_sorts() {
        let mut e = Extents::new();
        e.add(10, 5);
        e.add(15, 5);
        e.add(0, 3);
        e.add(2, 2);
        assert_eq!(e.ranges(), &[(0, 4), (10, 20)]);
        assert_eq!(e.total(), 14);
    }

    #[test]
    fn intersect_keeps_what_both_cover() {
        let of = |r: &[(u64, u64)]| {
            let mut e = Extents::new();
            for &(s, end) in r {
                e.add(s, end - s);
            }
            e
        };
        let a = of(&[(0, 10), (20, 30), (40, 100)]);
        let b = of(&[(5, 25), (28, 45), (99, 200)]);
        assert_eq!(
            a.intersect(&b).ranges(),
            &[(5, 10), (20, 25), (28, 30), (40, 45), (99, 100)]
        );
        assert_eq!(b.intersect(&a), a.intersect(&b));
        assert!(a.intersect(&Extents::new()).is_empty());
        assert_eq!(a.intersect(&Extents::full(1000)), a);
    }

    #[test]
    fn remove_and_overlap() {
        let mut e = Extents::full(100);
        e.remove(10, 10);
        e.remove(50, 100);
        assert_eq!(e.ranges(), &[(0, 10), (20, 50)]);
        let o: Vec<_> = e.overlapping(5, 25).collect();
        assert_eq!(o, vec![(5, 10), (20, 25)]);
        assert_eq!(e.overlapping(10, 20).count(), 0);
    }
}
