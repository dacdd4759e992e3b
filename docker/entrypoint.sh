#!/bin/sh
# Start hush: build the default store first if it is empty (HUSH_BOOTSTRAP=1), then run the command.
#   serve      the HTTP server (default)
#   bootstrap  only build the store (the one-shot store-init service of docker-compose)
#   anything else is run as a hush subcommand, e.g. `store ls`
set -eu
command="${1:-serve}"
if [ "$command" = "bootstrap" ]; then
    exec hush store bootstrap
fi
if [ "${HUSH_BOOTSTRAP:-1}" = "1" ]; then
    hush store bootstrap
fi
if [ "$command" = "serve" ]; then
    exec hush serve --host "${HUSH_SERVER__HOST:-0.0.0.0}" --port "${HUSH_SERVER__PORT:-8000}"
fi
exec hush "$@"
