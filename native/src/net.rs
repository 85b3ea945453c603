//! Socket addresses from Python's (host, port) and batched sends with sendmmsg(2).

use std::mem;
use std::net::{IpAddr, SocketAddr};

use pyo3::exceptions::PyValueError;
use pyo3::PyResult;

#[derive(Clone, Copy)]
pub struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    pub fn parse(host: &str, port: u16) -> PyResult<SockAddr> {
        let ip: IpAddr = host
            .parse()
            .map_err(|_| PyValueError::new_err(format!("not an IP address: {host:?}")))?;
        Ok(SockAddr::from(SocketAddr::new(ip, port)))
    }
}

impl From<SocketAddr> for SockAddr {
    fn from(addr: SocketAddr) -> SockAddr {
        // SAFETY: all-zero is a valid sockaddr_storage
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in
                unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
                mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo().to_be(),
                    sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                    sin6_scope_id: a.scope_id(),
                };
                // SAFETY: as above, for sockaddr_in6
                unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
                mem::size_of::<libc::sockaddr_in6>()
            }
        };
        SockAddr { storage, len: len as libc::socklen_t }
    }
}

/// Datagrams waiting for one sendmmsg: (offset in the caller's buffer, length, where).
#[derive(Default)]
pub struct Batch {
    items: Vec<(usize, usize, SockAddr)>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the iovec and header pointers are scratch, rebuilt by every `send` from live
// data and unused after it returns; every use holds the GIL.
unsafe impl Send for Batch {}
unsafe impl Sync for Batch {}

/// What sending a batch did.
#[derive(Default, Clone, Copy)]
pub struct Sent {
    pub datagrams: u64,
    pub errors: u64,
    pub calls: u64,
}

impl Batch {
    pub fn push(&mut self, offset: usize, len: usize, addr: SockAddr) {
        self.items.push((offset, len, addr));
    }

    /// Send every datagram by `fd`, from `buf`; a datagram the kernel refuses (a full
    /// buffer, ICMP unreachable reported on the socket) is counted and skipped, as the
    /// Python path's asyncio transport drops it.
    pub fn send(&mut self, fd: i32, buf: &mut [u8]) -> Sent {
        let mut sent = Sent::default();
        let n = self.items.len();
        self.iovecs.clear();
        self.headers.clear();
        for (offset, len, _) in &self.items {
            self.iovecs.push(libc::iovec {
                iov_base: buf[*offset..].as_mut_ptr() as *mut libc::c_void,
                iov_len: *len,
            });
        }
        for (i, (_, _, addr)) in self.items.iter_mut().enumerate() {
            // SAFETY: all-zero is a valid mmsghdr; the pointers set stay valid until the
            // call below returns (items and iovecs are not touched meanwhile)
            let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
            h.msg_hdr.msg_name = &mut addr.storage as *mut _ as *mut libc::c_void;
            h.msg_hdr.msg_namelen = addr.len;
            h.msg_hdr.msg_iov = &mut self.iovecs[i] as *mut libc::iovec;
            h.msg_hdr.msg_iovlen = 1;
            self.headers.push(h);
        }
        let mut done = 0;
        while done < n {
            let rest = (n - done).min(1024) as libc::c_uint; // UIO_MAXIOV per call
            // SAFETY: headers[done..] point into live buffers, iovecs and addresses
            let rc = unsafe {
                libc::sendmmsg(fd, self.headers[done..].as_mut_ptr(), rest, libc::MSG_DONTWAIT)
            };
            sent.calls += 1;
            if rc > 0 {
                done += rc as usize;
                sent.datagrams += rc as u64;
            } else {
                let err = std::io::Error::last_os_error();
                match err.kind() {
                    std::io::ErrorKind::Interrupted => continue,
                    std::io::ErrorKind::WouldBlock => {
                        // the socket's buffer is full: the rest would fail alike
                        sent.errors += (n - done) as u64;
                        break;
                    }
                    _ => {
                        // this datagram's destination failed (unreachable, filtered)
                        sent.errors += 1;
                        done += 1;
                    }
                }
            }
        }
        self.items.clear();
        sent
    }
}
