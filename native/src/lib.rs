//! tchat's native SFU fast path (docs/sfu.md, "The native fan-out"): the per-packet
//! fan-out with SRTP (ring's and RustCrypto's ciphers) and sendmmsg; and the load
//! generator's receive path (`Swarm`: epoll and recvmmsg). Optional:
//! `tchat.sfu.fastpath` falls back to the Python path, which stays the reference
//! (tests/integration/test_fastpath_diff.py compares the two).

use pyo3::prelude::*;

mod fanout;
mod net;
mod srtp;
mod swarm;

#[pymodule]
fn tchat_fastpath(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<srtp::SrtpSender>()?;
    m.add_class::<srtp::SrtpReceiver>()?;
    m.add_class::<fanout::TwccRing>()?;
    m.add_class::<fanout::Slot>()?;
    m.add_class::<fanout::Fanout>()?;
    m.add_class::<swarm::Swarm>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
