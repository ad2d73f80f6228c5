#!/bin/sh
# Container start-up: migrate, sync the QStash schedules, then hand over to the server (CMD).
# A one-off `flask ...` command given instead of the server runs on its own.
set -eu

say() {
    # One JSON object per line, like the service's own logs.
    printf '{"level":"%s","logger":"entrypoint","message":"%s"}\n' "$1" \
        "$(printf '%s' "$2" | tr '\n' ' ' | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

# `docker run IMAGE flask qstash update --dry-run`, `flask db downgrade ...`: migrating and
# syncing first would apply what the command was run to preview, or undo.
if [ "${1:-}" = "flask" ]; then
    exec "$@"
fi

case "$(printf '%s' "${QSTASH_UPDATE_STRICT:-false}" | tr '[:upper:]' '[:lower:]')" in
    true | 1 | yes | on) strict=true ;;
    *) strict=false ;;
esac

errors=$(mktemp)
if ! flask db upgrade 2>"$errors"; then
    # The command's last line says what failed: the database, or a setting it names.
    reason=$(tail -n 1 "$errors" | sed 's/^Error: //')
    cat "$errors" >&2
    rm -f "$errors"
    say error "start-up stopped at the database migration: $reason"
    exit 1
fi

status=0
flask qstash update 2>"$errors" || status=$?
reason=$(sed 's/^Error: //' "$errors")
cat "$errors" >&2
rm -f "$errors"
case "$status" in
    0)
        say info "QStash schedules are in sync"
        ;;
    3)
        if [ "$strict" = true ]; then
            say error "schedules were not created or updated: $reason; exiting because QSTASH_UPDATE_STRICT is set"
            exit "$status"
        fi
        say warning "schedules were not created or updated: $reason"
        ;;
    *)
        if [ "$strict" = true ]; then
            say error "flask qstash update failed (exit $status); exiting because QSTASH_UPDATE_STRICT=true"
            exit "$status"
        fi
        say error "flask qstash update failed (exit $status): $reason. Schedules may be missing or stale; starting anyway. Fix the cause, then run flask qstash update"
        ;;
esac

exec "$@"
