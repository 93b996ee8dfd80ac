#!/bin/sh
# Turn RabbitMQ's silent drops into dead letters: give the queues of a vhost a dead-letter
# exchange (orders.dlx, fanout) and a dead-letter queue behind it (orders.dead), through one
# policy. Then a message that expires (per-message or per-queue TTL), is pushed out by a length
# limit (overflow drop-head, the default, or reject-publish-dlx), passes a quorum queue's delivery
# limit (20 by default since RabbitMQ 4.0), or is rejected without requeue lands in orders.dead,
# with its headers (traceparent, baggage) and RabbitMQ's x-death record, instead of vanishing.
#
#   deploy/rabbitmq/dead-letter-policy.sh [-p vhost] [-r pattern] [-n priority] [-f]
#
#   -p  vhost (default /)
#   -r  queues the policy applies to, an Erlang (PCRE) regex (default: every queue except
#       server-named amq.* queues and the dead-letter queue itself)
#   -n  policy priority (default 0)
#   -x / -q / -N  exchange, queue and policy names (default orders.dlx, orders.dead, dead-letter)
#   -f  set the policy even though the vhost has other policies (read "One policy per queue")
#
# It runs rabbitmqctl; against the compose stack, run it through the container:
#   RABBITMQCTL="docker compose -f deploy/compose.yaml --env-file deploy/.env exec -T rabbitmq rabbitmqctl" \
#     deploy/rabbitmq/dead-letter-policy.sh -p /
#
# One policy per queue. RabbitMQ applies exactly one (user) policy to a queue: of the policies
# whose pattern and apply-to match, the one with the highest priority; their definitions are NOT
# merged, and between equal priorities the choice is not defined (rabbit_policy.erl, match/2 and
# priority_comparator/2: the same in 3.10.8, 3.13.7, 4.1.0 and 4.3.5). So this policy and any
# other policy matching the same queues exclude each other. The script stops when the vhost has
# other policies; add "dead-letter-exchange":"orders.dlx" to each of their definitions
# (rabbitmqctl set_policy with the same name, pattern, priority and apply-to), then rerun with -f
# and a priority below theirs, so this one covers only the queues no other policy matches.
# Operator policies (set_operator_policy) are different: they are merged with the user policy,
# the lower of two numeric limits winning (merge_operator_definitions/2), and cannot set a
# dead-letter exchange (only expires, message-ttl, max-length(-bytes), delivery-limit and a few
# more: rabbit_policies.erl, operator_policy_validator), so they need nothing here. A queue
# declared with its own x-dead-letter-exchange keeps it: the argument wins over the policy.
set -eu

vhost=/
pattern=
priority=0
exchange=orders.dlx
queue=orders.dead
policy=dead-letter
force=no
rabbitmqctl=${RABBITMQCTL:-rabbitmqctl}
# seconds to wait for the definitions import (asynchronous) to show the queue and its binding
wait_s=${DEAD_LETTER_IMPORT_WAIT_S:-60}

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while getopts "p:r:n:x:q:N:fh" opt; do
    case $opt in
        p) vhost=$OPTARG ;;
        r) pattern=$OPTARG ;;
        n) priority=$OPTARG ;;
        x) exchange=$OPTARG ;;
        q) queue=$OPTARG ;;
        N) policy=$OPTARG ;;
        f) force=yes ;;
        *) usage ;;
    esac
done

# Names go into JSON and regexes below: allow what RabbitMQ deployments use, nothing that needs
# escaping in JSON.
for name in "$vhost" "$exchange" "$queue" "$policy"; do
    case $name in
        '' | *[!A-Za-z0-9._:/@+-]*)
            echo "dead-letter-policy: unsupported name '$name' (letters, digits and . _ : / @ + - only)" >&2
            exit 2
            ;;
    esac
done
case $priority in
    '' | *[!0-9-]*) echo "dead-letter-policy: priority must be an integer" >&2; exit 2 ;;
esac
if [ -z "$pattern" ]; then
    escaped=$(printf '%s' "$queue" | sed 's/[].[\\*^$()+?{}|]/\\&/g')
    pattern="^(?!amq\\.|${escaped}\$)"
fi

# Word splitting of $rabbitmqctl is wanted (a command with arguments); no globbing.
set -f
ctl() {
    # shellcheck disable=SC2086
    $rabbitmqctl "$@"
}

if ! ctl list_vhosts -q --no-table-headers name | grep -Fqx -- "$vhost"; then
    echo "dead-letter-policy: no vhost '$vhost' (rabbitmqctl list_vhosts)" >&2
    exit 1
fi

others=$(ctl list_policies -p "$vhost" -q --no-table-headers | awk -F '\t' -v ours="$policy" 'NF >= 2 && $2 != ours { print $2 " (pattern " $3 ", priority " $6 ")" }')
if [ -n "$others" ] && [ "$force" = no ]; then
    cat >&2 <<EOF
dead-letter-policy: vhost '$vhost' already has policies, and RabbitMQ applies only one policy
per queue (the highest priority; definitions are not merged):
$(printf '%s\n' "$others" | sed 's/^/  /')
Add "dead-letter-exchange":"$exchange" to each of their definitions, then run again with -f and
a priority (-n) below theirs. Nothing was changed.
EOF
    exit 3
fi
operator=$(ctl list_operator_policies -p "$vhost" -q --no-table-headers | awk -F '\t' 'NF >= 2 { print $2 }')
if [ -n "$operator" ]; then
    echo "dead-letter-policy: operator policies in '$vhost' ($(echo "$operator" | tr '\n' ' ')) are merged with this one; their limits now dead-letter." >&2
fi

# The exchange first: a dead-letter exchange that does not exist drops every dead letter.
ctl import_definitions >/dev/null <<EOF
{
  "exchanges": [{"name": "$exchange", "vhost": "$vhost", "type": "fanout", "durable": true,
                 "auto_delete": false, "internal": false, "arguments": {}}],
  "queues": [{"name": "$queue", "vhost": "$vhost", "durable": true, "auto_delete": false,
              "arguments": {"x-queue-type": "classic"}}],
  "bindings": [{"source": "$exchange", "vhost": "$vhost", "destination": "$queue",
                "destination_type": "queue", "routing_key": "", "arguments": {}}]
}
EOF

# import_definitions returns before the import is done (RabbitMQ 3.10 and later say so).
waited=0
until ctl list_bindings -p "$vhost" -q --no-table-headers source_name destination_name |
    awk -F '\t' -v x="$exchange" -v q="$queue" '$1 == x && $2 == q { found = 1 } END { exit !found }'; do
    if [ "$waited" -ge "$wait_s" ]; then
        echo "dead-letter-policy: $exchange -> $queue did not appear within ${wait_s}s; policy not set" >&2
        exit 1
    fi
    sleep 1
    waited=$((waited + 1))
done

ctl set_policy -p "$vhost" --priority "$priority" --apply-to queues \
    "$policy" "$pattern" "{\"dead-letter-exchange\":\"$exchange\"}" >/dev/null

echo "dead-letter-policy: vhost '$vhost': queues matching $pattern dead-letter to $exchange -> $queue (policy '$policy', priority $priority)"
