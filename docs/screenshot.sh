#!/usr/bin/env bash
# Render an audit.html headless and save a full-page screenshot (docs/audit.png).
#
# Usage: docs/screenshot.sh [AUDIT_HTML] [OUTPUT_PNG] [HEIGHT]
#   AUDIT_HTML  default: audits/latest/audit.html (from `fedrisk audit report RUN -o audits/latest`)
#   OUTPUT_PNG  default: docs/audit.png
#   HEIGHT      window height in pixels (the page is one long column), default 9000
#
# Needs Debian's chromium (`apt-get update && apt-get install -y chromium`). The page is
# self-contained (plots are base64 PNGs), so chromium runs with networking features off.
# The checked-in docs/audit.png was made from the lending_club DP run audited with
# `--compare` against the --no-dp run (see the README section "Privacy audit").
set -euo pipefail
html="$(realpath "${1:-audits/latest/audit.html}")"
png="${2:-docs/audit.png}"
height="${3:-9000}"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
  --user-data-dir="$profile" --screenshot="$png" --window-size=1280,"$height" \
  "file://$html" 2>/dev/null
echo "wrote $png"
