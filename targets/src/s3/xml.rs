//! The S3 XML documents we read, parsed into types, and the few we send.

use serde::Deserialize;

/// `ListObjectsV2` result (one page).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListPage {
    #[serde(default)]
    pub contents: Vec<ListedObject>,
    #[serde(default)]
    pub common_prefixes: Vec<CommonPrefix>,
    #[serde(default)]
    pub is_truncated: bool,
    pub next_continuation_token: Option<String>,
}

/// One object of a listing.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListedObject {
    pub key: String,
    pub size: u64,
}

/// One "folder" of a listing (a key prefix up to the next `/`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CommonPrefix {
    pub prefix: String,
}

/// `CreateMultipartUpload` result.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MultipartStarted {
    pub upload_id: String,
}

/// `ListMultipartUploads` result (one page).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UploadsPage {
    #[serde(default, rename = "Upload")]
    pub uploads: Vec<Upload>,
    #[serde(default)]
    pub is_truncated: bool,
    pub next_key_marker: Option<String>,
    pub next_upload_id_marker: Option<String>,
}

/// One multipart upload that was started and neither completed nor aborted.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Upload {
    pub key: String,
    pub upload_id: String,
}

/// An S3 error document (also sent with status 200 by a failed `CompleteMultipartUpload`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ErrorDoc {
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// `GetObjectLockConfiguration` result.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LockConfiguration {
    pub object_lock_enabled: Option<String>,
    pub rule: Option<LockRule>,
}

/// The bucket's default retention, if any.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LockRule {
    pub default_retention: Option<DefaultRetention>,
}

/// Mode and period every new object gets unless it names its own.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DefaultRetention {
    pub mode: Option<String>,
    pub days: Option<u32>,
    pub years: Option<u32>,
}

/// `GetObjectRetention` result.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Retention {
    pub retain_until_date: Option<String>,
}

/// Parse an XML document into `T`, saying what it was when it is not one.
pub fn parse<T: for<'de> Deserialize<'de>>(what: &str, body: &[u8]) -> Result<T, String> {
    let text = std::str::from_utf8(body).map_err(|_| format!("{what}: the answer is not UTF-8"))?;
    quick_xml::de::from_str(text).map_err(|e| format!("{what}: unreadable answer ({e})"))
}

/// Escape text for an XML element.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The body of `CompleteMultipartUpload`: each part's number, ETag and SHA-256 checksum.
pub fn complete_body(parts: &[(u32, String, String)]) -> String {
    let mut xml = String::from("<CompleteMultipartUpload>");
    for (number, etag, sha256) in parts {
        xml.push_str(&format!(
            "<Part><PartNumber>{number}</PartNumber><ETag>{}</ETag><ChecksumSHA256>{}</ChecksumSHA256></Part>",
            escape(etag),
            escape(sha256)
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_listing_page() {
        let page: ListPage = parse(
            "list",
            br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>a/</Prefix>
<KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><Delimiter>/</Delimiter><IsTruncated>true</IsTruncated>
<Contents><Key>a/x &amp; y.hfi</Key><LastModified>2026-12-05T10:00:00.000Z</LastModified><ETag>"e"</ETag><Size>12</Size><StorageClass>STANDARD</StorageClass></Contents>
<CommonPrefixes><Prefix>a/sub/</Prefix></CommonPrefixes>
<NextContinuationToken>tok</NextContinuationToken></ListBucketResult>"#,
        )
        .expect("page");
        assert_eq!(page.contents.len(), 1);
        assert_eq!(page.contents[0].key, "a/x & y.hfi");
        assert_eq!(page.contents[0].size, 12);
        assert_eq!(page.common_prefixes[0].prefix, "a/sub/");
        assert!(page.is_truncated);
        assert_eq!(page.next_continuation_token.as_deref(), Some("tok"));
        let empty: ListPage = parse(
            "list",
            b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>",
        )
        .expect("empty page");
        assert!(empty.contents.is_empty() && !empty.is_truncated);
        assert!(parse::<ListPage>("list", b"<html>gateway error").is_err());
    }

    #[test]
    fn parses_errors_and_lock_configuration() {
        let e: ErrorDoc = parse(
            "e",
            b"<Error><Code>AccessDenied</Code><Message>locked</Message><RequestId>1</RequestId></Error>",
        )
        .expect("error");
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("AccessDenied", "locked")
        );
        let c: LockConfiguration = parse(
            "lock",
            b"<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>GOVERNANCE</Mode><Days>3</Days></DefaultRetention></Rule></ObjectLockConfiguration>",
        )
        .expect("lock");
        let d = c.rule.and_then(|r| r.default_retention).expect("default");
        assert_eq!((d.mode.as_deref(), d.days), (Some("GOVERNANCE"), Some(3)));
        assert!(
            complete_body(&[(1, "\"a&b\"".into(), "c2hh".into())]).contains("&quot;a&amp;b&quot;")
        );
    }
}
