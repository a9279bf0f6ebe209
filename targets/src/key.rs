//! Object keys: validated relative paths inside a target.

use crate::error::TargetError;

/// A relative path of `/`-separated, non-empty components, none of them `.` or `..`, with no
/// NUL or backslash. Spaces and any Unicode are fine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Validate `key`.
    pub fn new(key: impl Into<String>) -> Result<Self, TargetError> {
        let key = key.into();
        let bad = |why: &str| Err(TargetError::Invalid(format!("object key '{key}' {why}")));
        if key.is_empty() {
            return bad("is empty");
        }
        if key.starts_with('/') {
            return bad("must be relative");
        }
        if key.contains('\0') || key.contains('\\') {
            return bad("contains a NUL or backslash");
        }
        if key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return bad("has an empty, '.' or '..' component");
        }
        Ok(Self(key))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last component.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The folder part, if any.
    pub fn parent(&self) -> Option<ObjectKey> {
        self.0
            .rsplit_once('/')
            .map(|(p, _)| ObjectKey(p.to_owned()))
    }

    /// A sibling with another last component.
    pub fn with_name(&self, name: &str) -> Result<ObjectKey, TargetError> {
        match self.parent() {
            Some(p) => ObjectKey::new(format!("{}/{name}", p.0)),
            None => ObjectKey::new(name),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(ObjectKey::new("a/b c/ünïcødé.hfi").is_ok());
        for bad in ["", "/abs", "a//b", "a/../b", ".", "a\\b", "a\0b", "a/"] {
            assert!(ObjectKey::new(bad).is_err(), "{bad:?}");
        }
        let k = ObjectKey::new("x/y/z.hfi").expect("key");
        assert_eq!(k.name(), "z.hfi");
        assert_eq!(k.parent().map(|p| p.to_string()), Some("x/y".into()));
        assert_eq!(k.with_name("w").expect("sibling").as_str(), "x/y/w");
    }
}
