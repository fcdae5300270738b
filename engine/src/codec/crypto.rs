//! Socket crypto (spec/stage.md §4.5): the ciphers a `crypto` key names, and the encrypted
//! `packet` frame. The ciphers and modes are RustCrypto's (`aes`, `des`, `kisaseed` for SEED,
//! `cbc`, `cfb-mode`); this module only parses the original's key forms and lays out the frame.
//!
//! Wire layout, as the original's `Stage::commit` and receive path write and read it: a BSON
//! document's 4-byte length is replaced by a header whose low 31 bits count the whole frame
//! (header + ciphertext) and whose bit 31 is set; the ciphertext is the document *without* its
//! length field. Decrypting puts the plaintext length + 4 back in front, which is the document
//! again. IV = one block of ASCII spaces, the same for every frame; keys are zero-padded or cut
//! to the cipher's key size. See docs/compat.md "Socket crypto" for every choice.

use bytes::BytesMut;
use cbc::cipher::block_padding::{Iso7816, NoPadding, Pkcs7};
use cbc::cipher::{
    AsyncStreamCipher, BlockCipher, BlockDecryptMut, BlockEncryptMut, KeyInit, KeyIvInit,
};
use thiserror::Error;

use super::framing::ENCRYPTED_FLAG;

/// The block ciphers a key may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    /// `AES128`: a 16-byte key.
    Aes128,
    /// `AES192`: a 24-byte key.
    Aes192,
    /// `AES`, `AES256`, `RIJNDAEL` and the plain string key: the original zero-pads every key
    /// to 32 bytes and Crypto++'s AES takes all 32, so "AES" is AES-256.
    Aes256,
    /// `DES`: an 8-byte key.
    Des,
    /// `DESede`, `3DES`, `TDES`: three-key EDE triple DES, a 24-byte key.
    Tdes,
    /// `SEED` (RFC 4269): a 16-byte key.
    Seed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Cbc,
    /// Full-block cipher feedback (CFB-128 for AES and SEED, CFB-64 for DES): no padding, the
    /// ciphertext is as long as the plaintext.
    Cfb,
}

/// CBC's padding; CFB needs none and ignores the name (as Crypto++ does for stream modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// `PKCS5Padding` (PKCS#7 on the cipher's block), the default.
    Pkcs7,
    /// `PKCS1Padding`, which the original maps to Crypto++'s ONE_AND_ZEROS (ISO/IEC 7816-4).
    OneAndZeros,
    /// `NoPadding`: a document whose length (less its 4-byte length field) is not a whole
    /// number of blocks cannot be sent.
    None,
}

/// Why a key could not be used or a frame could not be opened.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("unknown cipher `{0}` (expected AES, AES128, AES192, AES256, RIJNDAEL, DES, DESede/3DES or SEED)")]
    UnknownAlgo(String),
    #[error("unknown cipher mode `{0}` (expected CBC or CFB)")]
    UnknownMode(String),
    #[error("unknown padding `{0}` (expected PKCS5Padding, PKCS1Padding or NoPadding)")]
    UnknownPadding(String),
    #[error("{len} bytes are not a whole number of {block}-byte blocks (NoPadding)")]
    NotBlockAligned { len: usize, block: usize },
    #[error("ciphertext of {len} bytes is not a whole number of {block}-byte blocks")]
    BadLength { len: usize, block: usize },
    #[error("bad padding after decryption (wrong key or cipher?)")]
    BadPadding,
    #[error("encrypted frame without ciphertext")]
    Empty,
    #[error("frame of {len} bytes is too short or its length does not match its header")]
    BadFrame { len: usize },
}

/// `key()` and `iv()` are sized by `key_size()`/`block_size()`, the cipher's own.
const SIZES: &str = "key and IV sizes are the cipher's own";

/// One configured cipher: what `socket.crypto = ...` holds. Plain data, shared between cores.
#[derive(Clone, PartialEq, Eq)]
pub struct Crypto {
    pub algo: Algo,
    pub mode: Mode,
    pub padding: Padding,
    /// The key, zero-padded to 32 bytes; the cipher uses its first `key_size()` bytes.
    key: [u8; 32],
}

impl std::fmt::Debug for Crypto {
    // The key stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Crypto({})", self.describe())
    }
}

impl Crypto {
    /// `socket.crypto = "key"`: AES-256 (Rijndael) in CBC mode with PKCS#7 padding.
    pub fn from_key(key: &[u8]) -> Crypto {
        Crypto::new(Algo::Aes256, Mode::Cbc, Padding::Pkcs7, key)
    }

    /// `socket.crypto = { ["ALGO/MODE/PADDING"] = key }`. MODE defaults to CBC and PADDING to
    /// PKCS5Padding; names are case-insensitive; parts after the third are ignored.
    pub fn from_spec(spec: &str, key: &[u8]) -> Result<Crypto, CryptoError> {
        let mut parts = spec.split('/').map(str::trim);
        let algo_name = parts.next().unwrap_or("");
        let algo = match algo_name.to_ascii_uppercase().as_str() {
            "AES" | "AES256" | "RIJNDAEL" => Algo::Aes256,
            "AES128" => Algo::Aes128,
            "AES192" => Algo::Aes192,
            "DES" => Algo::Des,
            "DESEDE" | "3DES" | "TDES" | "TRIPLEDES" => Algo::Tdes,
            "SEED" => Algo::Seed,
            _ => return Err(CryptoError::UnknownAlgo(algo_name.to_string())),
        };
        let mode = match parts.next() {
            None => Mode::Cbc,
            Some(m) if m.eq_ignore_ascii_case("CBC") => Mode::Cbc,
            Some(m) if m.eq_ignore_ascii_case("CFB") => Mode::Cfb,
            Some(m) => return Err(CryptoError::UnknownMode(m.to_string())),
        };
        let padding = match parts.next() {
            None => Padding::Pkcs7,
            Some(p) if p.eq_ignore_ascii_case("PKCS5Padding") => Padding::Pkcs7,
            Some(p) if p.eq_ignore_ascii_case("PKCS7Padding") => Padding::Pkcs7,
            Some(p) if p.eq_ignore_ascii_case("PKCS1Padding") => Padding::OneAndZeros,
            Some(p) if p.eq_ignore_ascii_case("NoPadding") => Padding::None,
            Some(p) => return Err(CryptoError::UnknownPadding(p.to_string())),
        };
        Ok(Crypto::new(algo, mode, padding, key))
    }

    fn new(algo: Algo, mode: Mode, padding: Padding, key: &[u8]) -> Crypto {
        let mut padded = [0u8; 32];
        let n = key.len().min(32);
        padded[..n].copy_from_slice(&key[..n]);
        Crypto {
            algo,
            mode,
            padding,
            key: padded,
        }
    }

    pub fn key_size(&self) -> usize {
        match self.algo {
            Algo::Aes128 | Algo::Seed => 16,
            Algo::Aes192 | Algo::Tdes => 24,
            Algo::Aes256 => 32,
            Algo::Des => 8,
        }
    }

    pub fn block_size(&self) -> usize {
        match self.algo {
            Algo::Des | Algo::Tdes => 8,
            _ => 16,
        }
    }

    /// The key as the cipher uses it (zero-padded or cut to its key size).
    pub fn key(&self) -> &[u8] {
        &self.key[..self.key_size()]
    }

    /// The IV: one block of ASCII spaces, as in the original.
    pub fn iv(&self) -> Vec<u8> {
        vec![b' '; self.block_size()]
    }

    /// `AES256/CBC/PKCS5Padding` and the like, for logs.
    pub fn describe(&self) -> String {
        let algo = match self.algo {
            Algo::Aes128 => "AES128",
            Algo::Aes192 => "AES192",
            Algo::Aes256 => "AES256",
            Algo::Des => "DES",
            Algo::Tdes => "DESede",
            Algo::Seed => "SEED",
        };
        match self.mode {
            Mode::Cfb => format!("{algo}/CFB/NoPadding"),
            Mode::Cbc => {
                let padding = match self.padding {
                    Padding::Pkcs7 => "PKCS5Padding",
                    Padding::OneAndZeros => "PKCS1Padding",
                    Padding::None => "NoPadding",
                };
                format!("{algo}/CBC/{padding}")
            }
        }
    }

    /// Encrypts `plain` (padding it as configured).
    pub fn encrypt(&self, plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match self.algo {
            Algo::Aes128 => self.encrypt_with::<aes::Aes128>(plain),
            Algo::Aes192 => self.encrypt_with::<aes::Aes192>(plain),
            Algo::Aes256 => self.encrypt_with::<aes::Aes256>(plain),
            Algo::Des => self.encrypt_with::<des::Des>(plain),
            Algo::Tdes => self.encrypt_with::<des::TdesEde3>(plain),
            Algo::Seed => self.encrypt_with::<kisaseed::SEED>(plain),
        }
    }

    /// Decrypts `cipher` and strips its padding.
    pub fn decrypt(&self, cipher: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match self.algo {
            Algo::Aes128 => self.decrypt_with::<aes::Aes128>(cipher),
            Algo::Aes192 => self.decrypt_with::<aes::Aes192>(cipher),
            Algo::Aes256 => self.decrypt_with::<aes::Aes256>(cipher),
            Algo::Des => self.decrypt_with::<des::Des>(cipher),
            Algo::Tdes => self.decrypt_with::<des::TdesEde3>(cipher),
            Algo::Seed => self.decrypt_with::<kisaseed::SEED>(cipher),
        }
    }

    fn encrypt_with<C>(&self, plain: &[u8]) -> Result<Vec<u8>, CryptoError>
    where
        C: BlockCipher + BlockEncryptMut + BlockDecryptMut + KeyInit,
    {
        let (key, iv) = (self.key(), self.iv());
        match self.mode {
            Mode::Cfb => {
                let mut buf = plain.to_vec();
                cfb_mode::Encryptor::<C>::new_from_slices(key, &iv)
                    .expect(SIZES)
                    .encrypt(&mut buf);
                Ok(buf)
            }
            Mode::Cbc => {
                let enc = cbc::Encryptor::<C>::new_from_slices(key, &iv).expect(SIZES);
                Ok(match self.padding {
                    Padding::Pkcs7 => enc.encrypt_padded_vec_mut::<Pkcs7>(plain),
                    Padding::OneAndZeros => enc.encrypt_padded_vec_mut::<Iso7816>(plain),
                    Padding::None => {
                        let block = self.block_size();
                        if !plain.len().is_multiple_of(block) {
                            return Err(CryptoError::NotBlockAligned {
                                len: plain.len(),
                                block,
                            });
                        }
                        enc.encrypt_padded_vec_mut::<NoPadding>(plain)
                    }
                })
            }
        }
    }

    fn decrypt_with<C>(&self, cipher: &[u8]) -> Result<Vec<u8>, CryptoError>
    where
        C: BlockCipher + BlockEncryptMut + BlockDecryptMut + KeyInit,
    {
        let (key, iv) = (self.key(), self.iv());
        match self.mode {
            Mode::Cfb => {
                let mut buf = cipher.to_vec();
                cfb_mode::Decryptor::<C>::new_from_slices(key, &iv)
                    .expect(SIZES)
                    .decrypt(&mut buf);
                Ok(buf)
            }
            Mode::Cbc => {
                let block = self.block_size();
                if cipher.is_empty() || !cipher.len().is_multiple_of(block) {
                    return Err(CryptoError::BadLength {
                        len: cipher.len(),
                        block,
                    });
                }
                let dec = cbc::Decryptor::<C>::new_from_slices(key, &iv).expect(SIZES);
                match self.padding {
                    Padding::Pkcs7 => dec.decrypt_padded_vec_mut::<Pkcs7>(cipher),
                    Padding::OneAndZeros => dec.decrypt_padded_vec_mut::<Iso7816>(cipher),
                    Padding::None => dec.decrypt_padded_vec_mut::<NoPadding>(cipher),
                }
                .map_err(|_| CryptoError::BadPadding)
            }
        }
    }

    /// Appends the encrypted frame of BSON document `doc` (its own length field included) to
    /// `out`: header `(4 + ciphertext) | bit 31`, then the ciphertext of `doc[4..]`.
    pub fn seal_frame(&self, doc: &[u8], out: &mut BytesMut) -> Result<(), CryptoError> {
        if doc.len() < 5 {
            return Err(CryptoError::BadFrame { len: doc.len() });
        }
        let sealed = self.encrypt(&doc[4..])?;
        let len = u32::try_from(4 + sealed.len())
            .ok()
            .filter(|&n| n & ENCRYPTED_FLAG == 0)
            .ok_or(CryptoError::BadFrame { len: doc.len() })?;
        out.reserve(4 + sealed.len());
        out.extend_from_slice(&(len | ENCRYPTED_FLAG).to_le_bytes());
        out.extend_from_slice(&sealed);
        Ok(())
    }

    /// The BSON document inside encrypted frame `frame` (header included, bit 31 set): the
    /// plaintext behind a new length field that counts it (+4).
    pub fn open_frame(&self, frame: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let header = frame
            .get(..4)
            .map(|h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]))
            .ok_or(CryptoError::BadFrame { len: frame.len() })?;
        if (header & !ENCRYPTED_FLAG) as usize != frame.len() {
            return Err(CryptoError::BadFrame { len: frame.len() });
        }
        if frame.len() == 4 {
            return Err(CryptoError::Empty);
        }
        let plain = self.decrypt(&frame[4..])?;
        let mut doc = Vec::with_capacity(4 + plain.len());
        doc.extend_from_slice(&((4 + plain.len()) as u32).to_le_bytes());
        doc.extend_from_slice(&plain);
        Ok(doc)
    }
}

/// Whether a `packet` frame (header included) is flagged as encrypted.
pub fn is_encrypted(frame: &[u8]) -> bool {
    frame.len() >= 4 && frame[3] & 0x80 != 0
}

#[cfg(test)]
mod tests;
