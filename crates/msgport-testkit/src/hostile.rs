//! The hostile-peer tools: a port of this process whose other end is a bare socket in the
//! test's hands, to write hand-made frames and descriptors into (the wire format is in
//! docs/wire-format.md), and measures of this process (memory, CPU time). Run such tests with
//! [`isolated`](crate::child::isolated), so that what they measure or break is their own.

use std::io::{IoSlice, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use msgport::MessagePort;
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// A fresh path for a rendezvous socket.
pub fn socket_path(tag: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("msgport-{tag}-{}-{n}.sock", std::process::id()))
}

/// The bare end of a port's socket.
pub struct RawPeer {
    /// The socket.
    pub sock: UnixStream,
}

/// A port of this process and the bare socket at its other end.
pub fn hostile_pair() -> (MessagePort, RawPeer) {
    let path = socket_path("hostile");
    let listener = msgport::process::listen(&path).expect("listen");
    let sock = UnixStream::connect(&path).expect("connect");
    let (port, _creds) = listener.accept().expect("accept");
    (port, RawPeer { sock })
}

/// Two ports of this process connected by a socket, as if each were in another process.
pub fn socket_pair() -> (MessagePort, MessagePort) {
    let path = socket_path("pair");
    let listener = msgport::process::listen(&path).expect("listen");
    let a = msgport::process::connect(&path).expect("connect");
    let (b, _creds) = listener.accept().expect("accept");
    (a, b)
}

impl RawPeer {
    /// One `sendmsg` of `bytes` with `fds` attached; returns how many bytes went.
    pub fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<usize> {
        let mut space =
            vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
        }
        Ok(rustix::net::sendmsg(
            &self.sock,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        )?)
    }

    /// Writes all of `bytes` (blocking), no descriptors.
    pub fn write_all(&self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        (&self.sock).write_all(bytes)
    }

    /// Writes one frame: header (`nfds` announced) and body, with `fds` on its first byte.
    pub fn frame(&self, body: &[u8], nfds: u32, fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        let bytes = frame(body, nfds);
        let sent = self.send(&bytes, fds)?;
        self.write_all(&bytes[sent..])
    }

    /// Whether msgport closed its end within `timeout` (reads and discards until then).
    pub fn sees_close_within(&self, timeout: Duration) -> bool {
        self.sock.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match (&self.sock).read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

/// A frame: length, announced descriptor count, body.
pub fn frame(body: &[u8], nfds: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&nfds.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Hand-written CBOR, enough to build bodies and port records.
pub mod cbor {
    /// A head: major type and argument, in the shortest form.
    pub fn head(major: u8, n: u64) -> Vec<u8> {
        let m = major << 5;
        match n {
            0..=23 => vec![m | n as u8],
            24..=0xff => vec![m | 24, n as u8],
            0x100..=0xffff => [vec![m | 25], (n as u16).to_be_bytes().to_vec()].concat(),
            0x1_0000..=0xffff_ffff => [vec![m | 26], (n as u32).to_be_bytes().to_vec()].concat(),
            _ => [vec![m | 27], n.to_be_bytes().to_vec()].concat(),
        }
    }

    /// A byte string.
    pub fn bytes(b: &[u8]) -> Vec<u8> {
        [head(2, b.len() as u64), b.to_vec()].concat()
    }

    /// An unsigned integer.
    pub fn uint(n: u64) -> Vec<u8> {
        head(0, n)
    }

    /// `null`.
    pub const NULL: &[u8] = &[0xf6];

    /// A message body `[data, [records...]]`.
    pub fn body(data: &[u8], records: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![0x82];
        out.extend_from_slice(data);
        out.extend(head(4, records.len() as u64));
        records.iter().for_each(|r| out.extend_from_slice(r));
        out
    }

    /// A port record `[flags, [queued...], prefix, prefix_fds, [unsent, fds, ...]]`.
    pub fn record(
        flags: u8,
        queued: &[Vec<u8>],
        prefix: &[u8],
        prefix_fds: u64,
        unsent: &[(&[u8], u64)],
    ) -> Vec<u8> {
        let mut out = vec![0x85, flags];
        out.extend(head(4, queued.len() as u64));
        queued.iter().for_each(|q| out.extend_from_slice(q));
        out.extend(bytes(prefix));
        out.extend(uint(prefix_fds));
        out.extend(head(4, 2 * unsent.len() as u64));
        for (b, n) in unsent {
            out.extend(bytes(b));
            out.extend(uint(*n));
        }
        out
    }

    /// A record for a port with a socket and nothing in flight.
    pub fn socket_record() -> Vec<u8> {
        record(1, &[], &[], 0, &[])
    }
}

/// Opens `n` descriptors of /dev/null.
pub fn dev_null(n: usize) -> Vec<OwnedFd> {
    (0..n)
        .map(|_| {
            std::fs::File::open("/dev/null")
                .expect("open /dev/null")
                .into()
        })
        .collect()
}

/// The descriptors, borrowed (for [`RawPeer::send`]).
pub fn borrow(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|f| f.as_fd()).collect()
}

/// This process's resident memory, in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// CPU time (user + system) this process has used (from /proc, in clock ticks of 10 ms).
pub fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 of the line, counted from the state (field 3).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}
