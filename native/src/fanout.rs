//! The per-packet fan-out (`Track.forward`'s loop over viewers) in one call: for every
//! viewer on the packet's layer, rewrite SSRC/PT/sequence/timestamp (and the
//! transport-wide sequence for adaptive viewers), SRTP-protect with the viewer's own
//! context, and hand all the datagrams to the kernel with one sendmmsg.
//!
//! Decisions stay in Python (sfu/forwarder.py): which layer a viewer is on, the re-base
//! at a switch, padding, NACK answers. They read and write a viewer's `Slot` through
//! the same attribute names a Python `DownTrack` has.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::net::{Batch, SockAddr};
use crate::srtp::{SrtpSender, BUF, RTP_TRAILER};

/// Datagrams per sendmmsg: the buffer they wait in is a fixed 128 KiB per track (no
/// memory per viewer), and a chunk's syscall amortises well past this many.
const CHUNK: usize = 64;
/// The longest header extension block a slot takes (ours: TWCC + playout delay, 12).
const MAX_EXT: usize = 64;

/// One viewer's transport-wide sequence numbers and what was sent under each (shared
/// by all its tracks); Python's `TwccSender` with the same `seq`, `note`, `lookup`.
#[pyclass(module = "tchat_fastpath")]
pub struct TwccRing {
    #[pyo3(get, set)]
    seq: u32,
    ring: Vec<(i32, f64, u32)>,
}

impl TwccRing {
    fn next(&mut self) -> u16 {
        let s = self.seq as u16;
        self.seq = (self.seq + 1) & 0xFFFF;
        s
    }
    fn put(&mut self, seq: u16, now: f64, size: u32) {
        let slot = seq as usize & (self.ring.len() - 1);
        self.ring[slot] = (seq as i32, now, size);
    }
}

#[pymethods]
impl TwccRing {
    #[new]
    #[pyo3(signature = (size = 4096))]
    fn new(size: usize) -> PyResult<Self> {
        if !size.is_power_of_two() {
            return Err(PyValueError::new_err("ring size must be a power of two"));
        }
        Ok(TwccRing { seq: 0, ring: vec![(-1, 0.0, 0); size] })
    }

    fn note(&mut self, seq: u32, now: f64, size: u32) {
        self.put(seq as u16, now, size);
    }

    /// (send time, size) of transport-wide sequence number `seq`, if still known.
    fn lookup(&self, seq: u32) -> Option<(f64, u32)> {
        let (s, t, n) = self.ring[seq as usize & (self.ring.len() - 1)];
        (s == seq as i32).then_some((t, n))
    }
}

/// One viewer's outbound stream of one track: the rewrite state `DownTrack` keeps in
/// Python, its SRTP context, and where its datagrams go.
#[pyclass(module = "tchat_fastpath")]
pub struct Slot {
    #[pyo3(get, set)]
    current: i32,
    #[pyo3(get, set)]
    target: i32,
    #[pyo3(get, set)]
    seq_offset: u32,
    #[pyo3(get, set)]
    ts_offset: u32,
    #[pyo3(get, set)]
    last_seq: u32,
    #[pyo3(get, set)]
    last_ts: u32,
    #[pyo3(get, set)]
    last_time: f64,
    #[pyo3(get, set)]
    packets: u64,
    #[pyo3(get, set)]
    octets: u64,
    #[pyo3(get, set)]
    frames: u64,
    #[pyo3(get, set)]
    ssrc: u32,
    #[pyo3(get, set)]
    pt: u32,
    session: Py<SrtpSender>,
    tw: Option<Py<TwccRing>>,
    ext: Vec<u8>, // the header extension block; the TWCC number goes at [5..7]
    fd: i32,
    addr: Option<SockAddr>,
    sender: Option<PyObject>,
}

#[pymethods]
impl Slot {
    #[new]
    fn new(session: Py<SrtpSender>, ssrc: u32, pt: u32) -> Self {
        Slot {
            current: -1,
            target: -1,
            seq_offset: 0,
            ts_offset: 0,
            last_seq: 0,
            last_ts: 0,
            last_time: -1.0,
            packets: 0,
            octets: 0,
            frames: 0,
            ssrc,
            pt,
            session,
            tw: None,
            ext: Vec::new(),
            fd: -1,
            addr: None,
            sender: None,
        }
    }

    /// Stamp transport-wide numbers from `tw`; `ext` is the whole extension block (0xBEDE,
    /// length, the TWCC element with its number zeroed, the rest padded to words).
    fn set_twcc(&mut self, tw: Py<TwccRing>, ext: &[u8]) -> PyResult<()> {
        if ext.len() < 8 || ext.len() > MAX_EXT || !ext.len().is_multiple_of(4) || ext[..2] != [0xBE, 0xDE] {
            return Err(PyValueError::new_err("not a one-byte header extension block"));
        }
        self.tw = Some(tw);
        self.ext = ext.to_vec();
        Ok(())
    }

    /// Where datagrams go: by sendmmsg on `fd` to `addr` ((host, port, ...), as asyncio
    /// gives it) when both are given, else through `sender(datagram)` (a TCP link;
    /// in-memory tests), else nowhere.
    #[pyo3(signature = (fd, addr, sender))]
    fn route(
        &mut self,
        fd: i32,
        addr: Option<&Bound<'_, PyTuple>>,
        sender: Option<PyObject>,
    ) -> PyResult<()> {
        self.addr = match (fd >= 0, addr) {
            (true, Some(a)) => {
                let host: String = a.get_item(0)?.extract()?;
                Some(SockAddr::parse(&host, a.get_item(1)?.extract()?)?)
            }
            _ => None,
        };
        self.fd = if self.addr.is_some() { fd } else { -1 };
        self.sender = if self.addr.is_some() { None } else { sender };
        Ok(())
    }
}

/// The viewers of one track, forwarded to in one call per packet.
#[pyclass(module = "tchat_fastpath")]
pub struct Fanout {
    slots: Vec<Py<Slot>>,
    buf: Vec<u8>,
    batch: Batch,
    fallback: Vec<(Py<Slot>, Vec<u8>)>,
    #[pyo3(get)]
    datagrams: u64,
    #[pyo3(get)]
    send_errors: u64,
    #[pyo3(get)]
    syscalls: u64,
    #[pyo3(get)]
    protect_errors: u64,
}

#[pymethods]
impl Fanout {
    #[new]
    fn new() -> Self {
        Fanout {
            slots: Vec::new(),
            buf: vec![0; CHUNK * BUF],
            batch: Batch::default(),
            fallback: Vec::new(),
            datagrams: 0,
            send_errors: 0,
            syscalls: 0,
            protect_errors: 0,
        }
    }

    fn add(&mut self, slot: Py<Slot>) {
        if !self.slots.iter().any(|s| s.is(&slot)) {
            self.slots.push(slot);
        }
    }

    fn remove(&mut self, slot: Py<Slot>) {
        self.slots.retain(|s| !s.is(&slot));
    }

    fn __len__(&self) -> usize {
        self.slots.len()
    }

    /// Viewers waiting to switch to layer `index` (their target, not yet current): the
    /// caller re-bases them if this packet starts a keyframe, before `forward`.
    fn waiting(&self, py: Python<'_>, index: i32) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                let s = s.borrow(py);
                s.target == index && s.current != index
            })
            .count()
    }

    /// Forward one packet of layer `index` to every viewer on it; returns packets sent.
    /// A viewer whose SRTP stream refuses the packet is skipped and counted.
    /// `marker` is 0x80 or 0; `payload` the RTP payload (header, extensions, padding off).
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        py: Python<'_>,
        index: i32,
        marker: u8,
        seq: u32,
        ts: u32,
        payload: &[u8],
        now: f64,
    ) -> PyResult<u32> {
        if 12 + MAX_EXT + payload.len() + RTP_TRAILER > BUF {
            // refused before any viewer's state moves (real RTP is far smaller: ≤ MTU)
            return Err(PyValueError::new_err("packet is too long"));
        }
        let mut sent = 0u32;
        let mut fd = -1;
        let mut used = 0; // datagrams waiting in `buf`
        for k in 0..self.slots.len() {
            let slot = self.slots[k].bind(py);
            let mut s = slot.borrow_mut();
            if s.current != index {
                continue;
            }
            let out = &mut self.buf[used * BUF..(used + 1) * BUF];
            let len = write_packet(py, &mut s, out, marker, seq, ts, payload, now);
            let protected = s.session.borrow_mut(py).inner.protect(out, len);
            let Ok(len) = protected else {
                self.protect_errors += 1; // this viewer's stream refuses it: skip it
                continue;
            };
            let out_seq = (seq + s.seq_offset) & 0xFFFF;
            if (out_seq.wrapping_sub(s.last_seq) & 0xFFFF) < 0x8000 {
                s.last_seq = out_seq;
                s.last_ts = ts.wrapping_add(s.ts_offset);
                s.last_time = now;
            }
            s.packets += 1;
            s.octets += payload.len() as u64;
            if marker != 0 {
                s.frames += 1;
            }
            sent += 1;
            match s.addr {
                Some(addr) if s.fd == fd || used == 0 => {
                    fd = s.fd;
                    self.batch.push(used * BUF, len, addr);
                    used += 1;
                }
                Some(addr) => {
                    // another socket: what is queued goes first, this one starts a batch
                    let datagram = self.buf[used * BUF..used * BUF + len].to_vec();
                    self.flush(fd);
                    self.buf[..len].copy_from_slice(&datagram);
                    fd = s.fd;
                    self.batch.push(0, len, addr);
                    used = 1;
                }
                None if s.sender.is_some() => {
                    let datagram = self.buf[used * BUF..used * BUF + len].to_vec();
                    self.fallback.push((self.slots[k].clone_ref(py), datagram));
                }
                None => {}
            }
            if used == CHUNK {
                self.flush(fd);
                used = 0;
            }
        }
        if used > 0 {
            self.flush(fd);
        }
        // senders run last, with no slot borrowed: they are Python and may look at any
        for (slot, datagram) in std::mem::take(&mut self.fallback) {
            let sender = slot.borrow(py).sender.as_ref().map(|f| f.clone_ref(py));
            if let Some(f) = sender {
                f.call1(py, (PyBytes::new(py, &datagram),))?;
            }
        }
        Ok(sent)
    }
}

impl Fanout {
    fn flush(&mut self, fd: i32) {
        let r = self.batch.send(fd, &mut self.buf);
        self.datagrams += r.datagrams;
        self.send_errors += r.errors;
        self.syscalls += r.calls;
    }
}

/// The viewer's copy of the packet, plain, into `out` (room checked by the caller);
/// its length.
#[allow(clippy::too_many_arguments)]
fn write_packet(
    py: Python<'_>,
    s: &mut Slot,
    out: &mut [u8],
    marker: u8,
    seq: u32,
    ts: u32,
    payload: &[u8],
    now: f64,
) -> usize {
    let head = 12 + if s.tw.is_some() { s.ext.len() } else { 0 };
    let len = head + payload.len();
    out[1] = marker | (s.pt as u8 & 0x7F);
    out[2..4].copy_from_slice(&(((seq + s.seq_offset) & 0xFFFF) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&ts.wrapping_add(s.ts_offset).to_be_bytes());
    out[8..12].copy_from_slice(&s.ssrc.to_be_bytes());
    match &s.tw {
        None => out[0] = 0x80,
        Some(tw) => {
            out[0] = 0x90;
            let mut tw = tw.borrow_mut(py);
            let number = tw.next();
            out[12..head].copy_from_slice(&s.ext);
            out[17..19].copy_from_slice(&number.to_be_bytes());
            tw.put(number, now, len as u32);
        }
    }
    out[head..len].copy_from_slice(payload);
    len
}
