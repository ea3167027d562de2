#!/bin/sh
# One-shot lab provisioning (compose service `provision`): imports the do-not-call lists the lab trunk checks,
# with the test numbers docs/sipp.md uses, into the shared Redis store. Idempotent: re-imports replace.
set -eu
CONFIG=${SIPFILTER_CONFIG:-/etc/sipfilter/sipfilter.yaml}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
printf '%s\n' +33612000100 > "$WORK/bloctel.txt"
printf '%s\n' +33612000101 > "$WORK/optouts.txt"
sipfilter lists import --config "$CONFIG" --list bloctel "$WORK/bloctel.txt" --quiet
sipfilter lists import --config "$CONFIG" --list optouts "$WORK/optouts.txt" --quiet
sipfilter lists show --config "$CONFIG"
