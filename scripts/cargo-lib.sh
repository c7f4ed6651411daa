# shellcheck shell=bash
# Sourced by the scripts that package binaries cargo built on this host (e2e/images.sh,
# e2e/image-test.sh): where cargo puts them, and a set of them fresh against the sources.
# Run from the workspace's root.

# Where cargo puts its builds (CARGO_TARGET_DIR or the workspace's target/).
cargo_target_dir() {
  cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}

# stale PATH: the binary is missing, or a source or manifest changed since it was built.
stale() {
  [[ ! -x $1 ]] || [[ -n $(find Cargo.lock ./*/Cargo.toml ./*/src -newer "$1" -print -quit 2>/dev/null) ]]
}

# fresh_binaries DIR PROFILE BIN...: builds each BIN (a package with a binary of the same name) of
# PROFILE (debug or release) that is missing or stale in DIR (the target dir's PROFILE/).
fresh_binaries() {
  local dir=$1 profile=$2 bin
  shift 2
  for bin in "$@"; do
    if stale "$dir/$bin"; then
      echo "$dir/$bin is missing or older than the sources: building it" >&2
      if [[ $profile == release ]]; then
        cargo build --release -p "$bin" --bin "$bin"
      else
        cargo build -p "$bin" --bin "$bin"
      fi
    fi
  done
}
