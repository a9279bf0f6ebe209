//! Where an S3 bucket is and how it is addressed, as named by an `s3://` URL. Always built, so
//! that a crate that only parses target URLs (the server) knows S3 targets too.

use crate::error::TargetError;

/// An S3 bucket, or a folder (key prefix) in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    /// `http://host:port` or `https://host[:port]` (AWS: `https://s3.REGION.amazonaws.com`).
    pub endpoint: String,
    /// Signing region.
    pub region: String,
    /// Bucket name.
    pub bucket: String,
    /// Key prefix of the folder (no leading or trailing `/`; may be empty).
    pub prefix: String,
    /// `endpoint/bucket/key` instead of `bucket.endpoint/key`.
    pub path_style: bool,
}

impl S3Config {
    /// From `s3://bucket/prefix?endpoint=URL&region=R&path_style=true|false`. Without an
    /// endpoint it is AWS in the region (default `us-east-1`), virtual-hosted; with one,
    /// path-style unless `path_style=false` (what most S3-compatible servers want).
    pub fn from_url(u: &url::Url) -> Result<Self, TargetError> {
        let bucket = u.host_str().unwrap_or_default().to_owned();
        if !valid_bucket(&bucket) {
            return Err(TargetError::Invalid(format!(
                "'{bucket}' is not a valid bucket name: s3://bucket/prefix, the bucket 3–63 \
                 characters of lower-case letters, digits, '.' and '-'"
            )));
        }
        let (mut endpoint, mut region, mut path_style) = (None, None, None);
        for (name, value) in u.query_pairs() {
            match name.as_ref() {
                "endpoint" => endpoint = Some(value.trim_end_matches('/').to_owned()),
                "region" => region = Some(value.into_owned()),
                "path_style" => {
                    path_style = Some(match value.as_ref() {
                        "true" => true,
                        "false" => false,
                        other => {
                            return Err(TargetError::Invalid(format!(
                                "path_style={other}: true or false"
                            )))
                        }
                    })
                }
                other => {
                    return Err(TargetError::Invalid(format!(
                        "s3:// URL option '{other}' is unknown (endpoint, region, path_style)"
                    )))
                }
            }
        }
        if let Some(e) = &endpoint {
            let parsed = url::Url::parse(e)
                .map_err(|err| TargetError::Invalid(format!("S3 endpoint '{e}': {err}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(TargetError::Invalid(format!(
                    "S3 endpoint '{e}' must be http://host[:port] or https://host[:port]"
                )));
            }
        }
        let region = region
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "us-east-1".into());
        let path_style = path_style.unwrap_or(endpoint.is_some());
        let endpoint = endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let prefix = crate::location::percent_decode(u.path())
            .trim_matches('/')
            .to_owned();
        Ok(Self {
            endpoint,
            region,
            bucket,
            prefix,
            path_style,
        })
    }

    /// The URL that names this folder (parsed back by [`S3Config::from_url`]).
    pub fn url(&self) -> String {
        format!(
            "s3://{}/{}?endpoint={}&region={}&path_style={}",
            self.bucket, self.prefix, self.endpoint, self.region, self.path_style
        )
    }
}

/// Object Lock retention given to every image written (S3 buckets with Object Lock only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLock {
    /// Governance (users with a special permission may lift it) or compliance (nobody can).
    pub mode: LockMode,
    /// How long each new object stays locked.
    pub period: std::time::Duration,
}

/// An Object Lock mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Lifted only with `s3:BypassGovernanceRetention`.
    Governance,
    /// Lifted by nobody, not even the account's root user, until it ends.
    Compliance,
}

impl LockMode {
    /// The mode as S3 headers name it.
    pub fn header(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

impl std::str::FromStr for LockMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "governance" => Ok(LockMode::Governance),
            "compliance" => Ok(LockMode::Compliance),
            other => Err(format!("lock mode '{other}': governance or compliance")),
        }
    }
}

/// S3 bucket naming rules (the DNS-compatible ones every provider accepts).
pub fn valid_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        for ok in ["abc", "my-backups.2026", "a1b"] {
            assert!(valid_bucket(ok), "{ok}");
        }
        for bad in ["ab", "Upper", "-lead", "trail-", "with_underscore", "a/b"] {
            assert!(!valid_bucket(bad), "{bad}");
        }
    }
}
