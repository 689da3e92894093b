#!/usr/bin/env bash
# Keep the shipped model's binaries (layers/model: 51.6 MiB) from travelling to the device
# machine for one `run` call, so that the data (.device, ~50 MiB) fits under the 64 MiB limit.
#
#   bash training/device/slim.sh on       # before the run call
#   bash training/device/slim.sh off      # right after it, whatever happened
#   bash training/device/slim.sh status
#
# "on" takes layers/model's tracked binaries out of git's INDEX only (git rm --cached) and
# lists them in .git/info/exclude, so they are neither tracked nor untracked-not-ignored:
# the device tool does not send them.  Nothing in the working tree changes.  "off" puts the
# index entries back from HEAD (git reset) and removes the exclude lines.  While it is on,
# git status shows them as staged deletions: do not commit then.  The device copy then has
# no layers/model weights (the sweep does not need them; --init layers/model there would fail).
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
EXCLUDE=$(git rev-parse --git-path info/exclude)
BEGIN='# >>> training/device/slim.sh (remove with: bash training/device/slim.sh off)'
END='# <<< training/device/slim.sh'
mkdir -p "$(dirname "$EXCLUDE")"; touch "$EXCLUDE"

listed() { sed -n "\\|^$BEGIN\$|,\\|^$END\$|p" "$EXCLUDE" | grep -v '^#' | sed 's|^/||'; }

case ${1:-status} in
  on)
    if grep -qxF "$BEGIN" "$EXCLUDE"; then echo "slim: already on"; exit 0; fi
    mapfile -t files < <(git ls-files -- layers/model | grep -v '\.json$')
    (( ${#files[@]} )) || { echo "slim: nothing tracked under layers/model"; exit 1; }
    if ! git diff --cached --quiet -- "${files[@]}"; then
      echo "slim: ${files[*]} have staged changes; commit or unstage them first" >&2; exit 1
    fi
    { echo "$BEGIN"; printf '/%s\n' "${files[@]}"; echo "$END"; } >> "$EXCLUDE"
    git rm -q --cached -- "${files[@]}"
    echo "slim: on: ${files[*]} left out of the index (working tree untouched); DO NOT COMMIT until: bash training/device/slim.sh off"
    ;;
  off)
    mapfile -t files < <(listed)
    if (( ${#files[@]} )); then git reset -q -- "${files[@]}"; fi
    sed -i "\\|^$BEGIN\$|,\\|^$END\$|d" "$EXCLUDE"
    echo "slim: off: ${files[*]:-nothing} back in the index"
    git status --short -- layers/model
    ;;
  status)
    if grep -qxF "$BEGIN" "$EXCLUDE"; then echo "slim: ON: $(listed | tr '\n' ' ')"; else echo "slim: off"; fi
    ;;
  *) echo "usage: bash training/device/slim.sh on|off|status" >&2; exit 2 ;;
esac
