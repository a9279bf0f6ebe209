//! Keys, password wrapping, frame encryption and the keyed block hash.
//!
//! Key hierarchy (see `docs/image-format.md`, "Cryptography"):
//! - the **chain key** (32 random bytes, one per chain) derives the block-hash key, so every
//!   image of a chain hashes blocks alike and an incremental can compare against its parent;
//! - the **image key** (32 random bytes, one per image, encrypted images only) encrypts the
//!   image's frames with AES-GCM and derives the MAC key that authenticates header, metadata
//!   and index;
//! - both are wrapped together with AES-256-GCM under a key derived from the password with
//!   Argon2id; the wrapping tag is the password check.

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::aes::Aes192;
use aes_gcm::{Aes256Gcm, AesGcm, Nonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::magic::{KDF_CONTEXT_HASH, KDF_CONTEXT_MAC};

/// Length of a block hash as stored in the index.
pub const HASH_LEN: usize = 16;
/// A truncated keyed BLAKE3 hash of one block.
pub type BlockHash = [u8; HASH_LEN];
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Length of the wrapped key blob: chain key, image key, tag.
pub const WRAPPED_LEN: usize = 32 + 32 + TAG_LEN;

/// Frame encryption of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cipher {
    /// Not encrypted.
    None,
    /// AES-128-GCM.
    Aes128,
    /// AES-192-GCM.
    Aes192,
    /// AES-256-GCM.
    Aes256,
}

impl Cipher {
    /// On-disk code.
    pub fn code(self) -> u8 {
        match self {
            Cipher::None => 0,
            Cipher::Aes128 => 1,
            Cipher::Aes192 => 2,
            Cipher::Aes256 => 3,
        }
    }

    /// From the on-disk code.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Cipher::None,
            1 => Cipher::Aes128,
            2 => Cipher::Aes192,
            3 => Cipher::Aes256,
            _ => return None,
        })
    }

    /// Parse a command-line name: `aes128`, `aes192`, `aes256`, `none`.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "none" => Cipher::None,
            "aes128" | "aes-128" => Cipher::Aes128,
            "aes192" | "aes-192" => Cipher::Aes192,
            "aes256" | "aes-256" => Cipher::Aes256,
            _ => return None,
        })
    }

    /// Key length in bytes (0 for none).
    pub fn key_len(self) -> usize {
        match self {
            Cipher::None => 0,
            Cipher::Aes128 => 16,
            Cipher::Aes192 => 24,
            Cipher::Aes256 => 32,
        }
    }

    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::None => "none",
            Cipher::Aes128 => "aes128",
            Cipher::Aes192 => "aes192",
            Cipher::Aes256 => "aes256",
        }
    }
}

/// Argon2id parameters, stored in the header of encrypted images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
    /// Random salt, fresh for every image.
    pub salt: [u8; 16],
}

/// Upper bounds a reader accepts, so a forged header cannot make us allocate 4 TiB.
const MAX_M_COST_KIB: u32 = 4 * 1024 * 1024;
const MAX_T_COST: u32 = 64;
const MAX_P_COST: u32 = 64;

impl KdfParams {
    /// Default parameters (64 MiB, 3 passes, 1 lane) with a fresh salt.
    pub fn generate() -> Self {
        Self {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 1,
            salt: random_array(),
        }
    }

    /// True when the parameters are within what a reader accepts.
    pub fn is_sane(&self) -> bool {
        (8..=MAX_M_COST_KIB).contains(&self.m_cost_kib)
            && (1..=MAX_T_COST).contains(&self.t_cost)
            && (1..=MAX_P_COST).contains(&self.p_cost)
    }

    fn derive(&self, password: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
        let params =
            argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32)).ok()?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(password, &self.salt, out.as_mut())
            .ok()?;
        Some(out)
    }
}

/// Fill an array from the operating system's random source.
pub fn random_array<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // getrandom only fails when the OS has no entropy source at all; no image can be made then.
    getrandom::getrandom(&mut out).expect("the operating system random source must be available");
    out
}

/// The secrets of one image.
#[derive(Clone)]
pub struct Keys {
    chain_key: Zeroizing<[u8; 32]>,
    image_key: Option<Zeroizing<[u8; 32]>>,
    cipher: Cipher,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Fresh keys for a new chain.
    pub fn new_chain(cipher: Cipher) -> Self {
        Self::with_chain_key(random_array(), cipher)
    }

    /// Fresh image keys that continue the chain whose chain key is `chain_key`.
    pub fn with_chain_key(chain_key: [u8; 32], cipher: Cipher) -> Self {
        let image_key = (cipher != Cipher::None).then(|| Zeroizing::new(random_array()));
        Self {
            chain_key: Zeroizing::new(chain_key),
            image_key,
            cipher,
        }
    }

    /// Keys of an unencrypted image (chain key stored in clear).
    pub fn plain(chain_key: [u8; 32]) -> Self {
        Self {
            chain_key: Zeroizing::new(chain_key),
            image_key: None,
            cipher: Cipher::None,
        }
    }

    /// The chain key (to start an incremental of this chain).
    pub fn chain_key(&self) -> [u8; 32] {
        *self.chain_key
    }

    /// The cipher.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// A hasher factory for block hashes of this chain.
    pub fn block_hasher(&self) -> BlockHasher {
        BlockHasher {
            key: blake3::derive_key(KDF_CONTEXT_HASH, self.chain_key.as_ref()),
        }
    }

    /// MAC key over header, metadata and index (encrypted images only).
    pub fn mac_key(&self) -> Option<[u8; 32]> {
        self.image_key
            .as_ref()
            .map(|k| blake3::derive_key(KDF_CONTEXT_MAC, k.as_ref()))
    }

    /// The frame cipher, or `None` for unencrypted images.
    pub fn frame_cipher(&self) -> Option<FrameCipher> {
        let key = self.image_key.as_ref()?;
        let k = &key[..self.cipher.key_len()];
        Some(match self.cipher {
            Cipher::None => return None,
            Cipher::Aes128 => ring_key(&ring::aead::AES_128_GCM, k)?,
            Cipher::Aes192 => {
                FrameCipher::Aes192(Box::new(AesGcm::<Aes192, U12>::new_from_slice(k).ok()?))
            }
            Cipher::Aes256 => ring_key(&ring::aead::AES_256_GCM, k)?,
        })
    }

    /// Wrap both keys under the password. `aad` binds the blob to the header it sits in.
    pub fn wrap(
        &self,
        password: &[u8],
        params: &KdfParams,
        aad: &[u8],
    ) -> Option<([u8; 12], [u8; WRAPPED_LEN])> {
        let image_key = self.image_key.as_ref()?;
        let kek = params.derive(password)?;
        let cipher = Aes256Gcm::new_from_slice(kek.as_ref()).ok()?;
        let nonce: [u8; 12] = random_array();
        let mut buf = Zeroizing::new(Vec::with_capacity(WRAPPED_LEN));
        buf.extend_from_slice(self.chain_key.as_ref());
        buf.extend_from_slice(image_key.as_ref());
        cipher
            .encrypt_in_place(Nonce::from_slice(&nonce), aad, &mut *buf)
            .ok()?;
        let mut out = [0u8; WRAPPED_LEN];
        out.copy_from_slice(&buf);
        Some((nonce, out))
    }

    /// Unwrap keys; `None` means the password (or the header it is bound to) is wrong.
    pub fn unwrap(
        blob: &[u8; WRAPPED_LEN],
        nonce: &[u8; 12],
        password: &[u8],
        params: &KdfParams,
        aad: &[u8],
        cipher: Cipher,
    ) -> Option<Self> {
        if !params.is_sane() {
            return None;
        }
        let kek = params.derive(password)?;
        let aead = Aes256Gcm::new_from_slice(kek.as_ref()).ok()?;
        let mut buf = Zeroizing::new(blob.to_vec());
        aead.decrypt_in_place(Nonce::from_slice(nonce), aad, &mut *buf)
            .ok()?;
        let mut chain_key = [0u8; 32];
        let mut image_key = Zeroizing::new([0u8; 32]);
        chain_key.copy_from_slice(&buf[..32]);
        image_key.copy_from_slice(&buf[32..64]);
        Some(Self {
            chain_key: Zeroizing::new(chain_key),
            image_key: Some(image_key),
            cipher,
        })
    }
}

/// The block hash: keyed BLAKE3 of the block's plaintext, then keyed BLAKE3 of the block
/// number and that digest, truncated to 16 bytes.
///
/// Hashing the plaintext on its own keeps BLAKE3's 1 KiB chunks aligned with the data (its
/// fastest path); the second, single-compression step binds the hash to its position, so an
/// index whose entries were swapped no longer matches the data.
#[derive(Clone)]
pub struct BlockHasher {
    key: [u8; 32],
}

impl BlockHasher {
    /// Hash block `number` with content `data`.
    pub fn hash(&self, number: u64, data: &[u8]) -> BlockHash {
        let inner = blake3::keyed_hash(&self.key, data);
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&number.to_le_bytes());
        h.update(inner.as_bytes());
        let full = h.finalize();
        let mut out = [0u8; HASH_LEN];
        out.copy_from_slice(&full.as_bytes()[..HASH_LEN]);
        out
    }
}

/// AES-GCM for frames; the nonce is the frame id (unique per image key), never random.
///
/// AES-128 and AES-256 run on `ring` (about twice the throughput of the portable crates on
/// x86 with AES-NI and carry-less multiply); AES-192, which `ring` does not offer, on the
/// RustCrypto `aes-gcm` crate. All three are standard AES-GCM.
pub enum FrameCipher {
    /// AES-128-GCM or AES-256-GCM.
    Ring(Box<ring::aead::LessSafeKey>),
    /// AES-192-GCM.
    Aes192(Box<AesGcm<Aes192, U12>>),
}

fn ring_key(alg: &'static ring::aead::Algorithm, key: &[u8]) -> Option<FrameCipher> {
    let unbound = ring::aead::UnboundKey::new(alg, key).ok()?;
    Some(FrameCipher::Ring(Box::new(ring::aead::LessSafeKey::new(
        unbound,
    ))))
}

fn frame_nonce(frame_id: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&frame_id.to_le_bytes());
    n
}

impl FrameCipher {
    /// Encrypt `buf` in place and append the tag.
    pub fn seal(&self, frame_id: u64, aad: &[u8], buf: &mut Vec<u8>) -> bool {
        let nonce = frame_nonce(frame_id);
        match self {
            FrameCipher::Ring(k) => {
                let n = ring::aead::Nonce::assume_unique_for_key(nonce);
                k.seal_in_place_append_tag(n, ring::aead::Aad::from(aad), buf)
                    .is_ok()
            }
            FrameCipher::Aes192(c) => c
                .encrypt_in_place(Nonce::from_slice(&nonce), aad, buf)
                .is_ok(),
        }
    }

    /// Check the tag and decrypt in place (the tag is removed). False when authentication fails.
    pub fn open(&self, frame_id: u64, aad: &[u8], buf: &mut Vec<u8>) -> bool {
        let nonce = frame_nonce(frame_id);
        match self {
            FrameCipher::Ring(k) => {
                let n = ring::aead::Nonce::assume_unique_for_key(nonce);
                match k.open_in_place(n, ring::aead::Aad::from(aad), buf) {
                    Ok(plain) => {
                        let len = plain.len();
                        buf.truncate(len);
                        true
                    }
                    Err(_) => false,
                }
            }
            FrameCipher::Aes192(c) => c
                .decrypt_in_place(Nonce::from_slice(&nonce), aad, buf)
                .is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast_params() -> KdfParams {
        KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
            salt: [7; 16],
        }
    }

    #[test]
    fn wrap_unwrap_and_wrong_password() {
        let keys = Keys::new_chain(Cipher::Aes256);
        let p = fast_params();
        let (nonce, blob) = keys.wrap(b"secret", &p, b"hdr").expect("wrap");
        let back =
            Keys::unwrap(&blob, &nonce, b"secret", &p, b"hdr", Cipher::Aes256).expect("unwrap");
        assert_eq!(back.chain_key(), keys.chain_key());
        assert!(Keys::unwrap(&blob, &nonce, b"Secret", &p, b"hdr", Cipher::Aes256).is_none());
        assert!(Keys::unwrap(&blob, &nonce, b"secret", &p, b"hdX", Cipher::Aes256).is_none());
    }

    #[test]
    fn frames_bind_id_and_aad() {
        for cipher in [Cipher::Aes128, Cipher::Aes192, Cipher::Aes256] {
            let keys = Keys::new_chain(cipher);
            let fc = keys.frame_cipher().expect("cipher");
            let mut buf = b"hello blocks".to_vec();
            assert!(fc.seal(5, b"aad", &mut buf));
            let sealed = buf.clone();
            assert!(fc.open(5, b"aad", &mut buf));
            assert_eq!(buf, b"hello blocks");
            let mut b2 = sealed.clone();
            assert!(
                !fc.open(6, b"aad", &mut b2),
                "another position must not open"
            );
            let mut b3 = sealed;
            assert!(!fc.open(5, b"aaX", &mut b3));
        }
    }

    #[test]
    fn hash_binds_position() {
        let h = Keys::plain([1; 32]).block_hasher();
        assert_ne!(h.hash(1, b"x"), h.hash(2, b"x"));
        assert_eq!(h.hash(1, b"x"), h.hash(1, b"x"));
    }
}
