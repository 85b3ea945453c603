//! The load generator's receive path (tchat.perf.sfu_load): many viewers' sockets read
//! by one native thread with epoll and recvmmsg, counting what a bulk viewer counts in
//! Python (`ClientPeer._rtp` without decrypting: packets, octets and the extended
//! highest sequence number per SSRC; RTCP datagrams). A viewer's socket is handed over
//! once its ICE and DTLS are done in Python, which keeps sending (receiver reports,
//! consent checks) and reads the figures back (`stats`).
//!
//! The thread never touches Python objects: it runs without the GIL, beside the event
//! loop, and one mutex guards the figures (held per batch of datagrams, and by `stats`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

/// Datagrams per recvmmsg, each into its own slot of a fixed buffer.
const BATCH: usize = 64;
const SLOT: usize = 2048; // > any datagram on a 1500-byte path
const WAIT_MS: i32 = 50; // how soon the thread sees `close`

/// What one viewer saw of one SSRC (Python's `StreamStats` fields it keeps).
#[derive(Clone, Copy, Default)]
struct Stream {
    first_seq: i64,
    max_ext: i64,
    received: u64,
    octets: u64,
}

impl Stream {
    fn rtp(&mut self, seq: u16, size: usize) {
        if self.first_seq < 0 {
            self.first_seq = seq as i64;
            self.max_ext = seq as i64;
        } else {
            // nearest to the highest seen on the 16-bit circle, as ClientPeer._rtp
            let delta = (seq.wrapping_sub(self.max_ext as u16)) as i64;
            let ext = if delta < 0x8000 {
                self.max_ext + delta
            } else {
                self.max_ext + delta - 0x10000
            };
            self.max_ext = self.max_ext.max(ext);
        }
        self.received += 1;
        self.octets += size as u64;
    }
}

#[derive(Default)]
struct Viewer {
    fd: i32,
    streams: HashMap<u32, Stream>,
    rtcp: u64,
    other: u64, // STUN answers to its consent checks, DTLS: not counted by Python either
}

impl Viewer {
    fn datagram(&mut self, d: &[u8]) {
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
            let fresh = Stream {
                first_seq: -1,
                ..Default::default()
            };
            self.streams.entry(ssrc).or_insert(fresh).rtp(seq, d.len());
        }
    }
}

struct Shared {
    epfd: i32,
    stop: AtomicBool,
    viewers: Mutex<HashMap<u64, Viewer>>,
    datagrams: AtomicU64,
    calls: AtomicU64,
    errors: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Viewer>> {
        // a panic in the thread leaves figures that are still counts: use them
        self.viewers.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut viewers = shared.lock();
        for ev in &events[..n as usize] {
            let key = ev.u64;
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
                    viewer.datagram(&buf[i * SLOT..i * SLOT + len]);
                }
                shared.datagrams.fetch_add(got as u64, Ordering::Relaxed);
                if (got as usize) < BATCH {
                    break; // drained
                }
            }
        }
    }
}

type StreamRow = (u32, i64, i64, u64, u64);

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
            viewers: Mutex::new(HashMap::new()),
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

    /// Read `fd` (a non-blocking UDP socket the caller keeps open until `remove`) from
    /// now on, continuing the figures Python counted so far: `streams` as (ssrc,
    /// first_seq, max_ext_seq, received, octets), `rtcp` datagrams. Returns its key.
    fn add(
        &mut self,
        py: Python<'_>,
        fd: i32,
        streams: Vec<StreamRow>,
        rtcp: u64,
    ) -> PyResult<u64> {
        if fd < 0 || self.thread.is_none() {
            return Err(PyValueError::new_err(
                "a closed swarm, or not a file descriptor",
            ));
        }
        let key = self.next;
        self.next += 1;
        let mut viewer = Viewer {
            fd,
            rtcp,
            ..Default::default()
        };
        for (ssrc, first_seq, max_ext, received, octets) in streams {
            viewer.streams.insert(
                ssrc,
                Stream {
                    first_seq,
                    max_ext,
                    received,
                    octets,
                },
            );
        }
        let shared = &self.shared;
        py.allow_threads(|| shared.lock().insert(key, viewer));
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: key,
        };
        // SAFETY: plain syscall on descriptors we were given
        if unsafe { libc::epoll_ctl(self.shared.epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            let err = os_error("epoll_ctl add");
            py.allow_threads(|| shared.lock().remove(&key));
            return Err(err);
        }
        Ok(key)
    }

    /// The figures of viewer `key`: ([(ssrc, first_seq, max_ext_seq, received, octets)],
    /// rtcp datagrams).
    fn stats(&self, py: Python<'_>, key: u64) -> PyResult<(Vec<StreamRow>, u64)> {
        let shared = &self.shared;
        py.allow_threads(|| {
            let viewers = shared.lock();
            let v = viewers
                .get(&key)
                .ok_or_else(|| PyValueError::new_err(format!("no viewer {key}")))?;
            let rows = v
                .streams
                .iter()
                .map(|(s, st)| (*s, st.first_seq, st.max_ext, st.received, st.octets))
                .collect();
            Ok((rows, v.rtcp))
        })
    }

    /// Stop reading viewer `key` (before its socket closes); returns its last figures.
    fn remove(&mut self, py: Python<'_>, key: u64) -> PyResult<(Vec<StreamRow>, u64)> {
        let out = self.stats(py, key)?;
        let shared = &self.shared;
        py.allow_threads(|| {
            // under the lock: the thread is not inside a read of this fd
            let mut viewers = shared.lock();
            if let Some(v) = viewers.remove(&key) {
                // SAFETY: plain syscall; the fd is still open (the caller closes it after)
                unsafe {
                    libc::epoll_ctl(shared.epfd, libc::EPOLL_CTL_DEL, v.fd, std::ptr::null_mut())
                };
            }
        });
        Ok(out)
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
        self.shared.lock().len()
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
