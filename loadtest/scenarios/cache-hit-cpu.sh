#!/usr/bin/env bash
# CPU microseconds per cache hit beside nginx `return 200`: proxy-cpu.sh's cache-hit scenario.
# Run:   loadtest/scenarios/cache-hit-cpu.sh [seconds-per-run] [runs]
SCENARIO=cache-hit exec "$(dirname "$0")/proxy-cpu.sh" "$@"
