#!/bin/sh
# Render the lamini-serve nginx template into a config nginx can include inside `http {}`.
#
#   LAMINI_UPSTREAMS  replica addresses host:port, space or comma separated (required);
#                     a host name that resolves to several addresses (compose replicas) counts
#                     as several replicas
#   LAMINI_LB_PORT    port nginx listens on (default 8080)
#
# usage: render-config.sh [TEMPLATE [OUTPUT]]
set -eu

here=$(dirname "$0")
template=${1:-$here/lamini.conf.template}
output=${2:-/etc/nginx/conf.d/default.conf}
: "${LAMINI_UPSTREAMS:?set LAMINI_UPSTREAMS to the replica addresses, e.g. lamini:8080}"
LAMINI_LB_PORT=${LAMINI_LB_PORT:-8080}

servers=""
for address in $(echo "$LAMINI_UPSTREAMS" | tr ',' ' '); do
    servers="${servers}server ${address} max_fails=2 fail_timeout=10s;
    "
done

LAMINI_UPSTREAM_SERVERS=$servers
export LAMINI_UPSTREAM_SERVERS LAMINI_LB_PORT
envsubst '${LAMINI_UPSTREAM_SERVERS} ${LAMINI_LB_PORT}' <"$template" >"$output"
