#!/bin/sh
# Rebuilds the embedded chart fonts: DejaVu Sans 2.37 (Debian fonts-dejavu-core 2.37-6), cut
# down to the characters chart text needs (Latin, Greek, punctuation, super- and subscripts,
# arrows, the common math operators) with kerning kept, so that the simulator binary carries
# 140 KB of font instead of 1.4 MB. Needs fontTools (pip install fonttools; 4.68 was used).
#
#   sim/assets/fonts/subset.sh [DIR_WITH_DejaVuSans.ttf]   (default /usr/share/fonts/truetype/dejavu)
set -eu
src=${1:-/usr/share/fonts/truetype/dejavu}
here=$(dirname "$0")
unicodes="U+0020-007E,U+00A0-017F,U+0370-03FF,U+2010-2027,U+2030-205E,U+2070-209F,U+20AC,\
U+2190-2199,U+2212-2215,U+2218-221E,U+2227-222B,U+2248,U+2260-2265,U+22C5,U+FFFD"
for face in DejaVuSans DejaVuSans-Bold; do
  pyftsubset "$src/$face.ttf" --unicodes="$unicodes" --layout-features=kern --legacy-kern \
    --no-hinting --desubroutinize --name-IDs='*' --name-legacy --notdef-outline \
    --output-file="$here/$face.ttf"
done
