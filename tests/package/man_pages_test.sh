#!/usr/bin/env bash
# The man pages as built (build/man/*.gz, what the package installs): man and
# groff render each without a warning, lexgrog reads its NAME line (whatis,
# apropos), and every option and subcommand the programs' --help prints is in
# its page, so a new option cannot land undocumented.
# Usage: man_pages_test.sh MANDIR TOOL=PAGE...   e.g. .../blockctl=blockctl.8
set -euo pipefail
mandir=${1:?usage: man_pages_test.sh MANDIR TOOL=PAGE...}
shift
work=$(mktemp -d /tmp/icbd-man-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
failed=0
fail() { echo "man_pages_test: FAIL: $*" >&2; failed=1; }

pages=("$mandir"/*.[0-9].gz)
[ -f "${pages[0]}" ] || { echo "man_pages_test: FAIL: no pages in $mandir" >&2; exit 1; }
for gz in "${pages[@]}"; do
  page=$(basename "$gz" .gz)
  warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -l "$gz" 2>&1 >"$work/$page.txt") || fail "man -l $page exited non-zero"
  [ -z "$warnings" ] || fail "man --warnings -l $page (MANWIDTH=80): $warnings"
  [ "$(wc -l <"$work/$page.txt")" -gt 10 ] || fail "man -l $page renders almost nothing"
  warnings=$(zcat "$gz" | groff -ww -z -t -man 2>&1) || fail "groff -ww -z -man $page exited non-zero"
  [ -z "$warnings" ] || fail "groff -ww -z -t -man $page: $warnings"
  if command -v lexgrog >/dev/null; then
    lexgrog "$gz" >"$work/lexgrog" 2>&1 || fail "lexgrog cannot parse the NAME section of $page: $(cat "$work/lexgrog")"
  fi
done
[ "$failed" = 0 ] && echo "man_pages_test: ${#pages[@]} pages render without warnings (man --warnings at 80 columns, groff -ww, lexgrog)"

# The page's text with roff's escapes undone: \- is -, font changes vanish.
page_text() { zcat "$1" | sed -e 's/\\-/-/g' -e 's/\\f\[[A-Z]*\]//g' -e 's/\\f[BIRP]//g' -e 's/\\\[aq\]/'"'"'/g'; }

# Every option in a help text: long ones, and short ones standing alone.
options_of() {
  grep -oE -- '--[a-z][a-z0-9-]*' "$1" || true
  grep -oE -- '(^|[][ ,|])-[a-zA-Z]([][ ,|]|$)' "$1" | grep -oE -- '-[a-zA-Z]' || true
}

for arg in "$@"; do
  tool=${arg%%=*} page=${arg#*=}
  name=$(basename "$tool")
  gz=$mandir/$page.gz
  [ -f "$gz" ] || { fail "$name has no page $page.gz"; continue; }
  page_text "$gz" >"$work/page"
  # The help texts: the program's, and for CLI11 programs (blockctl) every
  # subcommand's, recursively.
  : >"$work/help"
  helps=("")
  subcommands=()
  while [ ${#helps[@]} -gt 0 ]; do
    cmd=${helps[0]}
    helps=("${helps[@]:1}")
    # shellcheck disable=SC2086 # $cmd holds the subcommand words
    "$tool" $cmd --help >"$work/one" 2>&1 || true
    cat "$work/one" >>"$work/help"
    while read -r sub; do
      [ -n "$sub" ] || continue
      helps+=("${cmd:+$cmd }$sub")
      subcommands+=("${cmd:+$cmd }$sub")
    done < <(sed -n '/^Subcommands:/,/^$/p' "$work/one" | awk 'NR > 1 && NF { print $1 }')
  done
  [ -s "$work/help" ] || { fail "$name --help printed nothing"; continue; }
  n=0
  while read -r opt; do
    # As a word of its own: --compress is not found inside --compress-level, nor -h inside --help.
    grep -qE -e "(^|[^-[:alnum:]])${opt}([^-[:alnum:]]|\$)" "$work/page" \
      || fail "$name: option $opt (in its --help) is not in $page"
    n=$((n + 1))
  done < <(options_of "$work/help" | sort -u)
  for sub in "${subcommands[@]}"; do
    grep -qF -e "$sub" "$work/page" || fail "$name: command '$sub' (in its --help) is not in $page"
  done
  [ "$n" -gt 0 ] || fail "found no option in the --help of $name: the check would check nothing"
  echo "man_pages_test: $page has the $n options and ${#subcommands[@]} subcommands of $name --help"
done
[ "$failed" = 0 ] || exit 1
echo "man_pages_test: ok"
