#!/bin/sh
# Substitute only the ${PGVOTE_*} variables of each /etc/nginx/templates/*.template into conf.d/
# (nginx's own $variables stay), like the official nginx image's 20-envsubst-on-templates.sh.
set -eu
variables="$(env | sed -n 's/^\(PGVOTE_[A-Z0-9_]*\)=.*/${\1}/p' | tr '\n' ' ')"
for template in /etc/nginx/templates/*.template; do
    envsubst "$variables" < "$template" > "/etc/nginx/conf.d/$(basename "$template" .template)"
done
