//! The ciphers checked against RustCrypto's primitives used directly (not through `Crypto`),
//! SEED against RFC 4269's vectors, and the frame layout the original writes.

use aes::{Aes128, Aes192, Aes256};
use cbc::cipher::block_padding::{Iso7816, Pkcs7};
use cbc::cipher::{AsyncStreamCipher, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use des::{Des, TdesEde3};
use kisaseed::SEED;

use super::*;

const MESSAGE: &[u8] = b"\x12v\0\x2a\0\0\0\0\0\0\0\0a message that spans a few cipher blocks";

/// The key zero-padded to `n` bytes, as the spec says the engine must do.
fn padded(key: &[u8], n: usize) -> Vec<u8> {
    let mut k = key.to_vec();
    k.resize(n, 0);
    k
}

fn spaces(n: usize) -> Vec<u8> {
    vec![b' '; n]
}

/// CBC/PKCS#7 and CFB with the crates directly, for one cipher type.
macro_rules! direct {
    ($cipher:ty, $key_len:expr, $block:expr) => {{
        fn cbc_enc(key: &[u8], msg: &[u8]) -> Vec<u8> {
            cbc::Encryptor::<$cipher>::new_from_slices(&padded(key, $key_len), &spaces($block))
                .unwrap()
                .encrypt_padded_vec_mut::<Pkcs7>(msg)
        }
        fn cbc_dec(key: &[u8], ct: &[u8]) -> Vec<u8> {
            cbc::Decryptor::<$cipher>::new_from_slices(&padded(key, $key_len), &spaces($block))
                .unwrap()
                .decrypt_padded_vec_mut::<Pkcs7>(ct)
                .unwrap()
        }
        fn cfb_enc(key: &[u8], msg: &[u8]) -> Vec<u8> {
            let mut buf = msg.to_vec();
            cfb_mode::Encryptor::<$cipher>::new_from_slices(
                &padded(key, $key_len),
                &spaces($block),
            )
            .unwrap()
            .encrypt(&mut buf);
            buf
        }
        fn cfb_dec(key: &[u8], ct: &[u8]) -> Vec<u8> {
            let mut buf = ct.to_vec();
            cfb_mode::Decryptor::<$cipher>::new_from_slices(
                &padded(key, $key_len),
                &spaces($block),
            )
            .unwrap()
            .decrypt(&mut buf);
            buf
        }
        (
            cbc_enc as fn(&[u8], &[u8]) -> Vec<u8>,
            cbc_dec as fn(&[u8], &[u8]) -> Vec<u8>,
            cfb_enc as fn(&[u8], &[u8]) -> Vec<u8>,
            cfb_dec as fn(&[u8], &[u8]) -> Vec<u8>,
        )
    }};
}

type Direct = (
    fn(&[u8], &[u8]) -> Vec<u8>,
    fn(&[u8], &[u8]) -> Vec<u8>,
    fn(&[u8], &[u8]) -> Vec<u8>,
    fn(&[u8], &[u8]) -> Vec<u8>,
);

fn every_cipher() -> Vec<(&'static str, Direct)> {
    vec![
        ("AES", direct!(Aes256, 32, 16)),
        ("RIJNDAEL", direct!(Aes256, 32, 16)),
        ("AES256", direct!(Aes256, 32, 16)),
        ("AES192", direct!(Aes192, 24, 16)),
        ("AES128", direct!(Aes128, 16, 16)),
        ("DES", direct!(Des, 8, 8)),
        ("DESede", direct!(TdesEde3, 24, 8)),
        ("3DES", direct!(TdesEde3, 24, 8)),
        ("SEED", direct!(SEED, 16, 16)),
    ]
}

#[test]
fn every_cipher_and_mode_matches_the_primitives_both_ways() {
    // Short keys are zero-padded, long ones cut: both forms must agree with the crates.
    for key in [
        &b"k3y"[..],
        &b"0123456789abcdefghijklmnopqrstuvwxyz-too-long"[..],
    ] {
        for (algo, (cbc_enc, cbc_dec, cfb_enc, cfb_dec)) in every_cipher() {
            for len in [0, 1, 7, 8, 15, 16, 17, MESSAGE.len()] {
                let msg = &MESSAGE[..len];
                let cbc = Crypto::from_spec(&format!("{algo}/CBC/PKCS5Padding"), key).unwrap();
                let ct = cbc.encrypt(msg).unwrap();
                assert_eq!(ct, cbc_enc(key, msg), "{algo}/CBC encrypt, {len} bytes");
                assert_eq!(cbc_dec(key, &ct), msg, "{algo}/CBC by the crate");
                assert_eq!(cbc.decrypt(&cbc_enc(key, msg)).unwrap(), msg);

                let cfb = Crypto::from_spec(&format!("{algo}/CFB/NoPadding"), key).unwrap();
                let ct = cfb.encrypt(msg).unwrap();
                assert_eq!(ct.len(), msg.len(), "{algo}/CFB does not pad");
                assert_eq!(ct, cfb_enc(key, msg), "{algo}/CFB encrypt, {len} bytes");
                assert_eq!(cfb_dec(key, &ct), msg, "{algo}/CFB by the crate");
                assert_eq!(cfb.decrypt(&cfb_enc(key, msg)).unwrap(), msg);
            }
        }
    }
}

#[test]
fn a_string_key_is_aes_256_cbc_with_the_key_zero_padded_to_32_bytes() {
    let c = Crypto::from_key(b"secret");
    assert_eq!(
        (c.algo, c.mode, c.padding),
        (Algo::Aes256, Mode::Cbc, Padding::Pkcs7)
    );
    let direct = cbc::Encryptor::<Aes256>::new_from_slices(&padded(b"secret", 32), &spaces(16))
        .unwrap()
        .encrypt_padded_vec_mut::<Pkcs7>(MESSAGE);
    assert_eq!(c.encrypt(MESSAGE).unwrap(), direct);
    assert_eq!(
        Crypto::from_spec("aes", b"secret").unwrap(),
        c,
        "names are case-insensitive"
    );
    assert_eq!(Crypto::from_spec("AES/CBC", b"secret").unwrap(), c);
}

#[test]
fn pkcs1_padding_is_one_and_zeros_and_no_padding_needs_whole_blocks() {
    let c = Crypto::from_spec("DES/CBC/PKCS1Padding", b"8bytekey").unwrap();
    let direct = cbc::Encryptor::<Des>::new_from_slices(b"8bytekey", &spaces(8))
        .unwrap()
        .encrypt_padded_vec_mut::<Iso7816>(b"abc");
    assert_eq!(c.encrypt(b"abc").unwrap(), direct);
    assert_eq!(c.decrypt(&direct).unwrap(), b"abc");

    let c = Crypto::from_spec("AES/CBC/NoPadding", b"k").unwrap();
    assert_eq!(c.encrypt(&[7; 32]).unwrap().len(), 32);
    assert_eq!(c.decrypt(&c.encrypt(&[7; 32]).unwrap()).unwrap(), [7; 32]);
    assert_eq!(
        c.encrypt(&[7; 33]),
        Err(CryptoError::NotBlockAligned { len: 33, block: 16 })
    );
}

#[test]
fn unknown_names_are_refused() {
    assert_eq!(
        Crypto::from_spec("ZLIB", b"k"),
        Err(CryptoError::UnknownAlgo("ZLIB".into()))
    );
    assert_eq!(
        Crypto::from_spec("AES/ECB", b"k"),
        Err(CryptoError::UnknownMode("ECB".into()))
    );
    assert_eq!(
        Crypto::from_spec("AES/CBC/ZeroPadding", b"k"),
        Err(CryptoError::UnknownPadding("ZeroPadding".into()))
    );
}

/// RFC 4269 appendix B: (key, plaintext, ciphertext) of single SEED blocks.
const SEED_VECTORS: [([u8; 16], [u8; 16], [u8; 16]); 4] = [
    (
        [0; 16],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        [
            0x5E, 0xBA, 0xC6, 0xE0, 0x05, 0x4E, 0x16, 0x68, 0x19, 0xAF, 0xF1, 0xCC, 0x6D, 0x34,
            0x6C, 0xDB,
        ],
    ),
    (
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
        [0; 16],
        [
            0xC1, 0x1F, 0x22, 0xF2, 0x01, 0x40, 0x50, 0x50, 0x84, 0x48, 0x35, 0x97, 0xE4, 0x37,
            0x0F, 0x43,
        ],
    ),
    (
        [
            0x47, 0x06, 0x48, 0x08, 0x51, 0xE6, 0x1B, 0xE8, 0x5D, 0x74, 0xBF, 0xB3, 0xFD, 0x95,
            0x61, 0x85,
        ],
        [
            0x83, 0xA2, 0xF8, 0xA2, 0x88, 0x64, 0x1F, 0xB9, 0xA4, 0xE9, 0xA5, 0xCC, 0x2F, 0x13,
            0x1C, 0x7D,
        ],
        [
            0xEE, 0x54, 0xD1, 0x3E, 0xBC, 0xAE, 0x70, 0x6D, 0x22, 0x6B, 0xC3, 0x14, 0x2C, 0xD4,
            0x0D, 0x4A,
        ],
    ),
    (
        [
            0x28, 0xDB, 0xC3, 0xBC, 0x49, 0xFF, 0xD8, 0x7D, 0xCF, 0xA5, 0x09, 0xB1, 0x1D, 0x42,
            0x2B, 0xE7,
        ],
        [
            0xB4, 0x1E, 0x6B, 0xE2, 0xEB, 0xA8, 0x4A, 0x14, 0x8E, 0x2E, 0xED, 0x84, 0x59, 0x3C,
            0x5E, 0xC7,
        ],
        [
            0x9B, 0x9B, 0x7B, 0xFC, 0xD1, 0x81, 0x3C, 0xB9, 0x5D, 0x0B, 0x36, 0x18, 0xF4, 0x0F,
            0x51, 0x22,
        ],
    ),
];

#[test]
fn seed_matches_rfc_4269() {
    for (key, plain, cipher) in SEED_VECTORS {
        // One CBC block is E(P xor IV): feed P xor IV (spaces) to get the raw SEED block.
        let c = Crypto::from_spec("SEED/CBC/NoPadding", &key).unwrap();
        let input: Vec<u8> = plain.iter().map(|b| b ^ b' ').collect();
        assert_eq!(c.encrypt(&input).unwrap(), cipher, "key {key:02x?}");
        assert_eq!(c.decrypt(&cipher).unwrap(), input);
    }
}

/// `{"v": {"n": 42}}` as the engine encodes it.
fn document() -> Vec<u8> {
    let inner = [
        &14u32.to_le_bytes()[..],
        b"\x10n\0",
        &42i32.to_le_bytes(),
        b"\0",
    ]
    .concat();
    let mut doc = Vec::new();
    let len = 4 + 1 + 2 + inner.len() + 1;
    doc.extend_from_slice(&(len as u32).to_le_bytes());
    doc.extend_from_slice(b"\x03v\0");
    doc.extend_from_slice(&inner);
    doc.push(0);
    doc
}

#[test]
fn a_sealed_frame_is_flagged_counts_itself_and_hides_the_document_less_its_length() {
    let doc = document();
    let c = Crypto::from_spec("SEED/CBC/PKCS5Padding", b"seed key").unwrap();
    let mut frame = bytes::BytesMut::new();
    c.seal_frame(&doc, &mut frame).unwrap();
    let header = u32::from_le_bytes(frame[..4].try_into().unwrap());
    assert_eq!(header & ENCRYPTED_FLAG, ENCRYPTED_FLAG);
    assert_eq!((header & !ENCRYPTED_FLAG) as usize, frame.len());
    assert!(is_encrypted(&frame));
    assert!(!is_encrypted(&doc));
    // The ciphertext is that of the document without its length field, by the crate itself.
    let direct = cbc::Decryptor::<SEED>::new_from_slices(&padded(b"seed key", 16), &spaces(16))
        .unwrap()
        .decrypt_padded_vec_mut::<Pkcs7>(&frame[4..])
        .unwrap();
    assert_eq!(direct, doc[4..]);
    assert_eq!(c.open_frame(&frame).unwrap(), doc);
}

#[test]
fn bad_frames_are_refused() {
    let c = Crypto::from_key(b"k");
    let mut frame = bytes::BytesMut::new();
    c.seal_frame(&document(), &mut frame).unwrap();
    // A wrong key leaves garbage whose padding does not check out.
    assert_eq!(
        Crypto::from_key(b"other").open_frame(&frame),
        Err(CryptoError::BadPadding)
    );
    // A ciphertext cut short is not whole blocks; a header that lies is refused.
    let mut cut = frame[..frame.len() - 1].to_vec();
    let header = (cut.len() as u32) | ENCRYPTED_FLAG;
    cut[..4].copy_from_slice(&header.to_le_bytes());
    assert!(matches!(
        c.open_frame(&cut),
        Err(CryptoError::BadLength { .. })
    ));
    assert!(matches!(
        c.open_frame(&frame[..frame.len() - 1]),
        Err(CryptoError::BadFrame { .. })
    ));
    assert_eq!(
        c.open_frame(&(4 | ENCRYPTED_FLAG).to_le_bytes()),
        Err(CryptoError::Empty)
    );
}
