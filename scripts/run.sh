#!/usr/bin/env bash
# `make run`: Parley's main job on its embedded default.
set -euo pipefail
echo "make run: the standalone Home Server is not built yet (issue: Server sign-in and IM)."
echo "It will start parley-server on 127.0.0.1 with a sample file directory (alice, bob, carol @ example.test)."
