#!/usr/bin/env python3
"""Sums a heaptrack flame-graph stack file (cost type: peak) by allocation site: the innermost
frame of Parley's own code in each stack, so that the bytes held at the peak are charged to the
code that keeps them (a subscription's index, a server transaction, the store), not to
`alloc::alloc`. Usage: heap-sites.py STACKS [TOP]"""
import sys, re, collections
by_site = collections.Counter()
total = 0
for line in open(sys.argv[1]):
    line = line.rstrip("\n")
    stack, _, n = line.rpartition(" ")
    n = int(n); total += n
    frames = [f.split(" (")[0] for f in stack.split(";") if f]
    # innermost frame of our own code (root first in the stack file)
    ours = [f for f in frames if "parley_server" in f or "parley_sip" in f]
    site = ours[-1] if ours else (frames[-1] if frames else "?")
    site = re.sub(r"::h[0-9a-f]{16}$", "", site)
    site = re.sub(r"_\$LT\$|\$GT\$|\$u20\$|\$C\$|\$u7b\$|\$u7d\$", " ", site)
    by_site[site] += n
print(f"total at peak: {total/1048576:.1f} MiB")
for site, n in by_site.most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 25):
    print(f"{n/1048576:8.1f} MiB  {site[:150]}")
