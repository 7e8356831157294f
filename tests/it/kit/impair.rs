//! A bad link in user space, as netem makes one (this machine's kernel has no netem): each
//! Ethernet frame between a QEMU NIC and a tap device on a lab bridge may be lost, delayed, or
//! held back so that later frames overtake it. QEMU sends its frames as UDP datagrams
//! (`-netdev dgram`, one frame per datagram) to the impairer's socket on the namespace's
//! loopback; the impairer writes them to the tap, and frames read from the tap go back to QEMU
//! the same way. Both directions are impaired alike, with their own seeded random stream, so a
//! run can be repeated.
//!
//! The socket and the tap are opened from a thread that has entered the lab's network
//! namespace (`setns`), so the test itself stays in the host's.

use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the link does to every frame, in each direction.
#[derive(Clone, Copy, Debug)]
pub struct Profile {
    /// Probability a frame is lost.
    pub loss: f64,
    /// Added to every frame.
    pub delay: Duration,
    /// Probability a frame is held back by `hold` more, so the frames behind it go first.
    pub reorder: f64,
    pub hold: Duration,
}

impl Profile {
    pub const CLEAN: Profile = Profile {
        loss: 0.0,
        delay: Duration::ZERO,
        reorder: 0.0,
        hold: Duration::ZERO,
    };
}

/// One direction's counts.
#[derive(Debug, Default)]
pub struct Counts {
    pub frames: AtomicU64,
    pub lost: AtomicU64,
    /// Frames delivered after a frame that came in later than them.
    pub overtaken: AtomicU64,
}

impl Counts {
    pub fn text(&self) -> String {
        format!(
            "{} frames, {} lost, {} overtaken",
            self.frames.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed),
            self.overtaken.load(Ordering::Relaxed)
        )
    }
}

/// A running impairer; stops when dropped.
pub struct Impairer {
    /// Where QEMU's NIC sends and receives (`-netdev dgram` with these two ports).
    pub qemu_port: u16,
    pub our_port: u16,
    pub to_vm: Arc<Counts>,
    pub from_vm: Arc<Counts>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Impairer {
    /// Joins the UDP side in namespace `ns` to `tap` (a persistent tap device already on the
    /// bridge there), impairing both directions by `profile`, random streams from `seed`.
    pub fn start(ns: &str, tap: &str, profile: Profile, seed: u64) -> io::Result<Impairer> {
        let (ns, tap_name) = (ns.to_string(), tap.to_string());
        let opened = std::thread::spawn(move || -> io::Result<(UdpSocket, File, u16)> {
            let netns = File::open(format!("/var/run/netns/{ns}"))?;
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            // QEMU's end: a port free now in the namespace.
            let qemu_port = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?
                .local_addr()?
                .port();
            Ok((socket, open_tap(&tap_name)?, qemu_port))
        })
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))??;
        let (socket, tap, qemu_port) = opened;
        let our_port = socket.local_addr()?.port();
        socket.connect((Ipv4Addr::LOCALHOST, qemu_port))?;
        socket.set_read_timeout(Some(Duration::from_millis(20)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (to_vm, from_vm) = (Arc::new(Counts::default()), Arc::new(Counts::default()));

        let mut threads = Vec::new();
        {
            // VM → LAN: datagrams from QEMU to the tap.
            let (socket, mut tap, stop, counts) = (
                socket.try_clone()?,
                tap.try_clone()?,
                stop.clone(),
                from_vm.clone(),
            );
            threads.push(std::thread::spawn(move || {
                let mut link = Link::new(profile, seed, counts);
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let wait = link.wait();
                    let _ = socket.set_read_timeout(Some(wait));
                    if let Ok(n) = socket.recv(&mut buf) {
                        link.take(&buf[..n]);
                    }
                    link.release(|frame| {
                        let _ = tap.write(frame);
                    });
                }
            }));
        }
        {
            // LAN → VM: frames read from the tap to QEMU.
            let (socket, mut tap, stop, counts) = (socket, tap, stop.clone(), to_vm.clone());
            threads.push(std::thread::spawn(move || {
                let mut link = Link::new(profile, seed ^ 0x9e37_79b9_7f4a_7c15, counts);
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let wait = link.wait();
                    if readable(&tap, wait) {
                        if let Ok(n) = tap.read(&mut buf) {
                            link.take(&buf[..n]);
                        }
                    }
                    link.release(|frame| {
                        let _ = socket.send(frame);
                    });
                }
            }));
        }
        Ok(Impairer {
            qemu_port,
            our_port,
            to_vm,
            from_vm,
            stop,
            threads,
        })
    }

    /// QEMU's `-netdev` value for NIC `id`.
    pub fn netdev(&self, id: &str) -> String {
        format!(
            "dgram,id={id},local.type=inet,local.host=127.0.0.1,local.port={},remote.type=inet,remote.host=127.0.0.1,remote.port={}",
            self.qemu_port, self.our_port
        )
    }
}

impl Drop for Impairer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Frames waiting in one direction, by release time (earliest first), then arrival.
struct Link {
    profile: Profile,
    rng: u64,
    counts: Arc<Counts>,
    queue: BinaryHeap<std::cmp::Reverse<(Instant, u64, Vec<u8>)>>,
    arrived: u64,
    /// The latest arrival number delivered so far.
    delivered: Option<u64>,
}

impl Link {
    fn new(profile: Profile, seed: u64, counts: Arc<Counts>) -> Self {
        Link {
            profile,
            rng: seed.max(1),
            counts,
            queue: BinaryHeap::new(),
            arrived: 0,
            delivered: None,
        }
    }

    /// xorshift64*, as a number in [0, 1).
    fn chance(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn take(&mut self, frame: &[u8]) {
        self.counts.frames.fetch_add(1, Ordering::Relaxed);
        if self.chance() < self.profile.loss {
            self.counts.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut at = Instant::now() + self.profile.delay;
        if self.chance() < self.profile.reorder {
            at += self.profile.hold;
        }
        self.arrived += 1;
        self.queue
            .push(std::cmp::Reverse((at, self.arrived, frame.to_vec())));
    }

    /// How long until the next frame is due (a short poll when none waits).
    fn wait(&self) -> Duration {
        match self.queue.peek() {
            Some(std::cmp::Reverse((at, _, _))) => at
                .saturating_duration_since(Instant::now())
                .max(Duration::from_micros(100)),
            None => Duration::from_millis(20),
        }
    }

    fn release(&mut self, mut send: impl FnMut(&[u8])) {
        let now = Instant::now();
        while let Some(std::cmp::Reverse((at, _, _))) = self.queue.peek() {
            if *at > now {
                break;
            }
            let Some(std::cmp::Reverse((_, n, frame))) = self.queue.pop() else {
                break;
            };
            match self.delivered {
                Some(last) if n < last => {
                    self.counts.overtaken.fetch_add(1, Ordering::Relaxed);
                }
                _ => self.delivered = Some(n),
            }
            send(&frame);
        }
    }
}

/// Whether `file` has data within `wait`.
fn readable(file: &File, wait: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
    let ms = u16::try_from(wait.as_millis().max(1)).unwrap_or(u16::MAX);
    matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(n) if n > 0)
}

/// Attaches to tap device `name` (frames without the packet-information header).
#[allow(unsafe_code)]
fn open_tap(name: &str) -> io::Result<File> {
    const TUNSETIFF: u64 = 0x4004_54ca;
    nix::ioctl_write_ptr_bad!(tunsetiff, TUNSETIFF, nix::libc::ifreq);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: nix::libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::other("tap name too long"));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as nix::libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (nix::libc::IFF_TAP | nix::libc::IFF_NO_PI) as nix::libc::c_short;
    // SAFETY: TUNSETIFF reads one ifreq, which lives for the call, on a /dev/net/tun fd.
    unsafe { tunsetiff(file.as_raw_fd(), &req) }.map_err(io::Error::from)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(profile: Profile) -> (Link, Arc<Counts>) {
        let counts = Arc::new(Counts::default());
        (Link::new(profile, 7, counts.clone()), counts)
    }

    #[test]
    fn a_lossy_link_loses_about_its_share() {
        let (mut l, counts) = link(Profile {
            loss: 0.1,
            ..Profile::CLEAN
        });
        for i in 0..10_000u32 {
            l.take(&i.to_be_bytes());
        }
        let lost = counts.lost.load(Ordering::Relaxed);
        assert!((800..1200).contains(&lost), "{lost} of 10000 lost");
        let mut out = 0;
        l.release(|_| out += 1);
        assert_eq!(out + lost, 10_000);
    }

    #[test]
    fn held_frames_are_overtaken_and_delayed_ones_wait() {
        let (mut l, counts) = link(Profile {
            reorder: 0.5,
            hold: Duration::from_millis(30),
            ..Profile::CLEAN
        });
        for i in 0..100u32 {
            l.take(&i.to_be_bytes());
        }
        let mut order = Vec::new();
        l.release(|f| order.push(u32::from_be_bytes([f[0], f[1], f[2], f[3]])));
        assert!(order.len() < 100 && order.windows(2).all(|w| w[0] < w[1]));
        std::thread::sleep(Duration::from_millis(40));
        l.release(|f| order.push(u32::from_be_bytes([f[0], f[1], f[2], f[3]])));
        assert_eq!(order.len(), 100);
        assert!(counts.overtaken.load(Ordering::Relaxed) > 20);

        let (mut slow, _) = link(Profile {
            delay: Duration::from_millis(50),
            ..Profile::CLEAN
        });
        slow.take(b"x");
        let mut n = 0;
        slow.release(|_| n += 1);
        assert_eq!(n, 0, "a delayed frame left at once");
        assert!(slow.wait() > Duration::from_millis(30));
    }
}
