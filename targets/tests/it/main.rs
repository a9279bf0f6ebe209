//! Target tests: one conformance suite for every backend, run against a local folder and a
//! real OpenSSH `sshd` started on loopback by the fixture; plus the SFTP faults.

mod conformance;
// Shared with the agent's and the server's tests (the SMTP sink is theirs).
#[allow(dead_code)]
mod fixtures;
mod ftp_faults;
mod full;
mod sftp_faults;
mod smb_faults;
