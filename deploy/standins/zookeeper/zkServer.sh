#!/bin/bash
# `zkServer.sh start-foreground [config]`, as the official image runs it: the server in the
# foreground, logging to the console (log4j through slf4j: without the binding on the class
# path the server logs nothing at all), with $JVMFLAGS. (Debian's own zkServer.sh reads
# /etc/zookeeper and logs to files.)
set -euo pipefail
case ${1:-} in
start-foreground) ;;
*)
    echo "zkServer.sh (fleetmeter's stand-in image): only 'start-foreground [config]' is supported" >&2
    exit 2
    ;;
esac
config=${2:-$ZOO_CONF_DIR/zoo.cfg}
# shellcheck disable=SC2086 # JVMFLAGS is a list of options.
exec java -Dzookeeper.log.dir="$ZOO_LOG_DIR" -Dzookeeper.root.logger=INFO,CONSOLE \
    ${JVMFLAGS:-} \
    -cp "$ZOO_CONF_DIR:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar" \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$config"
