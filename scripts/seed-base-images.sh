#!/usr/bin/env bash
# Makes the runtime base images the Dockerfile names available to the Docker daemon in DOCKER_HOST
# (or the default one) under local names, for a machine that reaches no container registry:
#
#   scripts/seed-base-images.sh        prints one --build-arg line per base image it provides
#
#   DEBIAN_IMAGE   parley-seed/debian:bookworm-slim         Debian bookworm, trimmed as -slim is
#   RUNTIME_IMAGE  parley-seed/cc-debian12:nonroot          distroless-like: glibc, libgcc_s, CA
#                                                           bundle, netbase, passwd with nonroot
#                                                           (65532), /tmp; no shell, no package manager
#
# For each, in order: the local name already there (a second run costs nothing); else a
# `docker pull` of the digest the Dockerfile pins (its ARG default), tagged with the local name;
# else seeded from Debian: `debootstrap --variant=minbase bookworm` into a folder, trimmed, and
# `docker import`ed. The seeded root filesystems are kept as tarballs in PARLEY_SEED_CACHE
# (default /var/cache/parley-seed), keyed by this script's hash, so later runs only import them.
# The Rust builder image (RUST_IMAGE) is not seeded: Debian has no Rust 1.90. Build with
# BINARIES=host on such a machine.
#
# Env: DOCKER (the client command, default docker), DEBIAN_MIRROR (default
# http://deb.debian.org/debian). Needs root and debootstrap only when it has to seed.
set -euo pipefail

cd "$(dirname "$0")/.."
read -r -a docker <<<"${DOCKER:-docker}"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
cache_root=${PARLEY_SEED_CACHE:-/var/cache/parley-seed}
key=$(sha256sum "$0" | cut -c1-12)
cache=$cache_root/$key

say() { echo "seed: $*" >&2; }
die() {
  echo "seed: error: $*" >&2
  exit 1
}

# The digest-pinned default of a Dockerfile ARG.
pinned() { sed -n "s/^ARG $1=//p" Dockerfile | head -n 1; }

have() { "${docker[@]}" image inspect "$1" >/dev/null 2>&1; }

# Seeds both root filesystems into $cache (debian.tar, runtime.tar) unless they are there.
seed_rootfs() {
  [[ -f $cache/debian.tar && -f $cache/runtime.tar ]] && return 0
  [[ $(id -u) -eq 0 ]] || die "seeding needs root (debootstrap)"
  command -v debootstrap >/dev/null || die "seeding needs debootstrap (apt-get install debootstrap)"
  mkdir -p "$cache_root"
  # What an interrupted run left (debootstrap mounts /proc and /sys in its tree while it works).
  local m
  awk -v r="$cache_root/work." 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" || true
  done
  rm -rf --one-file-system "$cache_root"/work.*
  local work
  work=$(mktemp -d "$cache_root/work.XXXXXX")
  local root=$work/debian
  say "debootstrap bookworm (minbase) from $mirror into $root"
  local started=$SECONDS
  debootstrap --variant=minbase --include=ca-certificates,netbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || die "debootstrap failed: $(tail -n 5 "$work/debootstrap.log")"
  say "debootstrap took $((SECONDS - started)) s"

  # The runtime base: only what a dynamically linked Rust binary needs (the files of libc6,
  # libgcc-s1 and netbase, as dpkg lists them), the CA bundle and the users; no shell.
  local rt=$work/runtime
  mkdir -p "$rt"/{etc/ssl/certs,tmp,home/nonroot,usr/bin,usr/sbin,usr/lib,usr/lib64,usr/local/bin,var/lib/dpkg/status.d}
  for l in bin sbin lib lib64; do
    if [[ -L $root/$l ]]; then cp -a "$root/$l" "$rt/$l"; else mkdir -p "$rt/$l"; fi
  done
  local pkg list
  for pkg in libc6 libgcc-s1 netbase; do
    list=$root/var/lib/dpkg/info/$pkg:amd64.list
    [[ -f $list ]] || list=$root/var/lib/dpkg/info/$pkg.list
    [[ -f $list ]] || die "no dpkg file list for $pkg in the debootstrap tree"
    # Files and symlinks only (directories come with them), no documentation.
    while IFS= read -r p; do
      [[ $p == /usr/share/doc/* || $p == /usr/share/lintian/* ]] && continue
      [[ -d $root$p && ! -L $root$p ]] && continue
      [[ -e $root$p || -L $root$p ]] && printf '.%s\n' "$p"
    done <"$list" >"$work/$pkg.files"
    tar -C "$root" --no-recursion -cf - -T "$work/$pkg.files" | tar -C "$rt" -xf -
    # What dpkg-based scanners read to know the packages (as distroless images carry).
    dpkg-query --admindir="$root/var/lib/dpkg" -s "$pkg" >"$rt/var/lib/dpkg/status.d/$pkg"
  done
  cp "$root/etc/ssl/certs/ca-certificates.crt" "$rt/etc/ssl/certs/"
  cp -L "$root/etc/os-release" "$rt/etc/os-release"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rt/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$rt/etc/group"
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rt/etc/nsswitch.conf"
  chmod 1777 "$rt/tmp"
  chown 65532:65532 "$rt/home/nonroot"
  [[ ! -e $rt/bin/sh && ! -e $rt/usr/bin/sh ]] || die "the runtime base has a shell"

  # The Debian base, trimmed as debian:bookworm-slim is: no documentation, man pages or locales,
  # and dpkg told to leave them out of later installs; apt's lists and caches emptied.
  rm -rf "${root:?}"/usr/share/{doc,man,info,locale}/* "${root:?}"/var/cache/apt/* "${root:?}"/var/lib/apt/lists/* \
    "${root:?}"/var/log/* "${root:?}"/var/cache/debconf/*-old "${root:?}"/dev/*
  mkdir -p "$root/usr/share/doc" "$root/etc/dpkg/dpkg.cfg.d" "$root/etc/apt/apt.conf.d" "$root/etc/apt/sources.list.d"
  printf 'path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\n' \
    >"$root/etc/dpkg/dpkg.cfg.d/docker"
  printf 'APT::Install-Recommends "false";\nDPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };\n' \
    >"$root/etc/apt/apt.conf.d/docker-clean"
  rm -f "$root/etc/apt/sources.list"
  printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$mirror" >"$root/etc/apt/sources.list.d/debian.sources"
  : >"$root/etc/resolv.conf"
  echo parley-seed >"$root/etc/hostname"

  mkdir -p "$cache"
  tar -C "$rt" --numeric-owner -cf "$cache/runtime.tar.part" . && mv "$cache/runtime.tar.part" "$cache/runtime.tar"
  tar -C "$root" --numeric-owner -cf "$cache/debian.tar.part" . && mv "$cache/debian.tar.part" "$cache/debian.tar"
  # Older seeds (another version of this script) go.
  find "$cache_root" -mindepth 1 -maxdepth 1 -type d ! -name "$key" ! -name 'work.*' -exec rm -rf {} +
  rm -rf --one-file-system "$work"
  say "seeded into $cache: debian.tar $(du -h "$cache/debian.tar" | cut -f1), runtime.tar $(du -h "$cache/runtime.tar" | cut -f1)"
}

# provide ARG LOCAL_NAME: prints "ARG=LOCAL_NAME" once the daemon has LOCAL_NAME.
provide() {
  local arg=$1 name=$2 ref
  ref=$(pinned "$arg")
  [[ -n $ref ]] || die "the Dockerfile has no ARG $arg=<image>"
  if have "$name"; then
    say "$name is there (for $arg)"
  elif timeout 60 "${docker[@]}" pull -q "$ref" >/dev/null 2>&1; then
    "${docker[@]}" tag "$ref" "$name"
    say "$name: pulled $ref"
  else
    say "$name: pulling $ref failed; seeding it from Debian"
    seed_rootfs
    local changes=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin')
    if [[ $arg == RUNTIME_IMAGE ]]; then
      changes+=(--change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' --change 'USER 65532:65532'
        --change 'WORKDIR /home/nonroot')
      "${docker[@]}" import "${changes[@]}" "$cache/runtime.tar" "$name" >/dev/null
    else
      "${docker[@]}" import "${changes[@]}" --change 'CMD ["bash"]' "$cache/debian.tar" "$name" >/dev/null
    fi
    say "$name: imported from the Debian seed"
  fi
  echo "$arg=$name"
}

provide DEBIAN_IMAGE parley-seed/debian:bookworm-slim
provide RUNTIME_IMAGE parley-seed/cc-debian12:nonroot
