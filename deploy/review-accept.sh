#!/usr/bin/env bash
# deploy/review-accept.sh SRC DEST WHOLE: take the review pairs a bin sent (unpacked in SRC) into DEST.
# Shared by deploy/flash.sh --pull-review and deploy/ansible/pull-review.yml; not meant to be run by hand.
# The bin is not trusted: only pairs of plain files with a name the daemon writes (NAME.json + NAME.jpg)
# are taken, a link or a FIFO never; a pair that is not whole (an empty JPEG, a JSON that does not parse)
# is left on the bin for the next pull; a pair already in DEST (labelled here since, perhaps) is never
# overwritten. WHOLE gets the name of every JSON that arrived whole, one a line: those, and only those,
# may be removed on the bin (remote.sh review-delete). PYTHON: the Python that reads the JSON files.
set -euo pipefail
src="${1:?review-accept.sh: SRC DEST WHOLE}"
dest="${2:?review-accept.sh: SRC DEST WHOLE}"
whole_list="${3:?review-accept.sh: SRC DEST WHOLE}"
python="${PYTHON:-python3}"
mkdir -p "$dest"
: >"$whole_list"
new=0
here=0
for json in "$src"/*.json; do
    [ -e "$json" ] || continue
    name=$(basename "$json")
    jpg="${json%.json}.jpg"
    # the bin is not trusted: only plain files with a name the daemon writes, never a link or a FIFO
    if [[ ! "$name" =~ ^[A-Za-z0-9._-]+\.json$ ]] || [ -L "$json" ] || [ ! -f "$json" ] \
        || [ -L "$jpg" ] || [ ! -f "$jpg" ]; then
        echo "    $(printf '%q' "$name") is not a pair of plain files: not copied, left on the bin"
        continue
    fi
    if [ ! -s "$jpg" ] || ! "$python" -m json.tool "$json" >/dev/null 2>&1; then
        echo "    $name did not arrive whole: left on the bin"
        continue
    fi
    echo "$name" >>"$whole_list"
    if [ -e "$dest/$name" ]; then
        here=$((here + 1))
        continue
    fi
    mv "$jpg" "$dest/"
    mv "$json" "$dest/"  # the JSON last: a JSON here means a whole pair
    new=$((new + 1))
done
echo "    $new new pairs in $dest; $here were here already and are left as they are"
