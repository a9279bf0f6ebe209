//! AWS Signature Version 4 for S3 requests: every header we send is signed, and the payload's
//! SHA-256 is part of the signature, so the server refuses a body changed on the way.

use ring::{digest, hmac};
use zeroize::Zeroizing;

/// The SHA-256 of an empty payload (GET, HEAD, DELETE).
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Access key, secret and region a request is signed with.
pub struct Signer {
    pub access_key: String,
    pub secret_key: Zeroizing<String>,
    pub region: String,
}

/// Lower-case hex of a SHA-256 digest.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Percent-encoding as SigV4 wants it: everything but `A-Za-z0-9-._~` (and `/` when
/// `keep_slash`, for paths) as `%XX` in upper case.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The canonical query string of `(name, value)` pairs (already unencoded), sorted.
pub fn canonical_query(params: &[(&str, String)]) -> String {
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

impl Signer {
    /// The `Authorization` header for a request. `headers` are every header sent (lower-case
    /// names, including `host`, `x-amz-date` and `x-amz-content-sha256`); `path` is the
    /// encoded path, `query` the canonical query string; `amz_date` is `YYYYMMDDTHHMMSSZ`.
    pub fn authorization(
        &self,
        method: &str,
        path: &str,
        query: &str,
        headers: &[(String, String)],
        payload_sha256: &str,
        amz_date: &str,
    ) -> String {
        let mut sorted: Vec<(&str, String)> = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    v.split_whitespace().collect::<Vec<_>>().join(" "),
                )
            })
            .collect();
        sorted.sort();
        let canonical_headers: String = sorted.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed_headers = sorted.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(";");
        let canonical_request = format!(
            "{method}\n{path}\n{query}\n{canonical_headers}\n{signed_headers}\n{payload_sha256}"
        );
        let date = &amz_date[..8.min(amz_date.len())];
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            sha256_hex(canonical_request.as_bytes())
        );
        let mac = |key: &[u8], data: &str| {
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
        };
        let secret = Zeroizing::new(format!("AWS4{}", self.secret_key.as_str()));
        let k_date = mac(secret.as_bytes(), date);
        let k_region = mac(k_date.as_ref(), &self.region);
        let k_service = mac(k_region.as_ref(), "s3");
        let k_signing = mac(k_service.as_ref(), "aws4_request");
        let signature = hex(mac(k_signing.as_ref(), &string_to_sign).as_ref());
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.access_key
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The GET Object example of the S3 SigV4 documentation ("Signature Calculations for the
    /// Authorization Header: Transferring Payload in a Single Chunk").
    #[test]
    fn matches_the_documented_get_object_example() {
        let signer = Signer {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: Zeroizing::new("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()),
            region: "us-east-1".into(),
        };
        let headers = vec![
            (
                "host".to_owned(),
                "examplebucket.s3.amazonaws.com".to_owned(),
            ),
            ("range".to_owned(), "bytes=0-9".to_owned()),
            ("x-amz-content-sha256".to_owned(), EMPTY_SHA256.to_owned()),
            ("x-amz-date".to_owned(), "20130524T000000Z".to_owned()),
        ];
        let auth = signer.authorization(
            "GET",
            "/test.txt",
            "",
            &headers,
            EMPTY_SHA256,
            "20130524T000000Z",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn encodes_like_sigv4() {
        assert_eq!(uri_encode("a b/ü~x", true), "a%20b/%C3%BC~x");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(
            canonical_query(&[("prefix", "a b/".into()), ("list-type", "2".into())]),
            "list-type=2&prefix=a%20b%2F"
        );
    }
}
