#!/usr/bin/env bash
# Make the seed corpora in fuzz/corpus/: images written by holdfast-agent, filesystems made
# by their own mkfs, partition tables by sfdisk; job files, agent messages and target URLs
# written by hand in the forms the server and agents use. Run as root from the
# repository (needs the agent built: cargo build -p holdfast-agent, and the Debian
# packages of scripts/test.sh). Seeds are at most 1 MiB (scripts/fuzz.sh's -max_len).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PATH:/usr/sbin:/sbin"
agent=${HOLDFAST_AGENT:-${CARGO_TARGET_DIR:-target}/debug/holdfast-agent}
c=fuzz/corpus
work=$(mktemp -d /var/tmp/holdfast-fuzz-seeds-XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p $c/{image,filesystems,partition_table,job_file,agent_protocol,target_url,command_file}

# Images: a small volume with files, full and incremental, plain, compressed, encrypted.
head -c 196608 /dev/urandom >"$work/src"
head -c 65536 /dev/zero >>"$work/src"
printf 'holdfast seed\n%.0s' {1..4000} >>"$work/src"
truncate -s 393216 "$work/src"
"$agent" image create --source "$work/src" --output "$work/plain.hfi" --forensic --compression-level 0 >/dev/null
"$agent" image create --source "$work/src" --output "$work/zstd.hfi" --forensic >/dev/null
printf 'seed-password\n' >"$work/pw"
"$agent" image create --source "$work/src" --output "$work/enc.hfi" --forensic --encrypt aes256 --password-file "$work/pw" >/dev/null
dd if=/dev/urandom of="$work/src" bs=4096 count=4 seek=10 conv=notrunc status=none
"$agent" image create --source "$work/src" --output "$work/inc.hfi" --forensic --incremental --base "$work/zstd.hfi" >/dev/null
for f in plain zstd enc inc; do cp "$work/$f.hfi" "$c/image/$f"; done

# Filesystems: the selector byte is the reader's place in holdfast_image::fs::READERS
# (ext, fat, exfat, ntfs, xfs, btrfs, luks, swap), then the volume's first KEEP bytes
# (small inputs run faster; btrfs and XFS keep their trees further in).
fs_seed() { # NAME SELECTOR SIZE KEEP MKFS...
    local name=$1 sel=$2 size=$3 keep=$4
    shift 4
    truncate -s "$size" "$work/$name.img"
    "$@" "$work/$name.img" >/dev/null 2>&1
    { printf "\\x$(printf %02x "$sel")"; head -c "$keep" "$work/$name.img"; } >"$c/filesystems/$name"
}
fs_seed ext4 0 1M 262144 mkfs.ext4 -q -F -b 1024
fs_seed ext2 0 1M 262144 mkfs.ext2 -q -F -b 1024
fs_seed fat12 1 1M 262144 mkfs.vfat -F 12
fs_seed fat16 1 3M 262144 mkfs.vfat -F 16 -s 1
fs_seed exfat 2 8M 1048575 mkfs.exfat
fs_seed ntfs 3 2M 1048575 mkntfs -F -q -s 512 -c 512
fs_seed xfs 4 300M 1048575 mkfs.xfs -q -f
fs_seed btrfs 5 120M 1048575 mkfs.btrfs -q -f
fs_seed swap 7 1M 65536 mkswap

# Partition tables: MBR with a logical partition, GPT (first byte: 0 = 512-byte sectors).
truncate -s 1M "$work/mbr.img" "$work/gpt.img"
printf 'label: dos\nstart=64, size=512, type=83\nstart=600, type=5\nstart=640, size=100, type=83\n' | sfdisk -q "$work/mbr.img"
printf 'label: gpt\nstart=34, size=512\nstart=546, size=400\n' | sfdisk -q "$work/gpt.img"
for t in mbr gpt; do { printf '\x00'; cat "$work/$t.img"; } >"$c/partition_table/$t"; done

# Job files in the exported form (written by hand: the fields of docs/jobs.md).
cat >"$c/job_file/nightly.json" <<'JSON'
{"name":"nightly","enabled":true,"spec":{"agents":[1],"source":"/dev/sda1","target_id":1,"folder":"web","name":"{hostname}-{date}","method":"incremental","chain_length":7,"compression":"zstd","schedule":{"kind":"daily","every":1,"time":"02:00","timezone":"Europe/Berlin"},"retention":{"keep_chains":3},"verify":true}}
JSON
cat >"$c/job_file/nightly.xml" <<'XML'
<job><name>nightly</name><enabled>true</enabled><spec><agents><item>1</item></agents><source>/dev/sda1</source><target_id>1</target_id><method>incremental</method><chain_length>7</chain_length><schedule><kind>weekly</kind><days><item>mon</item><item>fri</item></days><time>22:30</time></schedule><before><command>/usr/local/bin/stop-db</command><timeout_secs>60</timeout_secs></before></spec></job>
XML

# Agent protocol messages, both ways.
p=$c/agent_protocol
echo '{"type":"hello","protocol":5,"agent_version":"0.1.0"}' >"$p/hello"
echo '{"type":"enroll","protocol":5,"token":"hfe_x","hostname":"web01"}' >"$p/enroll"
echo '{"type":"heartbeat"}' >"$p/heartbeat"
echo '{"type":"progress","run_id":7,"stage":"imaging","done":1048576,"total":4194304}' >"$p/progress"
echo '{"type":"log","run_id":7,"level":"warn","text":"snapshot: none"}' >"$p/log"
echo '{"type":"stream_end","id":3,"error":null}' >"$p/stream_end"
echo '{"type":"response","id":1,"result":{"Ok":{"reply":"cancelling"}}}' >"$p/response"
echo '{"type":"response","id":2,"result":{"Err":"no such run"}}' >"$p/response_err"
echo '{"type":"welcome","server_version":"0.1.0","heartbeat_seconds":15}' >"$p/welcome"
echo '{"type":"refused","code":"version","reason":"update the agent"}' >"$p/refused"
echo '{"type":"request","id":1,"request":{"request":"inventory"}}' >"$p/request"
echo '{"type":"stream_ack","id":3,"bytes":2097152}' >"$p/stream_ack"
echo '{"type":"report_stored","run_id":7}' >"$p/report_stored"
{ printf '\x00\x00\x00\x00\x00\x00\x00\x03'; printf 'data'; } >"$p/data_frame"

# Target URLs.
u=$c/target_url
printf '%s' 'sftp://backup@nas:2222/srv/images' >"$u/sftp"
printf '%s' 'ftps://ftp.example/images/web01' >"$u/ftps"
printf '%s' 'smb://CORP;admin@nas:445/share/dir/a%20b' >"$u/smb"
printf '%s' 'file:///srv/images' >"$u/file"
printf '%s' '/var/backups/images' >"$u/path"
printf '%s' 'sftp://[fe80::1]:22/x/y.hfi' >"$u/ipv6"

# Command files: the forms of the manual's examples, with conditions and settings, and the
# refused kinds (a document type, a Windows-only command).
k=$c/command_file
cat >"$k/create" <<'XML'
<?xml version="1.0" encoding="UTF-8"?>
<DiskImageJob version="12.0">
<logfile>$ENV:(LOG)/script.log</logfile>
<stop_at_error>YES</stop_at_error>
<command name="create image">
<image_type>used sector</image_type>
<image_name>$ENV:(IMAGES)/$TEMPL:(ComputerName)-${TEMPL:(Year)}.hfi</image_name>
<devicename>/dev/sdb1</devicename>
<max_image_size>8</max_image_size>
<password CONDITION="$ENV:(PW) != ''">$ENV:(PW)</password>
<automatically_validate_image>YES</automatically_validate_image>
</command>
</DiskImageJob>
XML
cat >"$k/restore" <<'XML'
<DiskImage><Job>
<command name="restore image" CONDITION="$ENV:(RESTORE) == 'yes'">
<image_name>/backup/base.hfi</image_name>
<devicename>/dev/sdc1</devicename>
</command>
<command name="validate image"><image_name>/backup/base.hfi</image_name></command>
<command name="mount image"><image_name>/backup/base.hfi</image_name><driveletter>/mnt/x</driveletter></command>
<command name="dismount image"><driveletter>/mnt/x</driveletter></command>
</Job></DiskImage>
XML
printf '%s\n' '<!DOCTYPE x [<!ENTITY a "aaaa">]><DiskImageJob>&a;</DiskImageJob>' >"$k/doctype"
printf '%s\n' '<BackupJob><command name="create backup"><target>C:\\</target></command></BackupJob>' >"$k/windows"
echo "seeds in $c: $(find $c -type f | wc -l) files"
