#!/usr/bin/env bash
# Apply the sj_parallel patch series to a clean copy of a SpikingJelly checkout at the
# pinned commit and run SpikingJelly's PSN-related tests plus the new ones on the CPU.
#
#   upstream/check.sh [--clone] [--keep] SJ_CHECKOUT
#
# SJ_CHECKOUT   a git checkout of SpikingJelly (github.com/fangwei123456/spikingjelly)
#               that contains the pinned commit; it is never modified: the series is
#               applied in a temporary `git worktree` of it (or, with --clone or when
#               the checkout's .git is not writable, a temporary shared clone), which is
#               removed at the end.
# --clone       use a temporary shared clone instead of a worktree
# --keep        keep the temporary tree (its path is printed)
#
# Environment: PYTHON (default: python3) must have torch, triton, pytest and
# SpikingJelly's test dependencies installed; ruff, when found, also checks the
# changed files with SpikingJelly's formatter and lint settings.
#
# Exit status: 0 when the series applies and every check passes, 1 when a check
# fails, 2 on a usage error (missing checkout or pinned commit).
set -uo pipefail

PIN=afb132264a8cbe38d0f221dcef04053e6ba134d3
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PATCHES="$HERE/patches"
PYTHON=${PYTHON:-python3}

# SpikingJelly's tests that involve the PSN family or run neurons generically, as they
# are (Triton ones skip without a GPU), then the series' own tests.
SJ_TESTS=(
  test/activation_based/test_functional_neuron.py
  test/activation_based/test_checkpointing.py
  test/activation_based/test_functional.py
  test/activation_based/test_memory.py
  test/activation_based/test_triton_neuron.py
  test/activation_based/test_neuron_kernel_surrogate_contract.py
)
NEW_TESTS=(
  test/activation_based/test_psn_triton.py
  test/activation_based/test_mpe_psn.py
)
NAMED_TESTS=(
  "test/activation_based/test_functional_neuron.py::test_sliding_psn_step_matches_module"
  "test/activation_based/test_functional_neuron.py::test_masked_psn_step_matches_module_sequence"
  "test/activation_based/test_checkpointing.py::test_memory_optimization_level3_skips_when_no_temporal_split_candidates"
)

usage() {
  sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

MODE=worktree
KEEP=0
SJ=""
while [ $# -gt 0 ]; do
  case "$1" in
    --clone) MODE=clone ;;
    --keep) KEEP=1 ;;
    -h|--help) usage ;;
    -*) echo "check.sh: unknown option $1" >&2; usage ;;
    *) [ -n "$SJ" ] && usage; SJ=$1 ;;
  esac
  shift
done
[ -n "$SJ" ] || usage

if ! git -C "$SJ" rev-parse --git-dir >/dev/null 2>&1; then
  echo "check.sh: $SJ is not a git checkout of SpikingJelly" >&2
  exit 2
fi
if ! git -C "$SJ" cat-file -e "$PIN^{commit}" 2>/dev/null; then
  echo "check.sh: $SJ does not contain the pinned commit $PIN;" \
       "fetch it first (git -C $SJ fetch origin master)" >&2
  exit 2
fi
shopt -s nullglob
SERIES=("$PATCHES"/*.patch)
if [ ${#SERIES[@]} -eq 0 ]; then
  echo "check.sh: no patches in $PATCHES" >&2
  exit 2
fi
if [ "$MODE" = worktree ] && [ ! -w "$(cd "$SJ" && cd "$(git rev-parse --git-common-dir)" && pwd)" ]; then
  MODE=clone  # a read-only checkout: never write into it
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sj-upstream-check.XXXXXX")
WT="$TMP/spikingjelly"
cleanup() {
  if [ "$KEEP" = 1 ]; then
    echo "check.sh: kept $WT"
    return
  fi
  if [ "$MODE" = worktree ]; then
    git -C "$SJ" worktree remove --force "$WT" >/dev/null 2>&1
    git -C "$SJ" worktree prune >/dev/null 2>&1
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

echo "== SpikingJelly $PIN from $SJ ($MODE)"
if [ "$MODE" = worktree ]; then
  git -C "$SJ" worktree add --quiet --detach "$WT" "$PIN" || exit 1
else
  git clone --quiet --shared --no-checkout "$SJ" "$WT" &&
    git -C "$WT" checkout --quiet --detach "$PIN" || exit 1
fi

echo "== applying ${#SERIES[@]} patches"
if ! git -C "$WT" -c user.name=check -c user.email=check@localhost \
     am --quiet --whitespace=error-all "${SERIES[@]}"; then
  echo "check.sh: the series does not apply to $PIN" >&2
  git -C "$WT" am --abort >/dev/null 2>&1
  exit 1
fi
git -C "$WT" log --oneline "$PIN..HEAD"

FAILED=()
run() {  # run NAME CMD...: record a failure instead of stopping
  local name=$1
  shift
  echo "== $name"
  if ! "$@"; then
    FAILED+=("$name")
  fi
}

cd "$WT" || exit 1
export PYTHONPATH="$WT" PYTHONDONTWRITEBYTECODE=1
unset TRITON_INTERPRET SJ_USE_TRITON_OP SJ_USE_WRAP_TRITON
where=$("$PYTHON" -c "import spikingjelly, os; print(os.path.dirname(spikingjelly.__file__))") || exit 1
if [ "$where" != "$WT/spikingjelly" ]; then
  echo "check.sh: $PYTHON imports spikingjelly from $where, not from $WT" >&2
  exit 1
fi

if command -v ruff >/dev/null 2>&1; then
  mapfile -t CHANGED < <(git diff --name-only --diff-filter=AM "$PIN" -- '*.py')
  run "format (ruff format --check, SpikingJelly's pyproject)" ruff format --check --quiet "${CHANGED[@]}"
  run "lint (ruff check, SpikingJelly's rules)" ruff check --quiet \
    --select E4,E7,E9,F --ignore E402,E731,E741,F403 "${CHANGED[@]}"
else
  echo "== ruff not found: format and lint checks skipped"
fi
run "changelog (docs/source/changelog.rst matches CHANGELOG.md)" \
  "$PYTHON" tools/generate_changelog_rst.py --check
PYTEST=("$PYTHON" -m pytest -q -p no:cacheprovider)
run "the PSN tests named in the issue" "${PYTEST[@]}" "${NAMED_TESTS[@]}"
run "SpikingJelly's PSN-related and generic neuron tests, and the new tests" \
  "${PYTEST[@]}" "${SJ_TESTS[@]}" "${NEW_TESTS[@]}"
interpreted() {  # every new test must run (none skipped) under the interpreter
  local log="$TMP/interpreted.log"
  env TRITON_INTERPRET=1 "${PYTEST[@]}" -rs "${NEW_TESTS[@]}" | tee "$log" || return 1
  if grep -q "skipped" "$log"; then
    echo "check.sh: tests were skipped under TRITON_INTERPRET=1" >&2
    return 1
  fi
}
run "the new tests on the CPU under TRITON_INTERPRET=1 (none skipped)" interpreted

if [ ${#FAILED[@]} -gt 0 ]; then
  echo "== FAILED: ${FAILED[*]}"
  exit 1
fi
echo "== all checks passed"
