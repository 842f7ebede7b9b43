#!/usr/bin/env bash
# Produce pre-encoded streamproc chunks with kcat.
#
# kcat sends bytes; it does not speak Avro. The values come from the encode mode of the Go (or
# Java) example, which writes one single-object-encoded value per file and a manifest.tsv of
# "lane<TAB>key<TAB>file" lines:
#
#   (cd examples/go && go run . -encode-to /tmp/chunks -input ../chunks.jsonl)
#   examples/kcat/produce.sh localhost:9092 chunks /tmp/chunks
#
# Each value goes to <prefix>.<lane> (bulk for low_priority chunks, realtime for the others) with
# the chunk's key, as one message per file.
set -euo pipefail

if [ $# -ne 3 ]; then
  echo "usage: $0 BOOTSTRAP_SERVERS TOPIC_PREFIX ENCODED_DIR" >&2
  exit 2
fi
bootstrap=$1
prefix=$2
dir=$3
manifest="$dir/manifest.tsv"
[ -f "$manifest" ] || { echo "$0: no $manifest (run the Go example with -encode-to $dir)" >&2; exit 2; }

realtime=0
bulk=0
while IFS=$'\t' read -r lane key file; do
  case "$lane" in
    realtime) realtime=$((realtime + 1)) ;;
    bulk) bulk=$((bulk + 1)) ;;
    *) echo "$0: unknown lane '$lane' in $manifest" >&2; exit 1 ;;
  esac
  # Idempotent, acknowledged by all in-sync replicas, and murmur2 partitioning (the Java
  # client's) instead of librdkafka's CRC32 default, so a key lands on the same partition as
  # when the Java, Go or Node example produces it. kcat exits non-zero if delivery fails (a
  # message not acknowledged within a minute fails).
  kcat -P -b "$bootstrap" -t "$prefix.$lane" -k "$key" \
    -X enable.idempotence=true -X acks=all -X partitioner=murmur2_random -X message.timeout.ms=60000 \
    "$dir/$file"
done < "$manifest"
echo "produced $((realtime + bulk)) chunks: $realtime realtime, $bulk bulk"
