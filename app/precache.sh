#!/usr/bin/env bash
# Trunk post-build hook: list the built shell files for the service worker's precache, with a
# content hash so a new build installs a new service worker.
set -euo pipefail
cd "$TRUNK_STAGING_DIR"
files=$(find . -type f ! -name sw.js ! -name precache.json ! -path './models/*' | sed 's|^\./||' | sort)
version=$(echo "$files" | xargs sha256sum | sha256sum | cut -c1-16)
{
  printf '{"version":"%s","files":[' "$version"
  echo "$files" | sed 's/.*/"&"/' | paste -sd, -
  printf ']}\n'
} > precache.json
# The service worker's bytes must change with the build, or the browser keeps the old one.
sed -i "s/orfeas-shell-v1/orfeas-shell-$version/" sw.js
