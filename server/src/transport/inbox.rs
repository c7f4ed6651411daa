//! A UDP reader's receive buffers, filled by `recvmmsg`: one call takes every datagram queued, up
//! to `BATCH`, and tells that nothing more was queued without a second call that finds nothing.

use socket2::{SockAddr, SockAddrStorage, Socket};
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// Datagrams asked of the kernel per call.
const BATCH: usize = 8;
/// The largest UDP payload.
const DATAGRAM: usize = 65_535;

pub struct Inbox {
    /// `BATCH` buffers of `DATAGRAM` bytes end to end. Untouched pages never become resident:
    /// a 600-byte request touches one.
    buffers: Vec<u8>,
    senders: Vec<libc::sockaddr_storage>,
    /// Per datagram received by the last call: its length and sender (None: not an IP peer).
    received: Vec<(usize, Option<SocketAddr>)>,
    /// The next of `received` to hand out.
    next: usize,
}

impl Inbox {
    pub fn new() -> Inbox {
        Inbox {
            buffers: vec![0; BATCH * DATAGRAM],
            // SAFETY: all zeros is a valid sockaddr_storage.
            senders: vec![unsafe { std::mem::zeroed() }; BATCH],
            received: Vec::with_capacity(BATCH),
            next: 0,
        }
    }

    /// Receives what is queued, up to `BATCH` datagrams: with `wait`, sleeps until the first one
    /// comes (`MSG_WAITFORONE`: then takes the others without waiting); without, returns
    /// `WouldBlock` when none is queued. Returns how many came; what an earlier call received
    /// and was not taken is dropped.
    pub fn receive(&mut self, socket: &Socket, wait: bool) -> std::io::Result<usize> {
        // SAFETY: all zeros is a valid iovec and mmsghdr (null pointers, zero lengths).
        let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let buffers = self.buffers.chunks_exact_mut(DATAGRAM);
        for (((iovec, header), buffer), sender) in
            iovecs.iter_mut().zip(&mut headers).zip(buffers).zip(&mut self.senders)
        {
            *iovec = libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: DATAGRAM };
            header.msg_hdr.msg_name = (sender as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
        }
        let flags = if wait { libc::MSG_WAITFORONE } else { libc::MSG_DONTWAIT };
        // SAFETY: each header points at its own iovec, buffer and sender storage, all alive and
        // not otherwise borrowed during the call, with their true lengths.
        let n = unsafe {
            libc::recvmmsg(socket.as_raw_fd(), headers.as_mut_ptr(), BATCH as u32, flags, std::ptr::null_mut())
        };
        self.received.clear();
        self.next = 0;
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for (header, sender) in headers.iter().zip(&self.senders).take(n as usize) {
            let mut storage = SockAddrStorage::zeroed();
            // SAFETY: the storage is viewed as the very type it wraps.
            unsafe { *storage.view_as::<libc::sockaddr_storage>() = *sender };
            // SAFETY: the kernel initialised `msg_namelen` bytes of the sender.
            let from = unsafe { SockAddr::new(storage, header.msg_hdr.msg_namelen) }.as_socket();
            self.received.push((header.msg_len as usize, from));
        }
        Ok(n as usize)
    }

    /// Whether the last call took as many datagrams as it could: more may be queued.
    pub fn was_full(&self) -> bool {
        self.received.len() == BATCH
    }

    /// The next datagram the last call received, and its sender.
    pub fn take(&mut self) -> Option<(&[u8], Option<SocketAddr>)> {
        let (len, from) = *self.received.get(self.next)?;
        let start = self.next * DATAGRAM;
        self.next += 1;
        Some((&self.buffers[start..start + len], from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten datagrams queued: a first call takes `BATCH` of them and says it was full, the next the
    /// other two and says it was not, the one after finds nothing (without waiting).
    #[test]
    fn a_full_receive_says_more_may_be_queued_and_a_short_one_says_not() {
        let socket = Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        socket.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        let to = socket.local_addr().unwrap().as_socket().unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..BATCH + 2 {
            sender.send_to(format!("datagram {i}").as_bytes(), to).unwrap();
        }
        let mut inbox = Inbox::new();
        let mut got = Vec::new();
        for (expected, full) in [(BATCH, true), (2, false)] {
            assert_eq!(inbox.receive(&socket, true).unwrap(), expected);
            assert_eq!(inbox.was_full(), full);
            while let Some((datagram, from)) = inbox.take() {
                assert_eq!(from, Some(sender.local_addr().unwrap()));
                got.push(String::from_utf8(datagram.to_vec()).unwrap());
            }
        }
        assert_eq!(got, (0..BATCH + 2).map(|i| format!("datagram {i}")).collect::<Vec<_>>());
        let nothing = inbox.receive(&socket, false).unwrap_err();
        assert_eq!(nothing.kind(), std::io::ErrorKind::WouldBlock);
    }
}
