#!/usr/bin/env bash
# Runs as root while the image is built: the data directories the service writes to, owned by BentoML's
# non-root user (uid/gid 1034 in generated images), so they work with and without mounted volumes.
set -euxo pipefail
install -d -o 1034 -g 1034 -m 0755 /data /data/checkpoints /data/output /data/state /data/inputs
