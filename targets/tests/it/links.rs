//! The contract over a line to another site (100 Mbit/s, 20 ms round trip): the servers in a
//! network namespace behind a veth pair shaped with `tc tbf`, reached through a relay on
//! loopback that adds the round trip. Latency is where pipelining, timeouts and request
//! ordering show; loopback hides them.

use std::time::Instant;

use holdfast_targets::{ObjectKey, Target as _};
use holdfast_testkit::link::{FarServer, Link, ShapedNet};
use holdfast_testkit::servers::{S3Server, Sshd};

use crate::conformance::{body, s3_target, sftp_target, suite};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_and_sftp_conform_over_a_wan_link() {
    const TEST: &str = "s3_and_sftp_conform_over_a_wan_link";
    let Some(net) = ShapedNet::new(TEST, "wan1", 31, Link::WAN) else {
        return;
    };
    let Some(mut s3) = S3Server::start_in_netns(TEST, &net.ns, &net.server_ip) else {
        return;
    };
    let Some(mut sshd) = Sshd::start_in_netns(TEST, &net.ns, &net.server_ip) else {
        return;
    };
    let far = FarServer::relay(net, &[s3.port, sshd.port], Link::WAN).expect("relay");
    // Through the relay: the same ports on loopback.
    s3.endpoint = format!("http://127.0.0.1:{}", s3.port);
    let t = s3_target(&s3, "far", "site b");
    t.create_bucket(false).await.expect("bucket");
    let started = Instant::now();
    suite(&t).await;
    eprintln!("S3 suite over {:?}: {:?}", Link::WAN, started.elapsed());
    assert!(t.unfinished_uploads().await.expect("uploads").is_empty());

    let started = Instant::now();
    let sftp = sftp_target(&sshd, false);
    suite(&sftp).await;
    eprintln!("SFTP suite over {:?}: {:?}", Link::WAN, started.elapsed());

    // A ranged read moves what it asks for and not much more: libssh2 on its own requests
    // four times a read's buffer ahead, past the range's end (an 8 MiB range cost 14 MiB).
    let k = ObjectKey::new("ranged.bin").expect("key");
    let data = holdfast_testkit::devices::noise(12 << 20, 7);
    sftp.put_stream(&k, body(data.clone()), true)
        .await
        .expect("put");
    let before = far.net.bytes_from_server();
    let got = sftp
        .get_range(&k, (1 << 20)..(9 << 20))
        .await
        .expect("range");
    let moved = far.net.bytes_from_server() - before;
    assert_eq!(&got[..], &data[1 << 20..9 << 20]);
    assert!(
        moved < (8 << 20) + (8 << 20) / 20,
        "an 8 MiB range moved {moved} bytes over the link"
    );
    sshd.kill();
    drop(far);
    drop(s3);
}
