//! uTP under hostile input and `both` on one port number.
//!
//! - A seeder listening over uTP is sprayed with garbage datagrams (random bytes, truncated
//!   headers, headers with a bad version or type, forged packets for random connection ids)
//!   while a leecher downloads from it; the download must finish byte-identical.
//! - A `both` session holds the TCP and the UDP port with the same number.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use zigtorrent_engine::session::{Session, SessionConfig};
use zigtorrent_engine::tracker::TrackerClient;
use zigtorrent_engine::transport_pair::{TransportPair, DEFAULT_HEAD_START};
use zigtorrent_engine::{Transport, TransportOptions};
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::*;
use zigtorrent_transport_tcp::TcpTransport;
use zigtorrent_transport_utp::UtpTransport;

const TIMEOUT: Duration = Duration::from_secs(60);

async fn session(
    dir: &std::path::Path,
    transport: Arc<dyn Transport>,
    peers: Vec<SocketAddr>,
) -> Session {
    let mut config = SessionConfig::new(dir.to_path_buf(), dir.join(".zigtorrent"));
    config.listen = "127.0.0.1:0".parse().expect("literal address");
    config.extra_peers = peers;
    Session::start(
        config,
        transport,
        Arc::new(FsBackend::new()),
        TrackerClient::new(),
    )
    .await
    .expect("start session")
}

fn utp() -> Arc<dyn Transport> {
    Arc::new(UtpTransport::new(&TransportOptions::default()))
}

/// One garbage datagram: shapes that exercise the parser's every early exit, plus forged but
/// well-formed packets aimed at connections that may exist.
fn garbage(rng: &mut impl Rng) -> Vec<u8> {
    let kind = rng.gen_range(0..6);
    let len = match kind {
        0 => rng.gen_range(0..20), // shorter than a header
        _ => rng.gen_range(20..1500),
    };
    let mut d = vec![0u8; len];
    rng.fill(&mut d[..]);
    if len >= 20 {
        match kind {
            // Right version, every type including invalid ones (type 5..15).
            1 => d[0] = (rng.gen_range(0u8..16) << 4) | 1,
            // ST_DATA / ST_STATE / ST_FIN / ST_RESET with a random connection id and numbers.
            2 => d[0] = (rng.gen_range(0u8..4) << 4) | 1,
            // A SYN with a payload (invalid) or without.
            3 => {
                d[0] = (4 << 4) | 1;
                if rng.gen_bool(0.5) {
                    d.truncate(20);
                }
            }
            // An extension chain that claims more bytes than there are.
            4 => {
                d[0] = 1;
                d[1] = rng.gen_range(0..4);
                d.truncate(rng.gen_range(20..24));
            }
            _ => {}
        }
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_do_not_stop_a_download() {
    let dir = tempfile::tempdir().unwrap();
    let seed_dir = dir.path().join("seed");
    let source = write_payload(&seed_dir, "payload", 11);
    let meta = make_torrent(&source, vec![], PAYLOAD_PIECE_LENGTH);

    let seeder = session(&seed_dir, utp(), vec![]).await;
    let seed_addr: SocketAddr = ([127, 0, 0, 1], seeder.listen_port()).into();
    let seed_handle = seeder.add(meta.clone()).unwrap();
    wait_seeding(&seed_handle, TIMEOUT).await;

    // Start spraying before the leecher exists, and keep going until it is done.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sprayer = {
        let (stop, sent) = (stop.clone(), sent.clone());
        tokio::spawn(async move {
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(29);
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..50 {
                    let d = garbage(&mut rng);
                    let _ = sock.send_to(&d, seed_addr).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let leech_dir = dir.path().join("leech");
    let leecher = session(&leech_dir, utp(), vec![seed_addr]).await;
    let handle = leecher.add(meta).unwrap();
    wait_seeding(&handle, TIMEOUT).await;
    stop.store(true, Ordering::Relaxed);
    sprayer.await.unwrap();
    assert!(
        sent.load(Ordering::Relaxed) > 1000,
        "the sprayer barely ran"
    );

    leecher.shutdown(Duration::from_secs(4)).await;
    assert_same_files(&source, &leech_dir.join("payload"));
    seeder.shutdown(Duration::from_secs(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_holds_tcp_and_udp_on_one_port() {
    let o = TransportOptions::default();
    let pair: Arc<dyn Transport> = Arc::new(TransportPair::new(
        "both",
        Arc::new(UtpTransport::new(&o)),
        Arc::new(TcpTransport::new(&o)),
        DEFAULT_HEAD_START,
    ));
    let l = pair.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let port = l.local_addr().port();
    assert!(
        std::net::UdpSocket::bind(("127.0.0.1", port)).is_err(),
        "UDP port free"
    );
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_err(),
        "TCP port free"
    );
    // A uTP-only and a TCP-only peer both get in.
    let mut l = l;
    let addr = l.local_addr();
    let accepts = tokio::spawn(async move {
        let a = l.accept().await.unwrap().1;
        let b = l.accept().await.unwrap().1;
        (a, b)
    });
    let by_utp = utp();
    let by_tcp = TcpTransport::new(&o);
    let _s1 = by_utp.connect(addr).await.unwrap();
    let _s2 = by_tcp.connect(addr).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), accepts)
        .await
        .expect("both accepted")
        .unwrap();
}
