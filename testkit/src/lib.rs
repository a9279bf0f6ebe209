//! # holdfast-testkit
//!
//! What the tests of several crates need, in one place (a dev-dependency, never shipped):
//!
//! - [`servers`]: real servers started on loopback high ports with a throwaway user — OpenSSH
//!   `sshd` (SFTP), vsftpd (FTP/FTPS), Samba `smbd`, SeaweedFS (S3), an SMTP sink — and the
//!   test user they share. Each fixture creates or repairs the machine state it relies on (the user, its
//!   home, its password) on every run.
//! - [`devices`]: loop devices, filesystems, mounts, file checksums, and running the agent's
//!   command line.
//! - [`link`]: a server in a network namespace behind a veth pair shaped with `tc tbf`, and
//!   a relay on loopback that adds the round trip (a LAN, a line to another site); also the
//!   `holdfast-delay-relay` binary for the link benchmark.
//! - [`vm`]: the VM with device-mapper, LVM and dm-crypt (`scripts/vm/`) and running a
//!   script in it.
//!
//! A fixture that cannot start skips its test with a message on a developer's machine and
//! fails it when `CI` is set.

pub mod devices;
pub mod link;
pub mod servers;
pub mod vm;
