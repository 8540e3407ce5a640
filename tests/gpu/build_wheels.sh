#!/bin/bash
# Assemble the wheels a GPU lease carries (tests/gpu/README.md) in $WHL (default .whl, ignored by git).
#
# Usage, in the repository root, after the commit to be tested:  bash tests/gpu/build_wheels.sh
# - third-party wheels: reused when already in $WHL (or in $CACHE, default .gpuwhl), else `pip download`ed
#   for CPython 3.12 manylinux x86-64 (the GPU image's python), without dependencies: each need is listed;
# - sam2 1.1.0: built here without its CUDA extension (pure python);
# - medtransfer: built from `git archive HEAD` in a temp folder, so uncommitted edits are NOT what is tested.
# Ends with the sizes and the total, which must stay well under the 64 MiB a lease carries.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
WHL=${WHL:-.whl}
CACHE=${CACHE:-.gpuwhl}
PY=${PY:-.venv/bin/python}
mkdir -p "$WHL"
# name==version as pip spells them; versions as in constraints.txt / the last lease (2026-11-27)
WHEELS="
monai==1.6.1
mne==1.13.2 pooch==1.9.0 decorator==5.3.1 platformdirs==4.14.8
braindecode==1.8.1 skorch==1.4.0 torchinfo==1.8.0 mne-bids==0.20.0 wfdb==4.3.1 soundfile==0.14.0
docstring-inheritance==3.0.0 linear-attention-transformer==0.19.1 axial-positional-embedding==0.3.12
colt5-attention==0.11.2 hyper-connections==0.4.11 linformer==0.2.3 local-attention==1.11.2
product-key-memory==0.3.0 torch-einops-utils==0.2.0
hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 iopath==0.1.10
pydicom==3.0.2 pylibjpeg==2.1.0 pylibjpeg-libjpeg==2.5.0
pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
edfio==0.4.18
tiffslide==3.0.1 zarr==3.1.6 donfig==0.8.1.post1 google-crc32c==1.9.0 numcodecs==0.16.6
scikit-survival==0.28.0 ecos==2.0.14 osqp==1.1.3 numexpr==2.14.2
"
PLAT="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64"
PLAT="$PLAT --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_31_x86_64"
PLAT="$PLAT --platform manylinux_2_34_x86_64 --platform manylinux1_x86_64"
for spec in $WHEELS; do
  name=${spec%%==*}
  ver=${spec##*==}
  stem=$(echo "$name" | tr '-' '_')
  ls "$WHL/${stem}-${ver}-"*.whl >/dev/null 2>&1 && continue
  if ls "$CACHE/${stem}-${ver}-"*.whl >/dev/null 2>&1; then
    cp -l "$CACHE/${stem}-${ver}-"*.whl "$WHL/" 2>/dev/null || cp "$CACHE/${stem}-${ver}-"*.whl "$WHL/"
    continue
  fi
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLAT \
    -d "$WHL" "$spec"
done
if ! ls "$WHL"/sam2-1.1.0-*.whl >/dev/null 2>&1; then
  if ls "$CACHE"/sam2-1.1.0-*.whl >/dev/null 2>&1; then
    cp "$CACHE"/sam2-1.1.0-*.whl "$WHL/"
  else
    SAM2_BUILD_CUDA=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation sam2==1.1.0 -w "$WHL"
  fi
fi
# anything not in the list (imagecodecs: only JPEG slide tiles need it, 26 MB) stays behind
for f in "$WHL"/*.whl; do
  b=$(basename "$f")
  case "$b" in sam2-1.1.0-* | medtransfer-*) continue ;; esac
  keep=0
  for spec in $WHEELS; do
    stem=$(echo "${spec%%==*}" | tr '-' '_')
    case "$b" in "${stem}-${spec##*==}-"*) keep=1 ;; esac
  done
  [ $keep = 1 ] || { echo "not carried: $b"; rm -f "$f"; }
done
# the project's own wheel, from the last commit only
rm -f "$WHL"/medtransfer-*.whl
SRC=$(mktemp -d /tmp/medtransfer-wheel.XXXXXX)
trap 'rm -rf "$SRC"' EXIT
git archive HEAD | tar -x -C "$SRC"
"$PY" -m pip wheel -q --no-deps --no-build-isolation "$SRC" -w "$WHL" >/dev/null
echo "medtransfer wheel from $(git rev-parse --short HEAD)"
# one version of each package: two stop the whole install on the GPU machine
dups=$(ls "$WHL" | sed -E 's/-[0-9].*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)
[ -z "$dups" ] || { echo "more than one wheel of: $dups" >&2; exit 1; }
ls -l "$WHL" | awk 'NR > 1 {printf "%10.2f MiB  %s\n", $5 / 1048576, $9}' | sort -n
total=$(du -cb "$WHL"/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
awk -v w="$total" -v t="$tree" -v n="$(ls "$WHL"/*.whl | wc -l)" 'BEGIN {
  printf "wheels: %.1f MiB in %d files; tracked tree: %.1f MiB; together %.1f MiB (lease limit 64 MiB)\n",
    w / 1048576, n, t / 1048576, (w + t) / 1048576 }'
