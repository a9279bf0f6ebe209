#!/usr/bin/env python3
"""The data an ideal block-level incremental has to store.

Usage: changed-blocks.py OLD_IMAGE NEW_IMAGE OUT_FILE

Compares the two images in 4 KiB blocks, skipping blocks that are all zero in
NEW_IMAGE (never written: holes and unused space of a fresh filesystem), and
writes the blocks of NEW_IMAGE that differ from OLD_IMAGE, concatenated, to
OUT_FILE. Prints one line of key=value figures. Standard library only.
"""
import sys

BLOCK = 4096
CHUNK = 256 * BLOCK  # 1 MiB


def main() -> int:
    old_path, new_path, out_path = sys.argv[1:4]
    zero = bytes(BLOCK)
    zero_chunk = bytes(CHUNK)
    total = nonzero = changed = 0
    with open(old_path, "rb") as old, open(new_path, "rb") as new, open(out_path, "wb") as out:
        while True:
            b = new.read(CHUNK)
            if not b:
                break
            a = old.read(len(b))
            n = len(b) // BLOCK
            total += n
            if b == zero_chunk:
                continue
            if a == b:
                # all non-zero blocks of this chunk are unchanged: count them
                for i in range(n):
                    if b[i * BLOCK:(i + 1) * BLOCK] != zero:
                        nonzero += 1
                continue
            for i in range(n):
                nb = b[i * BLOCK:(i + 1) * BLOCK]
                if nb == zero:
                    continue
                nonzero += 1
                if a[i * BLOCK:(i + 1) * BLOCK] != nb:
                    changed += 1
                    out.write(nb)
    print(
        f"blocks={total} nonzero_blocks={nonzero} changed_blocks={changed} "
        f"changed_bytes={changed * BLOCK}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
