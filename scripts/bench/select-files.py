#!/usr/bin/env python3
"""Pick a deterministic sample of system files for the benchmark volume.

Usage: select-files.py BUDGET_BYTES ROOT... > list   (NUL-separated paths)

Whole directories are taken (their regular files and symlinks, not their
subdirectories), in the order of the SHA-1 of the directory path, until the
regular files add up to BUDGET_BYTES (a file hard-linked several times counts
once, as tar stores it once). The result is a mix of every kind of
system file in realistic, complete directories, and the same on every machine
with the same files. The list is printed sorted by path, without the leading
slash (for tar -C /). Standard library only.
"""
import hashlib
import os
import stat
import sys

MAX_FILE = 128 << 20  # skip single files larger than this (core dumps, blobs)


def main() -> int:
    budget = int(sys.argv[1])
    dirs = []
    for root in sys.argv[2:]:
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            entries, files = [], []
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    if st.st_size > MAX_FILE or not os.access(path, os.R_OK):
                        continue
                    files.append((st.st_dev, st.st_ino, st.st_size))
                elif not stat.S_ISLNK(st.st_mode):
                    continue
                entries.append(path)
            if entries:
                key = hashlib.sha1(dirpath.encode("utf-8", "surrogateescape")).hexdigest()
                dirs.append((key, dirpath, files, entries))
    dirs.sort()
    chosen, total = [], 0
    seen = set()  # (dev, ino) of the regular files already counted
    for _key, _dirpath, files, entries in dirs:
        if total >= budget:
            break
        new = {(dev, ino): size for dev, ino, size in files if (dev, ino) not in seen}
        size = sum(new.values())
        if total + size > budget * 1.05 and size > 16 << 20:
            continue  # a big directory that would overshoot: try smaller ones
        chosen.extend(entries)
        seen.update(new)
        total += size
    chosen.sort()
    out = sys.stdout.buffer
    for path in chosen:
        out.write(path.lstrip("/").encode("utf-8", "surrogateescape") + b"\0")
    print(f"selected {len(chosen)} entries, {total} bytes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
