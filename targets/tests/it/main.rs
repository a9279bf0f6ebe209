//! Target tests: one conformance suite for every backend, run against a local folder and a
//! real OpenSSH `sshd` started on loopback by the fixture; plus the SFTP faults.

mod bandwidth;
mod conformance;
mod ftp_faults;
mod full;
mod links;
mod s3_faults;
mod s3_lock;
mod sftp_faults;
mod smb_faults;
