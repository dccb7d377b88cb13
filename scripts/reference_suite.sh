#!/usr/bin/env bash
# The drop-in check: the reference framework's own test suite, run as it is
# and with its spark/nodes/channels.py replaced by ours (compiled, then pure),
# must give the same result, test for test; and its event bus tests must
# pass against our spark package.
#
#   scripts/reference_suite.sh REFERENCE_CHECKOUT PYTHON
#
# REFERENCE_CHECKOUT: a checkout of github.com/wensheng/spark (nothing of it
# is copied into this repository); PYTHON: an interpreter with the reference's
# test dependencies installed (it needs Python >= 3.12). Our compiled core must
# be built in place for that CPython version first (`python setup.py
# build_ext --inplace` with a Python of that version that has Cython).
# Exits 1 if a result differs.
set -euo pipefail
reference=$(cd "$1" && pwd)
python=$2
ours=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

suffix=$("$python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
if [ ! -f "$ours/spark/nodes/_channels_c$suffix" ]; then
    echo "build the compiled core for $python first: spark/nodes/_channels_c$suffix is missing" >&2
    exit 1
fi

run() {  # run NAME TREE [ENV...]: the sorted list of failed and erroring tests
    local name=$1 tree=$2
    shift 2
    (cd "$tree" && env "$@" "$python" -m pytest -q -p no:cacheprovider -o addopts=-ra tests \
        >"$work/$name.log" 2>&1 || true)
    grep -E '^(FAILED|ERROR) ' "$work/$name.log" | sed 's/ - .*//' | sort >"$work/$name.failed" || true
    echo "$name: $(grep -E '[0-9]+ (passed|failed)' "$work/$name.log" | tail -1)"
}

cp -r "$reference" "$work/original"
cp -r "$reference" "$work/swapped"
rm -rf "$work/original/.git" "$work/swapped/.git"
cp "$ours"/spark/nodes/{channels.py,_bridge.py,_broadcast_py.py,_channel_base.py,_channels_py.py,_copying.py,_select_py.py,_threads.py} \
    "$ours/spark/nodes/_channels_c$suffix" "$work/swapped/spark/nodes/"

active=$(cd "$work/swapped" && SPARK_NO_EXTENSIONS= "$python" -c \
    'import spark.nodes.channels as c; print(c.IMPLEMENTATION, c.__file__)')
case $active in
    "cython $work/swapped/"*) ;;
    *) echo "our compiled channels are not the ones active in the copy: $active" >&2; exit 1 ;;
esac

run original "$work/original"
run compiled "$work/swapped" SPARK_NO_EXTENSIONS=
run pure "$work/swapped" SPARK_NO_EXTENSIONS=1
passed() { grep -oE '[0-9]+ passed' "$work/$1.log" | tail -1; }
status=0
for build in compiled pure; do
    if diff "$work/original.failed" "$work/$build.failed" >"$work/$build.diff" \
        && [ "$(passed original)" = "$(passed "$build")" ]; then
        echo "$build: the same result as the original, test for test"
    else
        echo "$build: differs from the original:"; cat "$work/$build.diff"; status=1
    fi
done
# The reference's event bus tests, run against our spark package (both builds).
mkdir "$work/bus"
cp "$reference"/tests/unit/test_event_bus_replay.py "$reference"/tests/unit/test_channels_and_bus.py "$work/bus/"
for build in compiled pure; do
    no_ext=$([ $build = pure ] && echo 1 || true)
    if (cd "$work/bus" && PYTHONPATH="$ours" SPARK_NO_EXTENSIONS=$no_ext "$python" -m pytest -q \
        -p no:cacheprovider . >"$work/bus-$build.log" 2>&1); then
        echo "event bus, $build: the reference's tests pass on ours ($(passed bus-$build))"
    else
        echo "event bus, $build: the reference's tests fail on ours:"; tail -20 "$work/bus-$build.log"
        status=1
    fi
done
exit $status
