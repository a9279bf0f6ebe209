//! The contract over a line to another site (100 Mbit/s, 20 ms round trip): the servers in a
//! network namespace behind a veth pair shaped with `tc tbf`, reached through a relay on
//! loopback that adds the round trip. Latency is where pipelining, timeouts and request
//! ordering show; loopback hides them.

use std::time::Instant;

use holdfast_testkit::link::{FarServer, Link, ShapedNet};
use holdfast_testkit::servers::{S3Server, Sshd};

use crate::conformance::{s3_target, sftp_target, suite};

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
    suite(&sftp_target(&sshd, false)).await;
    eprintln!("SFTP suite over {:?}: {:?}", Link::WAN, started.elapsed());
    sshd.kill();
    drop(far);
    drop(s3);
}
