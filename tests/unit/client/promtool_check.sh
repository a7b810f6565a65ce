#!/bin/sh
# Checks deploy/prometheus with promtool: the alert rules, the config (and
# the rule files it names), and the alert rules' unit tests.
# Usage: promtool_check.sh DIR
set -eu
dir=${1:?usage: promtool_check.sh DIR}
if ! command -v promtool >/dev/null 2>&1; then
  echo "FAIL: promtool not found; install the Debian package 'prometheus'" >&2
  exit 1
fi
cd "$dir"
promtool check rules alerts.yml
promtool check config prometheus.yml
promtool test rules alerts_test.yml
