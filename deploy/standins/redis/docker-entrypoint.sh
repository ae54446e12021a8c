#!/bin/bash
# The official image's contract: a first argument starting with '-' is for redis-server; the
# server runs as the redis user, owning /data; protected mode is off unless an argument says.
set -euo pipefail

if [[ ${1:-} == -* ]]; then
    set -- redis-server "$@"
fi
if [[ ${1:-} == redis-server ]]; then
    if [[ $(id -u) == 0 ]]; then
        chown -R redis:redis .
        exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
    fi
    shift
    config=()
    # redis-server [config file] [--option value]...: the default goes after the file and
    # before the options, so that an option given wins.
    if [[ $# -gt 0 && $1 != -* ]]; then
        config=("$1")
        shift
    fi
    exec redis-server "${config[@]}" --protected-mode no "$@"
fi
exec "$@"
