//! The load generator's receive path (tchat.perf.sfu_load): many viewers' sockets read
//! by one native thread with epoll and recvmmsg, counting what `ClientPeer._rtp` counts:
//! for every viewer packets, octets and the extended highest sequence number per SSRC,
//! and RTCP datagrams; for a sampled viewer also SRTP decryption (srtp.rs `Receiver`),
//! padding, payloads checked against the publisher's, sequence gaps and reordering, and
//! whether its video started on a keyframe. A viewer's socket is handed over once its
//! ICE and DTLS are done in Python, which keeps sending (receiver reports, consent
//! checks) and reads the figures back (`stats`).
//!
//! The thread never touches Python objects: it runs without the GIL, beside the event
//! loop, and one mutex guards the figures (held while one socket is read, and by
//! `stats`; a socket is only closed after `remove`, under it).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::srtp::{payload_start, srtp_error, Receiver};

/// Datagrams per recvmmsg, each into its own slot of a fixed buffer.
const BATCH: usize = 64;
const SLOT: usize = 2048; // > any datagram on a 1500-byte path
const WAIT_MS: i32 = 50; // how soon the thread sees `close`

/// What one viewer saw of one SSRC (Python's `StreamStats`).
#[derive(Clone, Copy)]
struct Stream {
    first_seq: i64,
    max_ext: i64,
    received: u64,
    octets: u64,
    gaps: u64,
    reordered: u64,
    bad_payloads: u64,
    payloads: u64,
    keyframe_first: i8, // -1: not known yet, 0 / 1
}

/// (ssrc, first_seq, max_ext_seq, received, octets, gaps, reordered, bad_payloads,
/// payloads, keyframe_first: -1 unknown, 0, 1): a stream's figures to and from Python.
pub type StreamRow = (u32, i64, i64, u64, u64, u64, u64, u64, u64, i8);

impl Stream {
    fn new() -> Stream {
        Stream {
            first_seq: -1,
            max_ext: -1,
            received: 0,
            octets: 0,
            gaps: 0,
            reordered: 0,
            bad_payloads: 0,
            payloads: 0,
            keyframe_first: -1,
        }
    }

    fn from_row(r: StreamRow) -> Stream {
        let (_, first_seq, max_ext, received, octets, gaps, reordered, bad, payloads, kf) = r;
        Stream {
            first_seq,
            max_ext,
            received,
            octets,
            gaps,
            reordered,
            bad_payloads: bad,
            payloads,
            keyframe_first: kf,
        }
    }

    fn row(&self, ssrc: u32) -> StreamRow {
        (
            ssrc,
            self.first_seq,
            self.max_ext,
            self.received,
            self.octets,
            self.gaps,
            self.reordered,
            self.bad_payloads,
            self.payloads,
            self.keyframe_first,
        )
    }

    /// The extended sequence number of `seq` (nearest to the highest seen on the 16-bit
    /// circle), counting the packet, as ClientPeer._rtp does before anything else.
    fn arrive(&mut self, seq: u16, size: usize) -> i64 {
        let ext = if self.first_seq < 0 {
            self.first_seq = seq as i64;
            self.max_ext = seq as i64;
            seq as i64
        } else {
            let delta = seq.wrapping_sub(self.max_ext as u16) as i64;
            if delta < 0x8000 {
                self.max_ext + delta
            } else {
                self.max_ext + delta - 0x10000
            }
        };
        self.received += 1;
        self.octets += size as u64;
        ext
    }
}

/// RFC 6184: the payload starts an H.264 IDR access unit (SPS, or an IDR slice's start);
/// tchat.sfu.rtp.h264_keyframe_start.
fn h264_keyframe_start(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    match first & 0x1F {
        5 | 7 => true,
        24 => {
            let mut pos = 1;
            while pos + 2 < p.len() {
                if matches!(p[pos + 2] & 0x1F, 5 | 7) {
                    return true;
                }
                pos += 2 + u16::from_be_bytes([p[pos], p[pos + 1]]) as usize;
            }
            false
        }
        28 => p.len() > 1 && p[1] & 0x80 != 0 && p[1] & 0x1F == 5,
        _ => false,
    }
}

/// (start, end) of an RTP packet's payload, without padding: tchat.sfu.rtp.payload_bounds.
fn payload_bounds(d: &[u8]) -> Option<(usize, usize)> {
    let start = payload_start(d)?;
    let mut end = d.len();
    if d[0] & 0x20 != 0 {
        end = end.checked_sub(d[d.len() - 1] as usize)?;
    }
    (start <= end).then_some((start, end))
}

fn payload_hash(p: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    p.hash(&mut h);
    h.finish()
}

// the synthetic publisher's Opus payload type: its packets are not video
const AUDIO_PT: u8 = 111;

/// A sampled viewer: it decrypts, as the Python one does with pylibsrtp.
struct Sampled {
    rx: Receiver,
    buf: Vec<u8>,
    decrypt_errors: u64,
    padding: u64,
}

#[derive(Default)]
struct Viewer {
    fd: i32,
    streams: HashMap<u32, Stream>,
    rtcp: u64,
    other: u64, // STUN answers to its consent checks, DTLS: not counted by Python either
    sampled: Option<Box<Sampled>>,
}

impl Viewer {
    fn datagram(&mut self, d: &[u8], known: Option<&HashSet<u64>>) {
        // as ClientPeer.datagram_received: RTP/RTCP by the first byte, RTCP by the
        // packet types 192-223 (RFC 5761), RTP counted from 12 bytes on
        if d.len() < 2 || !(128..=191).contains(&d[0]) {
            self.other += 1;
        } else if (192..=223).contains(&d[1]) {
            self.rtcp += 1;
        } else if d.len() < 12 {
            self.other += 1;
        } else {
            let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
            let seq = u16::from_be_bytes([d[2], d[3]]);
            let stream = self.streams.entry(ssrc).or_insert_with(Stream::new);
            let ext = stream.arrive(seq, d.len());
            let readable = match self.sampled.as_deref_mut() {
                Some(sampled) => sampled.check(stream, d, ext, known),
                None => true,
            };
            if readable {
                stream.max_ext = stream.max_ext.max(ext);
            }
        }
    }
}

impl Sampled {
    /// ClientPeer._rtp's decrypting branch; false if the packet could not be read (then,
    /// as in Python, it does not move the stream's highest sequence number).
    fn check(&mut self, s: &mut Stream, d: &[u8], ext: i64, known: Option<&HashSet<u64>>) -> bool {
        let size = d.len();
        self.buf[..size].copy_from_slice(d);
        let Ok(n) = self.rx.unprotect(&mut self.buf, size) else {
            self.decrypt_errors += 1;
            return false;
        };
        let plain = &self.buf[..n];
        let Some((start, end)) = payload_bounds(plain) else {
            self.decrypt_errors += 1;
            return false;
        };
        let payload = &plain[start..end];
        if payload.is_empty() {
            s.octets -= size as u64; // padding only (a bandwidth probe): not media
            self.padding += 1;
            return true;
        }
        s.payloads += 1;
        if known.is_some_and(|k| !k.contains(&payload_hash(payload))) {
            s.bad_payloads += 1;
        }
        if s.keyframe_first < 0 && plain[1] & 0x7F != AUDIO_PT {
            s.keyframe_first = h264_keyframe_start(payload) as i8;
        }
        if s.received > 1 {
            if ext > s.max_ext + 1 {
                s.gaps += 1;
            } else if ext <= s.max_ext {
                s.reordered += 1;
            }
        }
        true
    }
}

#[derive(Default)]
struct State {
    viewers: HashMap<u64, Viewer>,
    known: Option<HashSet<u64>>, // hashes of every payload the publisher sends (`know`)
}

struct Shared {
    epfd: i32,
    stop: AtomicBool,
    state: Mutex<State>,
    datagrams: AtomicU64,
    calls: AtomicU64,
    errors: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // a panic in the thread leaves figures that are still counts: use them
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads the sockets of many viewers in one native thread.
#[pyclass(module = "tchat_fastpath")]
pub struct Swarm {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    next: u64,
}

fn os_error(what: &str) -> PyErr {
    PyOSError::new_err(format!("{what}: {}", std::io::Error::last_os_error()))
}

fn run(shared: Arc<Shared>) {
    let mut buf = vec![0u8; BATCH * SLOT];
    let mut events: Vec<libc::epoll_event> = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(BATCH);
    // SAFETY: all-zero is a valid mmsghdr
    let mut headers: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    for i in 0..BATCH {
        iovecs.push(libc::iovec {
            iov_base: buf[i * SLOT..].as_mut_ptr() as *mut libc::c_void,
            iov_len: SLOT,
        });
    }
    for (h, iov) in headers.iter_mut().zip(iovecs.iter_mut()) {
        h.msg_hdr.msg_iov = iov as *mut libc::iovec;
        h.msg_hdr.msg_iovlen = 1;
    }
    while !shared.stop.load(Ordering::Relaxed) {
        // SAFETY: events has room for its length; epfd lives until this thread is joined
        let n = unsafe {
            libc::epoll_wait(
                shared.epfd,
                events.as_mut_ptr(),
                events.len() as i32,
                WAIT_MS,
            )
        };
        if n <= 0 {
            continue; // timeout, or EINTR
        }
        for ev in &events[..n as usize] {
            let key = ev.u64; // a copy: epoll_event is packed
            // the lock per socket, not per wake-up: Python's `stats` (each viewer's receiver
            // report) waits for one socket's datagrams at most
            let mut state = shared.lock();
            let State { viewers, known } = &mut *state;
            let Some(viewer) = viewers.get_mut(&key) else {
                continue;
            };
            loop {
                // SAFETY: headers point at iovecs into buf, all alive for this thread's life;
                // the fd stays open while registered (remove() takes the lock first)
                let got = unsafe {
                    libc::recvmmsg(
                        viewer.fd,
                        headers.as_mut_ptr(),
                        BATCH as u32,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                shared.calls.fetch_add(1, Ordering::Relaxed);
                if got <= 0 {
                    let err = std::io::Error::last_os_error();
                    if got < 0 && err.kind() != std::io::ErrorKind::WouldBlock {
                        shared.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                for (i, h) in headers[..got as usize].iter().enumerate() {
                    let len = (h.msg_len as usize).min(SLOT);
                    viewer.datagram(&buf[i * SLOT..i * SLOT + len], known.as_ref());
                }
                shared.datagrams.fetch_add(got as u64, Ordering::Relaxed);
                if (got as usize) < BATCH {
                    break; // drained
                }
            }
        }
    }
}

/// A viewer's figures: its streams, RTCP datagrams, and for a sampled one its decrypt
/// errors and padding-only packets (0 otherwise).
type Figures = (Vec<StreamRow>, u64, u64, u64);

impl Viewer {
    fn figures(&self) -> Figures {
        let rows = self.streams.iter().map(|(ssrc, s)| s.row(*ssrc)).collect();
        let (errors, padding) = self
            .sampled
            .as_ref()
            .map_or((0, 0), |s| (s.decrypt_errors, s.padding));
        (rows, self.rtcp, errors, padding)
    }
}

#[pymethods]
impl Swarm {
    #[new]
    fn new() -> PyResult<Self> {
        // SAFETY: plain syscall
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(os_error("epoll_create1"));
        }
        let shared = Arc::new(Shared {
            epfd,
            stop: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            datagrams: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("tchat-swarm-rx".into())
            .spawn(move || run(worker))
            .map_err(|e| PyOSError::new_err(format!("swarm thread: {e}")))?;
        Ok(Swarm {
            shared,
            thread: Some(thread),
            next: 0,
        })
    }

    /// The payloads the publisher sends: a sampled viewer counts any other as bad.
    fn know(&self, py: Python<'_>, payloads: Vec<Vec<u8>>) {
        let set: HashSet<u64> = payloads.iter().map(|p| payload_hash(p)).collect();
        let shared = &self.shared;
        py.allow_threads(|| shared.lock().known = Some(set));
    }

    /// Read `fd` (a non-blocking UDP socket the caller keeps open until `remove`) from
    /// now on, continuing the figures Python counted so far (`streams` as StreamRow,
    /// `rtcp` datagrams). `sampled`: (SRTP key and salt, libsrtp profile, decrypt errors,
    /// padding packets so far) to decrypt and check as a sampled viewer does; each
    /// stream's SRTP index goes on from its highest sequence number. Returns its key.
    #[pyo3(signature = (fd, streams, rtcp, sampled = None))]
    fn add(
        &mut self,
        py: Python<'_>,
        fd: i32,
        streams: Vec<StreamRow>,
        rtcp: u64,
        sampled: Option<(Vec<u8>, i32, u64, u64)>,
    ) -> PyResult<u64> {
        if fd < 0 || self.thread.is_none() {
            return Err(PyValueError::new_err(
                "a closed swarm, or not a file descriptor",
            ));
        }
        let mut viewer = Viewer {
            fd,
            rtcp,
            ..Default::default()
        };
        for row in streams {
            viewer.streams.insert(row.0, Stream::from_row(row));
        }
        if let Some((key, profile, decrypt_errors, padding)) = sampled {
            let mut rx = Receiver::new(&key, profile).map_err(|rc| srtp_error(py, rc))?;
            for (ssrc, s) in &viewer.streams {
                if s.max_ext >= 0 {
                    rx.seed(*ssrc, s.max_ext as u64);
                }
            }
            let buf = vec![0; SLOT];
            viewer.sampled = Some(Box::new(Sampled {
                rx,
                buf,
                decrypt_errors,
                padding,
            }));
        }
        let key = self.next;
        self.next += 1;
        let shared = &self.shared;
        py.allow_threads(|| shared.lock().viewers.insert(key, viewer));
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: key,
        };
        // SAFETY: plain syscall on descriptors we were given
        if unsafe { libc::epoll_ctl(self.shared.epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            let err = os_error("epoll_ctl add");
            py.allow_threads(|| shared.lock().viewers.remove(&key));
            return Err(err);
        }
        Ok(key)
    }

    /// The figures of viewer `key`: ([StreamRow], rtcp datagrams, decrypt errors,
    /// padding-only packets).
    fn stats(&self, py: Python<'_>, key: u64) -> PyResult<Figures> {
        let shared = &self.shared;
        py.allow_threads(|| {
            let state = shared.lock();
            let v = state.viewers.get(&key);
            v.map(Viewer::figures)
                .ok_or_else(|| PyValueError::new_err(format!("no viewer {key}")))
        })
    }

    /// Stop reading viewer `key` (before its socket closes); returns its last figures.
    fn remove(&mut self, py: Python<'_>, key: u64) -> PyResult<Figures> {
        let shared = &self.shared;
        py.allow_threads(|| {
            // under the lock: the thread is not inside a read of this fd
            let mut state = shared.lock();
            let v = state.viewers.remove(&key);
            let v = v.ok_or_else(|| PyValueError::new_err(format!("no viewer {key}")))?;
            // SAFETY: plain syscall; the fd is still open (the caller closes it after)
            unsafe {
                libc::epoll_ctl(shared.epfd, libc::EPOLL_CTL_DEL, v.fd, std::ptr::null_mut())
            };
            Ok(v.figures())
        })
    }

    /// (datagrams read, recvmmsg calls, read errors) over all viewers so far.
    fn counters(&self) -> (u64, u64, u64) {
        let s = &self.shared;
        (
            s.datagrams.load(Ordering::Relaxed),
            s.calls.load(Ordering::Relaxed),
            s.errors.load(Ordering::Relaxed),
        )
    }

    fn __len__(&self) -> usize {
        self.shared.lock().viewers.len()
    }

    /// Stop the thread (the viewers' sockets are the caller's to close).
    fn close(&mut self, py: Python<'_>) {
        if let Some(thread) = self.thread.take() {
            self.shared.stop.store(true, Ordering::Relaxed);
            py.allow_threads(|| {
                let _ = thread.join();
            });
            // SAFETY: the thread that used it has ended
            unsafe { libc::close(self.shared.epfd) };
        }
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shared.stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
            // SAFETY: as in close
            unsafe { libc::close(self.shared.epfd) };
        }
    }
}
