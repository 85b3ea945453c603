//! SRTP protection of outbound RTP (RFC 3711, RFC 7714), as libsrtp does it for tchat's
//! sessions (sfu/dtls.py: any outbound SSRC, repeated sends allowed, window 1024), with
//! vetted crates' ciphers: AES-128-GCM from `ring` (BoringSSL's AES-NI/CLMUL code: ~4×
//! RustCrypto's `aes-gcm` here), AES-128 counter mode (`aes` + `ctr`) and HMAC-SHA1
//! (`hmac` + `sha1`) from RustCrypto. No cipher code here; what is here is SRTP's framing: the
//! key derivation, the IVs, the rollover counter's estimate. The differential test
//! (tests/integration/test_fastpath_diff.py) holds every byte to pylibsrtp's libsrtp.
//!
//! Only RTP leaves through this path; SRTCP and the SFU's inbound SRTP stay with libsrtp
//! (pylibsrtp), whose cost is per publisher packet, not per viewer. `Receiver` unprotects
//! for the load generator's sampled viewers (swarm.rs), held to pylibsrtp alike.

use aes::cipher::{InnerIvInit, KeyInit, KeyIvInit, StreamCipher};
use aes::Aes128;
use hmac::{Hmac, Mac};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyBytes, PyType};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use sha1::Sha1;

type Ctr = ctr::Ctr128BE<Aes128>;
type CtrCore = ctr::CtrCore<Aes128, ctr::flavors::Ctr128BE>;

/// One packet's room: pylibsrtp's largest input (sfu/dtls.py's SRTP_BUFFER) with trailer.
pub const BUF: usize = 2048;
/// libsrtp's SRTP_MAX_TRAILER_LEN (tag + MKI): what pylibsrtp keeps free after a packet.
pub const RTP_TRAILER: usize = 16 + 128;

// libsrtp's srtp_profile_t values (pylibsrtp's Policy.SRTP_PROFILE_*)
const AES128_CM_SHA1_80: i32 = 1;
const AEAD_AES_128_GCM: i32 = 7;
// srtp_err_status_t codes used here
const ERR_BAD_PARAM: i32 = 2;
const ERR_AUTH: i32 = 7;
const ERR_REPLAY_FAIL: i32 = 9;
const ERR_REPLAY_OLD: i32 = 10;
const ERR_PARSE: i32 = 21;

const WINDOW: i64 = 1024; // replay window: a send further back than this is refused
const MEDIAN: u32 = 1 << 15;
const SEQ_MAX: i64 = 1 << 16;

// libsrtp's srtp_err_status_t messages, in its order (pylibsrtp's ERRORS)
const ERRORS: [&str; 28] = [
    "nothing to report",
    "unspecified failure",
    "unsupported parameter",
    "couldn't allocate memory",
    "couldn't deallocate properly",
    "couldn't initialize",
    "can't process as much data as requested",
    "authentication failure",
    "cipher failure",
    "replay check failed (bad index)",
    "replay check failed (index too old)",
    "algorithm failed test routine",
    "unsupported operation",
    "no appropriate context found",
    "unable to perform desired validation",
    "can't use key any more",
    "error in use of socket",
    "error in use POSIX signals",
    "nonce check failed",
    "couldn't read data",
    "couldn't write data",
    "error parsing data",
    "error encoding data",
    "error while using semaphores",
    "error while using pfkey",
    "error MKI present in packet is invalid",
    "packet index is too old to consider",
    "packet index advanced, reset needed",
];

static SRTP_ERROR: GILOnceCell<Py<PyType>> = GILOnceCell::new();

/// pylibsrtp.Error, so callers catch one exception whichever path runs.
pub fn srtp_error(py: Python<'_>, code: i32) -> PyErr {
    let message = ERRORS
        .get(code as usize)
        .copied()
        .unwrap_or("unknown SRTP error");
    match SRTP_ERROR.import(py, "pylibsrtp", "Error") {
        Ok(kind) => PyErr::from_type(kind.clone(), message.to_string()),
        Err(err) => err,
    }
}

/// RFC 3711 §4.3.1 with a key derivation rate of 0: `out.len()` bytes of session key
/// under `label`, the AES-CM keystream at (master salt, 14 bytes, XOR label at byte 7).
fn derive(master_key: &[u8; 16], master_salt: &[u8], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..master_salt.len()].copy_from_slice(master_salt);
    iv[7] ^= label;
    out.fill(0);
    Ctr::new(master_key.into(), &iv.into()).apply_keystream(out);
}

enum Cipher {
    Gcm(Box<LessSafeKey>),
    Cm {
        aes: Box<Aes128>,
        auth: Box<Hmac<Sha1>>,
    },
}

/// One stream's packet index (rollover counter << 16 | highest sequence number sent).
struct Stream {
    ssrc: u32,
    index: u64,
}

/// Outbound SRTP for one DTLS association: every SSRC it sends gets its own stream
/// (libsrtp's ssrc_any_outbound template), keyed alike.
pub struct Sender {
    cipher: Cipher,
    salt: [u8; 14], // the session salt: 12 bytes for GCM, 14 for AES-CM
    streams: Vec<Stream>,
}

impl Sender {
    pub fn new(key: &[u8], profile: i32) -> Result<Sender, i32> {
        let salt_len = match profile {
            AEAD_AES_128_GCM => 12,
            AES128_CM_SHA1_80 => 14,
            _ => return Err(ERR_BAD_PARAM),
        };
        if key.len() != 16 + salt_len {
            return Err(ERR_BAD_PARAM);
        }
        let master: [u8; 16] = key[..16].try_into().map_err(|_| ERR_BAD_PARAM)?;
        let master_salt = &key[16..];
        let mut enc = [0u8; 16];
        derive(&master, master_salt, 0x00, &mut enc);
        let mut salt = [0u8; 14];
        derive(&master, master_salt, 0x02, &mut salt[..salt_len]);
        let cipher = if profile == AEAD_AES_128_GCM {
            let key = UnboundKey::new(&AES_128_GCM, &enc).map_err(|_| ERR_BAD_PARAM)?;
            Cipher::Gcm(Box::new(LessSafeKey::new(key)))
        } else {
            let mut auth_key = [0u8; 20];
            derive(&master, master_salt, 0x01, &mut auth_key);
            let auth = <Hmac<Sha1> as Mac>::new_from_slice(&auth_key).map_err(|_| ERR_BAD_PARAM)?;
            Cipher::Cm {
                aes: Box::new(Aes128::new(&enc.into())),
                auth: Box::new(auth),
            }
        };
        Ok(Sender {
            cipher,
            salt,
            streams: Vec::with_capacity(4),
        })
    }

    /// The index of sequence number `seq` on `ssrc`'s stream, which it advances (libsrtp's
    /// srtp_rdbx_estimate_index, srtp_rdbx_check and srtp_rdbx_add_index for a sender
    /// that may repeat: only a send more than the window back is refused).
    fn index(&mut self, ssrc: u32, seq: u16) -> Result<u64, i32> {
        let pos = match self.streams.iter().position(|s| s.ssrc == ssrc) {
            Some(pos) => pos,
            None => {
                self.streams.push(Stream { ssrc, index: 0 });
                self.streams.len() - 1
            }
        };
        let stream = &mut self.streams[pos];
        let (guess, delta) = estimate(stream.index, seq);
        if delta > 0 {
            stream.index = (stream.index as i64 + delta) as u64;
        } else if WINDOW - 1 + delta < 0 {
            return Err(ERR_REPLAY_OLD);
        }
        Ok(guess)
    }

    /// Protect the RTP packet in `buf[..len]` in place (the tag after it); the new length.
    pub fn protect(&mut self, buf: &mut [u8], len: usize) -> Result<usize, i32> {
        let start = payload_start(&buf[..len]).ok_or(ERR_BAD_PARAM)?;
        if len + RTP_TRAILER > buf.len() {
            return Err(ERR_BAD_PARAM);
        }
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let index = self.index(ssrc, seq)?;
        let roc = (index >> 16) as u32;
        match &self.cipher {
            Cipher::Gcm(gcm) => {
                // RFC 7714 §8.1: 00 00 | SSRC | ROC | SEQ, XOR the session salt
                let mut iv = [0u8; 12];
                iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
                iv[6..10].copy_from_slice(&roc.to_be_bytes());
                iv[10..12].copy_from_slice(&seq.to_be_bytes());
                for (b, s) in iv.iter_mut().zip(&self.salt[..12]) {
                    *b ^= s;
                }
                let (header, rest) = buf.split_at_mut(start);
                let nonce = Nonce::assume_unique_for_key(iv);
                let tag = gcm
                    .seal_in_place_separate_tag(
                        nonce,
                        Aad::from(&*header),
                        &mut rest[..len - start],
                    )
                    .map_err(|_| 8)?; // cipher failure
                buf[len..len + 16].copy_from_slice(tag.as_ref());
                Ok(len + 16)
            }
            Cipher::Cm { aes, auth } => {
                // RFC 3711 §4.1.1: (salt << 16) XOR (SSRC << 64) XOR (index << 16)
                let mut iv = [0u8; 16];
                iv[..14].copy_from_slice(&self.salt);
                for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
                    *b ^= s;
                }
                for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
                    *b ^= s;
                }
                let core = CtrCore::inner_iv_init(aes.as_ref().clone(), &iv.into());
                Ctr::from_core(core).apply_keystream(&mut buf[start..len]);
                let mut mac = auth.as_ref().clone();
                mac.update(&buf[..len]);
                mac.update(&roc.to_be_bytes());
                let tag = mac.finalize().into_bytes();
                buf[len..len + 10].copy_from_slice(&tag[..10]);
                Ok(len + 10)
            }
        }
    }
}

/// libsrtp's srtp_rdbx_estimate_index: the packet index `seq` most likely has, given the
/// highest `local` so far, and how far ahead of it that is.
fn estimate(local: u64, seq: u16) -> (u64, i64) {
    if local > MEDIAN as u64 {
        let roc = local >> 16;
        let last = (local & 0xFFFF) as i64;
        let s = seq as i64;
        let (roc, delta) = if (last as u32) < MEDIAN {
            if s - last > MEDIAN as i64 {
                (roc.wrapping_sub(1), s - last - SEQ_MAX)
            } else {
                (roc, s - last)
            }
        } else if last - MEDIAN as i64 > s {
            (roc + 1, s - last + SEQ_MAX)
        } else {
            (roc, s - last)
        };
        (((roc & 0xFFFF_FFFF) << 16) | seq as u64, delta)
    } else {
        (seq as u64, seq as i64 - local as i64)
    }
}

/// One inbound stream: its highest index and libsrtp's replay window over the last
/// WINDOW indices (a bit per index, kept by index modulo the window).
struct RxStream {
    ssrc: u32,
    index: u64,
    seen: [u64; (WINDOW as usize) / 64],
}

impl RxStream {
    fn bit(index: u64) -> (usize, u64) {
        let i = (index % WINDOW as u64) as usize;
        (i / 64, 1 << (i % 64))
    }

    /// srtp_rdbx_check: a new index, or one within the window not yet seen.
    fn check(&self, guess: u64, delta: i64) -> Result<(), i32> {
        if delta > 0 {
            return Ok(());
        }
        if WINDOW - 1 + delta < 0 {
            return Err(ERR_REPLAY_OLD);
        }
        let (w, b) = RxStream::bit(guess);
        if self.seen[w] & b != 0 {
            return Err(ERR_REPLAY_FAIL);
        }
        Ok(())
    }

    /// srtp_rdbx_add_index, after the packet authenticated.
    fn add(&mut self, guess: u64, delta: i64) {
        if delta > 0 {
            if delta >= WINDOW {
                self.seen = [0; (WINDOW as usize) / 64];
            } else {
                for i in self.index + 1..guess {
                    let (w, b) = RxStream::bit(i);
                    self.seen[w] &= !b;
                }
            }
            self.index = guess;
        }
        let (w, b) = RxStream::bit(guess);
        self.seen[w] |= b;
    }
}

/// Inbound SRTP for one DTLS association as libsrtp unprotects it for a receiver of any
/// SSRC with a 1024-packet replay window: what a sampled viewer of the load generator
/// decrypts natively (swarm.rs). Held to pylibsrtp by tests/integration/
/// test_swarm_receive.py: the same packets accepted, the same plaintext.
pub struct Receiver {
    cipher: Cipher,
    salt: [u8; 14],
    streams: Vec<RxStream>,
}

impl Receiver {
    pub fn new(key: &[u8], profile: i32) -> Result<Receiver, i32> {
        let Sender { cipher, salt, .. } = Sender::new(key, profile)?;
        Ok(Receiver {
            cipher,
            salt,
            streams: Vec::with_capacity(4),
        })
    }

    /// A stream already known at `index` (its highest extended sequence number so far),
    /// as when a Python viewer's reading goes native midway.
    pub fn seed(&mut self, ssrc: u32, index: u64) {
        let mut stream = RxStream {
            ssrc,
            index,
            seen: [0; (WINDOW as usize) / 64],
        };
        let (w, b) = RxStream::bit(index);
        stream.seen[w] |= b;
        self.streams.retain(|s| s.ssrc != ssrc);
        self.streams.push(stream);
    }

    /// Unprotect the SRTP packet in `buf[..len]` in place; the plaintext's length.
    pub fn unprotect(&mut self, buf: &mut [u8], len: usize) -> Result<usize, i32> {
        let start = payload_start(&buf[..len]).ok_or(ERR_BAD_PARAM)?;
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let pos = self.streams.iter().position(|s| s.ssrc == ssrc);
        let (guess, delta) = match pos {
            // a new SSRC (libsrtp's template): the index is the sequence number
            None => (seq as u64, seq as i64),
            Some(p) => {
                let stream = &self.streams[p];
                let (guess, delta) = estimate(stream.index, seq);
                stream.check(guess, delta)?;
                (guess, delta)
            }
        };
        let roc = (guess >> 16) as u32;
        let n = match &self.cipher {
            Cipher::Gcm(gcm) => {
                if len < start + 16 {
                    return Err(ERR_PARSE);
                }
                let mut iv = [0u8; 12];
                iv[2..6].copy_from_slice(&ssrc.to_be_bytes());
                iv[6..10].copy_from_slice(&roc.to_be_bytes());
                iv[10..12].copy_from_slice(&seq.to_be_bytes());
                for (b, s) in iv.iter_mut().zip(&self.salt[..12]) {
                    *b ^= s;
                }
                let (header, rest) = buf.split_at_mut(start);
                let nonce = Nonce::assume_unique_for_key(iv);
                gcm.open_in_place(nonce, Aad::from(&*header), &mut rest[..len - start])
                    .map_err(|_| ERR_AUTH)?;
                len - 16
            }
            Cipher::Cm { aes, auth } => {
                if len < start + 10 {
                    return Err(ERR_PARSE);
                }
                let end = len - 10;
                let mut mac = auth.as_ref().clone();
                mac.update(&buf[..end]);
                mac.update(&roc.to_be_bytes());
                mac.verify_truncated_left(&buf[end..len])
                    .map_err(|_| ERR_AUTH)?;
                let mut iv = [0u8; 16];
                iv[..14].copy_from_slice(&self.salt);
                for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
                    *b ^= s;
                }
                for (b, s) in iv[8..14].iter_mut().zip(&guess.to_be_bytes()[2..]) {
                    *b ^= s;
                }
                let core = CtrCore::inner_iv_init(aes.as_ref().clone(), &iv.into());
                Ctr::from_core(core).apply_keystream(&mut buf[start..end]);
                end
            }
        };
        match pos {
            Some(p) => self.streams[p].add(guess, delta),
            None => {
                let mut stream = RxStream {
                    ssrc,
                    index: 0,
                    seen: [0; (WINDOW as usize) / 64],
                };
                stream.add(guess, delta);
                self.streams.push(stream);
            }
        }
        Ok(n)
    }
}

/// Where the encrypted part of an RTP packet starts: past CSRCs and the extension
/// block (libsrtp's header checks: None for a header longer than the packet).
pub fn payload_start(p: &[u8]) -> Option<usize> {
    if p.len() < 12 {
        return None;
    }
    let mut start = 12 + 4 * (p[0] & 0x0F) as usize;
    if p[0] & 0x10 != 0 {
        if p.len() < start + 4 {
            return None;
        }
        start += 4 + 4 * u16::from_be_bytes([p[start + 2], p[start + 3]]) as usize;
    }
    (start <= p.len()).then_some(start)
}

/// Outbound SRTP for Python: `protect` as pylibsrtp's `Session.protect` (same bytes, same
/// errors), and the state the fan-out's slots protect with.
#[pyclass(module = "tchat_fastpath")]
pub struct SrtpSender {
    pub inner: Sender,
    buf: Vec<u8>,
}

#[pymethods]
impl SrtpSender {
    /// `key`: master key and salt; `profile`: libsrtp's srtp_profile_t
    /// (AES128_CM_SHA1_80 = 1, AEAD_AES_128_GCM = 7).
    #[new]
    fn new(py: Python<'_>, key: &[u8], profile: i32) -> PyResult<Self> {
        let inner = Sender::new(key, profile).map_err(|rc| srtp_error(py, rc))?;
        Ok(SrtpSender {
            inner,
            buf: vec![0; BUF],
        })
    }

    fn protect<'py>(&mut self, py: Python<'py>, packet: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let inner = &mut self.inner;
        in_place(py, &mut self.buf, packet, BUF - RTP_TRAILER, |b, n| inner.protect(b, n))
    }
}

/// pylibsrtp's calling convention: `packet` (at most `limit` bytes) copied into `buf`,
/// transformed there by `op` (which returns the new length), errors as pylibsrtp.Error.
fn in_place<'py>(
    py: Python<'py>,
    buf: &mut [u8],
    packet: &[u8],
    limit: usize,
    op: impl FnOnce(&mut [u8], usize) -> Result<usize, i32>,
) -> PyResult<Bound<'py, PyBytes>> {
    if packet.len() > limit {
        return Err(PyValueError::new_err("packet is too long"));
    }
    buf[..packet.len()].copy_from_slice(packet);
    let n = op(buf, packet.len()).map_err(|rc| srtp_error(py, rc))?;
    Ok(PyBytes::new(py, &buf[..n]))
}

/// Inbound SRTP for Python: `unprotect` as pylibsrtp's `Session.unprotect` for an inbound
/// session (the differential test's handle on `Receiver`).
#[pyclass(module = "tchat_fastpath")]
pub struct SrtpReceiver {
    pub inner: Receiver,
    buf: Vec<u8>,
}

#[pymethods]
impl SrtpReceiver {
    #[new]
    fn new(py: Python<'_>, key: &[u8], profile: i32) -> PyResult<Self> {
        let inner = Receiver::new(key, profile).map_err(|rc| srtp_error(py, rc))?;
        Ok(SrtpReceiver {
            inner,
            buf: vec![0; BUF],
        })
    }

    fn unprotect<'py>(&mut self, py: Python<'py>, packet: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        let inner = &mut self.inner;
        in_place(py, &mut self.buf, packet, BUF, |b, n| inner.unprotect(b, n))
    }
}
