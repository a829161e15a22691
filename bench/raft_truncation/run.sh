#!/bin/bash
# usage: bench/raft_truncation/run.sh CYCLES: 3 pysyncobj nodes on 127.0.0.1:17101-17103 (node.py), a random one
# killed (SIGKILL or SIGTERM) and restarted CYCLES times; prints the CRITICAL "truncating already-applied" count per
# node. SAFE=1 runs them on the agent's SyncObj (agent.consensus.safe_syncobj). Files in a temp dir (printed).
here=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
case $PY in */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac  # before the cd below: PYTHON=.venv/bin/python works
work=$(mktemp -d /tmp/raft-truncation-XXXX); echo "logs in $work/out"
cd "$work"
mkdir -p out
export PYTHONPATH="$here:$(cd "$here/../.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"
PORTS=17101,17102,17103
declare -A PID
start() { $PY "$here/node.py" $1 $PORTS data/$1 >> out/$1.log 2>&1 & PID[$1]=$!; echo ${PID[$1]} >> out/pids; }
for p in 17101 17102 17103; do start $p; done
sleep ${WARM:-4}
for c in $(seq 1 ${1:-10}); do
  victim=$((17101 + RANDOM % 3))
  if [ $((RANDOM % 2)) = 0 ]; then kill -9 ${PID[$victim]}; else kill ${PID[$victim]}; fi
  wait ${PID[$victim]} 2>/dev/null
  sleep ${DOWN:-1.5}
  start $victim
  sleep ${UP:-3}
done
for p in 17101 17102 17103; do kill ${PID[$p]} 2>/dev/null; done
sleep 2
for p in 17101 17102 17103; do kill -9 ${PID[$p]} 2>/dev/null; done
wait
grep -c CRITICAL out/*.log
grep -h EXIT out/*.log
