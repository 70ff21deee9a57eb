//! The TCP rendezvous of a torchrun/Slurm launch: rank 0 listens on `MASTER_PORT`, every other
//! rank connects to `MASTER_ADDR:MASTER_PORT` and receives rank 0's payload (NCCL's unique
//! id). The connections then stay open as a control channel: a rank that ends without saying
//! goodbye (it crashed or was killed) or that aborts makes every other rank stop, instead of
//! leaving them waiting forever inside a collective (NCCL has no failure detection of its
//! own). Every wait is bounded.
#![cfg_attr(not(feature = "nccl"), allow(dead_code))]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Sent first by every connecting rank.
const MAGIC: &[u8; 8] = b"MTPATH\x01\x00";
/// Control message: this rank is done (a clean end).
const DONE: u8 = b'D';
/// Control message: abort the run, followed by one byte of exit status.
const ABORT: u8 = b'A';

/// Default bound on the rendezvous, in seconds (`MTPATH_RENDEZVOUS_TIMEOUT` overrides it).
pub const DEFAULT_TIMEOUT_S: u64 = 300;

/// What a rank does when the run is lost: by default print `message` and exit with `code`.
pub type OnLost = Arc<dyn Fn(&str, i32) + Send + Sync>;

/// The default [`OnLost`]: print and exit.
pub fn exit_on_lost() -> OnLost {
    Arc::new(|message: &str, code: i32| {
        eprintln!("error: {message}");
        std::process::exit(code)
    })
}

/// The rendezvous bound from the environment.
pub fn timeout_from_env() -> Result<Duration> {
    match std::env::var("MTPATH_RENDEZVOUS_TIMEOUT") {
        Err(_) => Ok(Duration::from_secs(DEFAULT_TIMEOUT_S)),
        Ok(v) => Ok(Duration::from_secs(v.trim().parse().with_context(
            || format!("MTPATH_RENDEZVOUS_TIMEOUT={v:?} is not a number of seconds"),
        )?)),
    }
}

/// The open connections of a finished rendezvous (rank 0: one per other rank; others: one
/// to rank 0), watched by one thread each.
pub struct Control {
    peers: Vec<(usize, Arc<Mutex<TcpStream>>)>,
    finished: bool,
}

impl Control {
    /// Tell the other ranks to stop with exit status `code` (rank 0 passes it on to all).
    pub fn abort(&mut self, code: i32) {
        for (_, peer) in &self.peers {
            send(peer, &[ABORT, code.clamp(0, 255) as u8]);
        }
        self.finished = true;
    }

    /// A clean end: the other ranks may close their connections to this one.
    pub fn finish(&mut self) {
        if !self.finished {
            for (_, peer) in &self.peers {
                send(peer, &[DONE]);
            }
            self.finished = true;
        }
    }
}

impl Drop for Control {
    /// A clean end says goodbye; a panic aborts the run (the other ranks would otherwise
    /// wait for this one in their next collective).
    fn drop(&mut self) {
        if std::thread::panicking() && !self.finished {
            self.abort(101);
        }
        self.finish();
        for (_, peer) in &self.peers {
            if let Ok(s) = peer.lock() {
                let _ = s.shutdown(Shutdown::Write);
            }
        }
    }
}

fn send(peer: &Mutex<TcpStream>, bytes: &[u8]) {
    if let Ok(mut s) = peer.lock() {
        let _ = s.write_all(bytes);
        let _ = s.flush();
    }
}

/// Watch `peer` (rank `who`): a clean goodbye ends the watch; an abort or a connection lost
/// without goodbye calls `on_lost`, after rank 0 (`relay`) has told every other rank.
fn watch(
    who: usize,
    mut reader: TcpStream,
    relay: Option<Vec<(usize, Arc<Mutex<TcpStream>>)>>,
    on_lost: OnLost,
) {
    std::thread::Builder::new()
        .name(format!("mtpath-rank{who}-watch"))
        .spawn(move || {
            let mut byte = [0u8; 1];
            let (message, code) = match reader.read_exact(&mut byte) {
                Ok(()) if byte[0] == DONE => return,
                Ok(()) if byte[0] == ABORT => {
                    let code = match reader.read_exact(&mut byte) {
                        Ok(()) => i32::from(byte[0]),
                        Err(_) => 1,
                    };
                    (format!("rank {who} aborted the run"), code)
                }
                _ => (
                    format!("lost rank {who} (it crashed, was killed or lost its network); stopping this rank"),
                    1,
                ),
            };
            if let Some(others) = relay {
                for (rank, peer) in &others {
                    if *rank != who {
                        send(peer, &[ABORT, code as u8]);
                    }
                }
            }
            on_lost(&message, code);
        })
        .expect("start a control-channel thread");
}

fn read_u32(s: &mut TcpStream) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Meet the other ranks at `master` (`MASTER_ADDR`, `MASTER_PORT`): rank 0 gives `payload`
/// (ignored elsewhere) and every rank returns it, with the control channel. Fails after
/// `timeout` naming the ranks or the address that did not answer.
pub fn rendezvous(
    master: (&str, u16),
    rank: usize,
    world: usize,
    payload: &[u8],
    timeout: Duration,
    on_lost: OnLost,
) -> Result<(Vec<u8>, Control)> {
    let deadline = Instant::now() + timeout;
    if rank == 0 {
        serve(master.1, world, payload, deadline, timeout, on_lost)
    } else {
        join(master, rank, world, deadline, timeout, on_lost)
    }
}

fn serve(
    port: u16,
    world: usize,
    payload: &[u8],
    deadline: Instant,
    timeout: Duration,
    on_lost: OnLost,
) -> Result<(Vec<u8>, Control)> {
    let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| {
        format!("rank 0: cannot listen on port {port} (MASTER_PORT); choose a free port")
    })?;
    listener.set_nonblocking(true)?;
    let mut peers: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
    while peers[1..].iter().any(Option::is_none) {
        match listener.accept() {
            Ok((mut s, from)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                let mut magic = [0u8; 8];
                let hello = s
                    .read_exact(&mut magic)
                    .and_then(|()| Ok((read_u32(&mut s)?, read_u32(&mut s)?)));
                let Ok((r, w)) = hello else {
                    eprintln!("warning: rank 0: ignored a connection from {from} (no greeting)");
                    continue;
                };
                if &magic != MAGIC {
                    eprintln!("warning: rank 0: ignored a connection from {from} (not mtpath)");
                    continue;
                }
                let (r, w) = (r as usize, w as usize);
                if w != world || r == 0 || r >= world {
                    bail!("rank 0: {from} says it is rank {r} of {w}, but this run has {world} ranks; launch every rank with the same WORLD_SIZE");
                }
                if peers[r].is_some() {
                    bail!("rank 0: two processes say they are rank {r} (the second from {from}); give each a different RANK");
                }
                s.write_all(&(payload.len() as u32).to_le_bytes())?;
                s.write_all(payload)?;
                s.set_read_timeout(None)?;
                peers[r] = Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let missing: Vec<String> = (1..world)
                        .filter(|&r| peers[r].is_none())
                        .map(|r| r.to_string())
                        .collect();
                    bail!(
                        "rank 0: ranks {} did not connect to port {port} within {timeout:?}; are they running, with MASTER_ADDR naming this host? (MTPATH_RENDEZVOUS_TIMEOUT sets the wait)",
                        missing.join(", ")
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context("rank 0: accepting a rank's connection"),
        }
    }
    let mut shared = Vec::new();
    let mut readers = Vec::new();
    for (r, s) in peers.into_iter().enumerate().skip(1) {
        let s = s.expect("every rank connected");
        readers.push((r, s.try_clone()?));
        shared.push((r, Arc::new(Mutex::new(s))));
    }
    for (r, reader) in readers {
        watch(r, reader, Some(shared.clone()), on_lost.clone());
    }
    Ok((
        payload.to_vec(),
        Control {
            peers: shared,
            finished: false,
        },
    ))
}

fn join(
    (host, port): (&str, u16),
    rank: usize,
    world: usize,
    deadline: Instant,
    timeout: Duration,
    on_lost: OnLost,
) -> Result<(Vec<u8>, Control)> {
    let mut last_error = String::from("not tried");
    let mut s = loop {
        let addrs = (host, port)
            .to_socket_addrs()
            .with_context(|| format!("rank {rank}: MASTER_ADDR {host:?} does not resolve"))?;
        let attempt = addrs.into_iter().find_map(|a| {
            TcpStream::connect_timeout(&a, Duration::from_secs(2))
                .map_err(|e| last_error = e.to_string())
                .ok()
        });
        if let Some(s) = attempt {
            break s;
        }
        if Instant::now() > deadline {
            bail!("rank {rank}: rank 0 did not answer at {host}:{port} within {timeout:?} ({last_error}); is rank 0 running, and are MASTER_ADDR and MASTER_PORT right? (MTPATH_RENDEZVOUS_TIMEOUT sets the wait)");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    s.set_read_timeout(Some(timeout))?;
    s.write_all(MAGIC)?;
    s.write_all(&(rank as u32).to_le_bytes())?;
    s.write_all(&(world as u32).to_le_bytes())?;
    let len = read_u32(&mut s).with_context(|| {
        format!("rank {rank}: rank 0 at {host}:{port} closed the rendezvous (see its error)")
    })?;
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload)
        .with_context(|| format!("rank {rank}: reading rank 0's rendezvous payload"))?;
    s.set_read_timeout(None)?;
    watch(0, s.try_clone()?, None, on_lost);
    Ok((
        payload,
        Control {
            peers: vec![(0, Arc::new(Mutex::new(s)))],
            finished: false,
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{channel, Sender};

    use super::*;

    /// A lost-run report: the rank that got it, the message and the exit status.
    type Report = (usize, String, i32);

    fn free_port() -> u16 {
        TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn recorder(rank: usize, tx: Sender<Report>) -> OnLost {
        let tx = Mutex::new(tx);
        Arc::new(move |m: &str, c: i32| {
            let _ = tx.lock().unwrap().send((rank, m.to_string(), c));
        })
    }

    /// Start `world` ranks in threads; returns their payloads and controls, in rank order,
    /// and the channel on which lost-run reports arrive.
    fn meet(world: usize) -> (Vec<(Vec<u8>, Control)>, std::sync::mpsc::Receiver<Report>) {
        let port = free_port();
        let (tx, rx) = channel();
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let on_lost = recorder(rank, tx.clone());
                std::thread::spawn(move || {
                    let payload = if rank == 0 {
                        b"nccl-id".to_vec()
                    } else {
                        Vec::new()
                    };
                    rendezvous(
                        ("127.0.0.1", port),
                        rank,
                        world,
                        &payload,
                        Duration::from_secs(20),
                        on_lost,
                    )
                    .unwrap()
                })
            })
            .collect();
        (handles.into_iter().map(|h| h.join().unwrap()).collect(), rx)
    }

    #[test]
    fn every_rank_gets_rank_0s_payload_and_clean_ends_stop_nothing() {
        let (ranks, lost) = meet(3);
        for (payload, control) in &ranks {
            assert_eq!(payload, b"nccl-id");
            assert!(!control.finished);
        }
        drop(ranks);
        assert!(lost.recv_timeout(Duration::from_millis(500)).is_err());
    }

    #[test]
    fn a_rank_that_dies_stops_the_others() {
        let (mut ranks, lost) = meet(3);
        // Rank 2 disappears without a goodbye (its sockets close, as when killed).
        let (_, mut dead) = ranks.pop().unwrap();
        dead.finished = true;
        drop(dead);
        let mut reports: Vec<Report> = (0..2)
            .map(|_| lost.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        reports.sort_by_key(|r| r.0);
        assert_eq!(reports[0].0, 0);
        assert!(reports[0].1.contains("lost rank 2"), "{reports:?}");
        assert_eq!(reports[1].0, 1);
        assert!(reports[1].1.contains("rank 0 aborted"), "{reports:?}");
    }

    #[test]
    fn an_abort_reaches_every_rank_with_its_status() {
        let (mut ranks, lost) = meet(3);
        ranks[1].1.abort(7);
        let mut reports: Vec<Report> = (0..2)
            .map(|_| lost.recv_timeout(Duration::from_secs(10)).unwrap())
            .collect();
        reports.sort_by_key(|r| r.0);
        assert_eq!((reports[0].0, reports[0].2), (0, 7));
        assert_eq!((reports[1].0, reports[1].2), (2, 7));
    }

    #[test]
    fn a_missing_rank_or_rank_0_fails_in_bounded_time_naming_it() {
        let port = free_port();
        let quiet: OnLost = Arc::new(|_: &str, _: i32| {});
        let e = rendezvous(
            ("127.0.0.1", port),
            0,
            3,
            b"x",
            Duration::from_millis(300),
            quiet.clone(),
        )
        .err()
        .unwrap();
        assert!(
            format!("{e:#}").contains("ranks 1, 2 did not connect"),
            "{e:#}"
        );
        let e = rendezvous(
            ("127.0.0.1", port),
            1,
            3,
            b"",
            Duration::from_millis(300),
            quiet,
        )
        .err()
        .unwrap();
        assert!(format!("{e:#}").contains("rank 0 did not answer"), "{e:#}");
    }
}
