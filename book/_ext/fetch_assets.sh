#!/usr/bin/env bash
# Fetch offline copies of MathJax, RequireJS and the ipywidgets HTML manager for the book.
#
# Jupyter Book loads these from CDNs by default. This script downloads pinned versions with
# `npm pack` from the npm registry, checks each tarball against a pinned sha512 integrity, and
# unpacks the files the book needs into book/_ext/vendor/ (about 30 MB, ignored by git through
# the vendor folder's own .gitignore). The Sphinx extension book/_ext/plotly_offline.py copies
# them into the built site. Running the script again does nothing once the versions match.
#
# Usage: book/_ext/fetch_assets.sh [--force]
# Needs: npm (the npm registry must be reachable), tar and python3.
set -euo pipefail

ext_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
vendor_dir="$ext_dir/vendor"

# name@version, tarball file name, and the registry's sha512 integrity of the tarball.
packages=(
  "@jupyter-widgets/html-manager@1.0.15|jupyter-widgets-html-manager-1.0.15.tgz|sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA=="
  "requirejs@2.3.8|requirejs-2.3.8.tgz|sha512-7/cTSLOdYkNBNJcDMWf+luFvMriVm7eYxp4BcFCsAX0wF421Vyce5SXP17c+Jd5otXKGNehIonFlyQXSowL6Mw=="
  "mathjax@3.2.2|mathjax-3.2.2.tgz|sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
)
stamp="$(printf '%s\n' "${packages[@]}")"

if [[ "${1:-}" != "--force" && -f "$vendor_dir/VERSIONS" && "$(cat "$vendor_dir/VERSIONS")" == "$stamp" ]]; then
  echo "fetch_assets: $vendor_dir is up to date"
  exit 0
fi

for tool in npm tar python3; do
  if ! command -v "$tool" >/dev/null; then
    echo "fetch_assets: '$tool' not found; install it (npm comes with Debian's 'npm' package)" >&2
    exit 1
  fi
done

work_dir="$(mktemp -d)"
trap 'rm -rf "$work_dir"' EXIT

# Download and verify.
specs=()
for entry in "${packages[@]}"; do
  specs+=("${entry%%|*}")
done
(cd "$work_dir" && npm pack --silent "${specs[@]}" >/dev/null)

for entry in "${packages[@]}"; do
  IFS='|' read -r spec tarball integrity <<<"$entry"
  actual="sha512-$(python3 -c 'import base64, hashlib, sys
print(base64.b64encode(hashlib.sha512(open(sys.argv[1], "rb").read()).digest()).decode())' "$work_dir/$tarball")"
  if [[ "$actual" != "$integrity" ]]; then
    echo "fetch_assets: integrity mismatch for $spec: expected $integrity, got $actual" >&2
    exit 1
  fi
  mkdir -p "$work_dir/unpacked/$spec"
  tar -xzf "$work_dir/$tarball" -C "$work_dir/unpacked/$spec"
done

# Stage the needed files, then swap the staged folder into place.
stage="$work_dir/vendor"
mkdir -p "$stage/html-manager" "$stage/requirejs" "$stage/mathjax"

html_manager="$work_dir/unpacked/@jupyter-widgets/html-manager@1.0.15/package"
cp "$html_manager/dist/embed-amd.js" "$stage/html-manager/"
# Font Awesome files that embed-amd.js references by content hash.
cp "$html_manager"/dist/*.woff "$html_manager"/dist/*.woff2 "$html_manager"/dist/*.ttf \
  "$html_manager"/dist/*.eot "$html_manager"/dist/*.svg "$stage/html-manager/"
cp "$html_manager/package.json" "$stage/html-manager/"

requirejs="$work_dir/unpacked/requirejs@2.3.8/package"
cp "$requirejs/require.js" "$requirejs/package.json" "$stage/requirejs/"

# MathJax loads input extensions, fonts and the menu lazily from beside its entry script,
# so the whole es5 tree is kept.
mathjax="$work_dir/unpacked/mathjax@3.2.2/package"
cp -R "$mathjax/es5/." "$stage/mathjax/"
cp "$mathjax/LICENSE" "$mathjax/package.json" "$stage/mathjax/"

printf '*\n' >"$stage/.gitignore"
printf '%s\n' "$stamp" >"$stage/VERSIONS"

rm -rf "$vendor_dir"
mv "$stage" "$vendor_dir"
echo "fetch_assets: wrote $vendor_dir ($(du -sh "$vendor_dir" | cut -f1))"
