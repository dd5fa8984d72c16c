#!/usr/bin/env bash
# deploy/flash.sh: install or update smartbin on one bin over SSH. Run it from a checkout.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/flash.sh [options] user@host
       deploy/flash.sh --pull-review [--delete] user@host [DIR]
       deploy/flash.sh --build-only CPU:PYTHON:GLIBC [--model DIR]

Install or update smartbin on one bin (a Raspberry Pi or Jetson running
Debian/Raspberry Pi OS 64-bit) over SSH. The bin needs python3 with venv and
passwordless sudo for the login user (or log in as root). It needs no internet:
every Python package travels with the release.

What it does, in order:
  1. asks the bin what it is (CPU, Python, glibc) and what it runs now;
  2. builds the release here: the smartbin wheel, the wheels of its dependencies
     for that CPU and Python, the model bundle, the unit file;
  3. copies it to /opt/smartbin/releases/<version>-<hash> and makes a venv there
     (with the system site packages, for the Pi's camera stack);
  4. writes /etc/smartbin/smartbin.yaml if the bin has none (an existing one is
     never overwritten, unless you pass --config);
  5. creates the smartbin user (groups dialout and video) and installs
     /etc/systemd/system/smartbin.service;
  6. switches /opt/smartbin/current to the new release in one atomic rename,
     restarts the service and waits until it is up and stays up;
  7. if it does not, switches back to the previous release by itself and says so.
The last --keep releases stay on the bin. Every run is logged on the bin in
/var/log/smartbin-deploy.log. Running it again with nothing changed changes nothing.

Options:
  --model DIR          model bundle to install (default: models/household38-mnv2)
  --config FILE        install FILE as the bin's config; the old one is kept as
                       smartbin.yaml.<time>.bak (without --config it is never touched)
  --device-id ID       device_id written into a new config (default: the bin's host name)
  --system-opencv      use the bin's own OpenCV and numpy (sudo apt install python3-opencv)
                       instead of the pip wheel: the pip wheel has no GStreamer, which a
                       Raspberry Pi camera module needs (camera.source: a libcamerasrc pipeline)
  --rollback           switch back to the previous release and restart; nothing is built
  --pull-review        copy the bin's review folder (the frames kept for labelling, each with
                       its JSON) into DIR, the second argument (default: review-<host>):
                       whole pairs only, the service keeps running, and a pair already in
                       DIR (labelled since, perhaps) is never overwritten
  --delete             with --pull-review: then remove on the bin the pairs that arrived whole
  --gate DIR           before shipping, score the model on the bin and the one being shipped on
                       the labelled photos in DIR (label folders, or a labelled review folder;
                       smartbin eval --model A --model B); refuse
                       to ship one that puts fewer of them in the right bin
  --build-only CPU:PYTHON:GLIBC
                       build the release for such a bin here and stop, contacting no bin
                       (e.g. aarch64:3.11:2.36, what Raspberry Pi OS 12 64-bit reports): it
                       lands in build/release/<release>, whose path is the last line printed
                       (with --dry-run: that path only, nothing built)
  --keep N             releases kept on the bin (default 3)
  --health-timeout S   seconds the service must stay up after the restart (default 20)
  -p, --port PORT      SSH port
  -i, --identity FILE  SSH private key
  -n, --dry-run        print every step, on this machine and on the bin, and do none
  -y, --yes            do not ask before changing the bin
  -h, --help           this help

Examples:
  deploy/flash.sh pi@bin-07.local                       deploy this checkout
  deploy/flash.sh --dry-run pi@bin-07.local             see what it would do
  deploy/flash.sh --config bin-07.yaml pi@bin-07.local  deploy and replace the config
  deploy/flash.sh --rollback pi@bin-07.local            back to the previous release
  deploy/flash.sh --system-opencv pi@bin-07.local       a bin with a Pi camera module
  for h in $(cat bins.txt); do deploy/flash.sh --yes "pi@$h" || echo "$h failed"; done

After a deploy: ssh in and run `journalctl -u smartbin -f` to watch it sort,
`sudo systemctl stop smartbin && /opt/smartbin/current/venv/bin/smartbin check
--config /etc/smartbin/smartbin.yaml` to check each part by hand.

Environment (tests and unusual images): SMARTBIN_PREFIX installs under another
root on the bin; SMARTBIN_SYSTEMCTL replaces systemctl there; SMARTBIN_PYTHON is
the bin's Python for the venv (default python3); SSH_OPTS adds ssh options;
PYTHON is the local Python that builds the wheels (default: .venv's).
Exit status: 0 deployed (or nothing to do), 1 the new release failed its health
check (rolled back where there was a release to roll back to), 2 an error
stopped the run before the bin was changed, or a step on the bin failed.
EOF
}

die() {
    echo "flash.sh: error: $1" >&2
    [ -z "${2:-}" ] || echo "  fix: $2" >&2
    exit 2
}
say() { echo "==> $*"; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
model="$repo/models/household38-mnv2"
config=""
device_id=""
keep=3
health_s=20
rollback=0
system_opencv=0
dry_run=0
yes=0
ssh_args=()
target=""
build_only=""
pull=0
delete=0
gate=""
review_dir=""
while [ "$#" -gt 0 ]; do
    case "$1" in
        --model) model="${2:?--model needs a folder}"; shift 2 ;;
        --config) config="${2:?--config needs a file}"; shift 2 ;;
        --device-id) device_id="${2:?--device-id needs an id}"; shift 2 ;;
        --keep) keep="${2:?--keep needs a number}"; shift 2 ;;
        --health-timeout) health_s="${2:?--health-timeout needs seconds}"; shift 2 ;;
        --rollback) rollback=1; shift ;;
        --pull-review) pull=1; shift ;;
        --delete) delete=1; shift ;;
        --gate) gate="${2:?--gate needs a folder of labelled photos}"; shift 2 ;;
        --build-only) build_only="${2:?--build-only needs CPU:PYTHON:GLIBC, e.g. aarch64:3.11:2.36}"; shift 2 ;;
        --system-opencv) system_opencv=1; shift ;;
        -p | --port) ssh_args+=(-p "${2:?--port needs a number}"); shift 2 ;;
        -i | --identity) ssh_args+=(-i "${2:?--identity needs a key file}"); shift 2 ;;
        -n | --dry-run) dry_run=1; shift ;;
        -y | --yes) yes=1; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) die "unknown option $1" "deploy/flash.sh --help lists the options" ;;
        *)
            if [ -z "$target" ]; then
                target="$1"
            elif [ "$pull" = 1 ] && [ -z "$review_dir" ]; then
                review_dir="$1"
            else
                die "more than one bin given ($target, $1)" "deploy one bin per run; loop for a fleet"
            fi
            shift ;;
    esac
done
[ -n "$target" ] || [ -n "$build_only" ] || { usage >&2; exit 2; }
[[ "$keep" =~ ^[1-9][0-9]*$ ]] || die "--keep $keep is not a number >= 1" "e.g. --keep 3"
[[ "$health_s" =~ ^[0-9]+$ ]] || die "--health-timeout $health_s is not a number of seconds" "e.g. --health-timeout 20"
[ -z "$config" ] || [ -f "$config" ] || die "config file $config does not exist" "give the path of a smartbin.yaml"
[ -z "$gate" ] || [ -d "$gate" ] || die "--gate $gate is not a folder" "give a folder of <label>/<photo> files, or a review folder labelled with smartbin review"
[ "$delete" = 0 ] || [ "$pull" = 1 ] || die "--delete goes with --pull-review" "deploy/flash.sh --pull-review --delete HOST [DIR]"
if [ "$rollback" = 0 ] && [ "$pull" = 0 ]; then
    if [ ! -f "$model/model.tflite" ] || [ ! -f "$model/model.json" ]; then
        die "$model is not a model bundle (model.tflite + model.json)" "give --model the folder smartbin-train wrote"
    fi
fi
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi

work=$(mktemp -d)
# shellcheck disable=SC2317  # called by the trap
cleanup() {
    ssh -o ControlPath="$work/ssh" -O exit "$target" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
read -r -a extra_ssh <<<"${SSH_OPTS:-}"
# One connection for the whole run (one password prompt, if the bin asks for one).
ssh_cmd=(ssh -o ControlMaster=auto -o "ControlPath=$work/ssh" -o ControlPersist=120 "${ssh_args[@]}" "${extra_ssh[@]}")
remote_env=(
    "SMARTBIN_PREFIX=$(printf %q "${SMARTBIN_PREFIX:-/}")"
    "SMARTBIN_SYSTEMCTL=$(printf %q "${SMARTBIN_SYSTEMCTL:-systemctl}")"
    "SMARTBIN_PYTHON=$(printf %q "${SMARTBIN_PYTHON:-python3}")"
    "DRY_RUN=$dry_run"
)

# remote ACTION ARGS...: deploy/remote.sh on the bin, as root where needed
remote() {
    local sudo=""
    [ "${remote_uid:-0}" = 0 ] || [ "$1" = probe ] || sudo="sudo -n"
    "${ssh_cmd[@]}" "$target" "$sudo env ${remote_env[*]} bash -s -- $(printf '%q ' "$@")" <"$repo/deploy/remote.sh"
}

# check_arch: stop unless there are wheels for $arch
check_arch() {
    case "$arch" in
        x86_64 | aarch64) ;;
        *) die "no wheels for $arch (32-bit Raspberry Pi OS?)" \
            "use the 64-bit OS image, or install by hand: pip install 'smartbin[edge-legacy]' (README)" ;;
    esac
}

# release_id: <version>-<hash of the code, unit, reference config, model and the bin's kind>
release_id() {
    local version digest
    version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$repo/pyproject.toml")
    digest=$(
        cd "$repo"
        {
            # the code and what ships inside the package (the labelling page, taxonomies, presets, ...)
            find edge host_training -type f ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum
            sha256sum pyproject.toml systemd/smartbin.service config/smartbin.yaml deploy/remote.sh
            (cd "$model" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
            echo "$arch $pyver $glibc"
            [ -z "$opencv" ] || echo "system OpenCV $opencv numpy $numpy"
        } | sha256sum | cut -c1-10
    )
    echo "$version-$digest"
}

# build_release: build/release/$release for $arch, Python $pyver, glibc $glibc
build_release() {
    local out wheel platforms constraints minor fetch missing
    say "building release $release for $arch, Python $pyver"
    out="$repo/build/release/$release"
    rm -rf "$out" "$out.tmp"
    mkdir -p "$out.tmp/wheels" "$out.tmp/systemd"
    # setuptools builds in build/lib and never removes what is there: a module deleted since an earlier
    # build would ship again
    rm -rf "$repo/build/lib" "$repo"/build/bdist.*
    "$python" -m pip wheel --quiet --no-deps -w "$out.tmp/wheels" "$repo" >/dev/null
    wheel=$(ls "$out.tmp"/wheels/smartbin-*.whl)
    platforms=()
    minor=17
    while [ "$minor" -le "${glibc#2.}" ]; do
        platforms+=(--platform "manylinux_2_${minor}_$arch")
        minor=$((minor + 1))
    done
    platforms+=(--platform "manylinux2014_$arch" --platform "linux_$arch")
    constraints=()
    if [ -n "$opencv" ]; then
        # every wheel must work with the bin's numpy, which its OpenCV was built against
        echo "numpy==$numpy" >"$work/constraints.txt"
        constraints=(--constraint "$work/constraints.txt")
    fi
    if ! fetch=$("$python" -m pip download --quiet --only-binary=:all: --implementation cp \
        --python-version "$pyver" "${platforms[@]}" "${constraints[@]}" -d "$out.tmp/wheels" \
        "smartbin[edge] @ file://$wheel" 2>&1); then
        rm -rf "$out.tmp"
        grep -q "requires a different Python" <<<"$fetch" \
            && die "smartbin needs Python $(sed -n 's/^requires-python *= *"\(.*\)"/\1/p' "$repo/pyproject.toml"); the bin has $pyver" \
                "upgrade the bin's OS (Raspberry Pi OS 12 has Python 3.11)"
        missing=$(sed -n 's/.*No matching distribution found for \([^ <>=!~;]*\).*/\1/p' <<<"$fetch" | head -1)
        [ -z "$missing" ] || die "no wheel of $missing for $arch, Python $pyver (glibc $glibc): the bin could not install this release" \
            "give the bin a Python that $missing has $arch wheels for (Raspberry Pi OS 12 has 3.11), or install it there by hand"
        die "cannot fetch the wheels for $arch, Python $pyver: $(tail -1 <<<"$fetch")" \
            "this machine needs the package index once; later runs use pip's cache"
    fi
    if [ -n "$opencv" ]; then
        rm -f "$out.tmp"/wheels/opencv_python*.whl "$out.tmp"/wheels/numpy-*.whl
        echo "OpenCV $opencv, numpy $numpy" >"$out.tmp/SYSTEM_OPENCV"
    fi
    cp -r "$model" "$out.tmp/model"
    cp "$repo/systemd/smartbin.service" "$out.tmp/systemd/"
    cp "$repo/config/smartbin.yaml" "$out.tmp/reference.yaml"
    echo "$release" >"$out.tmp/VERSION"
    mv "$out.tmp" "$out"
    echo "    $(du -sh "$out" | cut -f1) in build/release/$release"
}

if [ -n "$build_only" ]; then
    IFS=: read -r arch pyver glibc <<<"$build_only"
    [[ "$pyver" =~ ^3\.[0-9]+$ && "$glibc" =~ ^2\.[0-9]+$ ]] \
        || die "--build-only $build_only is not CPU:PYTHON:GLIBC" "e.g. --build-only aarch64:3.11:2.36"
    opencv=""
    check_arch
    release=$(release_id)
    if [ "$dry_run" = 1 ]; then  # only the name: what a bin of that kind would get
        echo "$repo/build/release/$release"
        exit 0
    fi
    build_release
    echo "$repo/build/release/$release"
    exit 0
fi

say "asking $target what it is"
probe_args=(probe)
[ "$system_opencv" = 0 ] || probe_args+=(opencv)
probe=$(remote "${probe_args[@]}") || die "cannot reach $target over SSH, or it has no bash" \
    "check the address, the network and your key: ssh ${ssh_args[*]} $target true"
value() { sed -n "s/^$1=//p" <<<"$probe"; }
remote_uid=$(value uid)
arch=$(value arch)
pyver=$(value python)
glibc=$(value glibc)
current=$(value current)
device_id="${device_id:-$(value hostname)}"
[ -n "$pyver" ] || die "$target has no python3 with venv" "on the bin: sudo apt install python3-venv"
echo "    $arch, Python $pyver, glibc $glibc; running: ${current:-nothing yet}"
opencv=""
if [ "$system_opencv" = 1 ] && [ "$rollback" = 0 ]; then
    opencv=$(value opencv)
    [ -n "$opencv" ] || die "--system-opencv: the bin's ${SMARTBIN_PYTHON:-python3} cannot import cv2" \
        "on the bin: sudo apt install python3-opencv (or deploy without --system-opencv)"
    numpy=$(value numpy)
    echo "    the bin's OpenCV $opencv (GStreamer: $(value gstreamer)), numpy $numpy"
fi
if [ "$remote_uid" != 0 ]; then
    "${ssh_cmd[@]}" "$target" "sudo -n true" 2>/dev/null || [ "$dry_run" = 1 ] \
        || die "the login user on $target has no passwordless sudo" "log in as root, or allow sudo without a password"
fi

if [ "$pull" = 1 ]; then
    dest="${review_dir:-review-${target#*@}}"
    mkdir -p "$dest" "$work/review"
    say "copying the review folder of $target into $dest"
    remote review-pack | tar -xf - -C "$work/review" \
        || die "the review folder of $target did not arrive" "check the connection and run it again: nothing was removed"
    PYTHON="$python" "$repo/deploy/review-accept.sh" "$work/review" "$dest" "$work/whole"
    mapfile -t whole <"$work/whole"
    if [ "$delete" = 1 ] && [ "${#whole[@]}" -gt 0 ]; then
        remote review-delete "${whole[@]}"
    fi
    exit 0
fi

# gate_model: stop unless $model puts at least as many of the photos in $gate in the right bin as
# the model the bin runs now
gate_model() {
    [ -n "$current" ] || die "--gate: $target runs no smartbin release to compare with" "deploy once without --gate"
    say "comparing $(basename "$model") with the model $target runs, on the photos in $gate"
    mkdir -p "$work/installed"
    remote model-pack | tar -xf - -C "$work/installed" \
        || die "cannot copy the model $target runs" "check the connection; nothing was changed"
    local rc=0
    "$python" -m edge eval --model "$work/installed" --model "$model" --data "$gate" --json \
        >"$work/gate.json" || rc=$?
    [ "$rc" -le 1 ] || die "smartbin eval could not compare the two models on $gate (see above)" \
        "fix what it names; nothing was changed on $target"
    local figures
    figures=$("$python" -c 'import json, sys
r = json.load(open(sys.argv[1]))
old, new = r["bin_accuracy"]
n, gained, lost = r["n"], len(r["only_second"]), len(r["only_first"])
print(f"{new:.1%} against {old:.1%} bin accuracy on {n} photos ({gained} right only with it, {lost} only with the running model)")
sys.exit(0 if new >= old else 3)' "$work/gate.json") || {
        [ $? = 3 ] || die "cannot read the comparison in $work/gate.json" "run smartbin eval by hand to see why"
        die "$(basename "$model") would put fewer photos in the right bin than the model $target runs: $figures" \
            "label more of the bin's photos and train again, or ship it without --gate"
    }
    echo "    $(basename "$model"): $figures"
}
[ -z "$gate" ] || gate_model

confirm() {
    [ "$yes" = 1 ] || [ "$dry_run" = 1 ] && return 0
    [ -t 0 ] || die "no terminal to ask whether to $1" "pass --yes to go ahead without asking"
    local answer
    read -r -p "$1? [y/N] " answer
    [[ "$answer" =~ ^[yY] ]] || { echo "stopped; nothing changed"; exit 0; }
}

if [ "$rollback" = 1 ]; then
    [ -n "$current" ] || die "$target has no smartbin release" "deploy one first"
    confirm "Switch $target back to its previous release"
    remote rollback "$health_s"
    exit $?
fi

check_arch
release=$(release_id)
config_mode=keep
[ -z "$config" ] || config_mode=replace
say "release $release (model $(basename "$model"))"
[ "$config_mode" = keep ] || echo "    the bin's config will be replaced by $config (the old one is backed up)"
confirm "Deploy smartbin $release to $target"

incoming=""
have=$(remote has "$release")
if [ "$have" = yes ]; then
    say "release $release is already on the bin: nothing to build or copy"
elif [ "$dry_run" = 1 ]; then
    say "build release $release for $arch, Python $pyver"
    echo "    would: build the smartbin wheel, download its dependencies' wheels, add the model and unit"
    [ -z "$opencv" ] || echo "    would: leave out the OpenCV and numpy wheels (the bin's own are used)"
    echo "    would: copy build/release/$release to $target"
else
    build_release
fi
if [ "$dry_run" = 0 ] && { [ "$have" != yes ] || [ -n "$config" ]; }; then
    incoming=$("${ssh_cmd[@]}" "$target" "mktemp -d /tmp/smartbin-incoming.XXXXXX")
    if [ "$have" != yes ]; then
        say "copying the release to $target"
        tar -C "$repo/build/release" -cf - "$release" | "${ssh_cmd[@]}" "$target" "tar -xf - -C $incoming"
    fi
    if [ -n "$config" ]; then
        "${ssh_cmd[@]}" "$target" "cat > $incoming/smartbin.yaml" <"$config"
    fi
fi

say "installing on $target"
set +e
remote install "$release" "$incoming" "$device_id" "$config_mode" "$keep" "$health_s"
status=$?
set -e
[ -z "$incoming" ] || "${ssh_cmd[@]}" "$target" "rm -rf $incoming" || true
case "$status" in
    0) say "done: $target runs smartbin $release" ;;
    1) say "FAILED: smartbin $release did not stay up on $target (see above)" ;;
    *) say "FAILED: a step on $target went wrong (see above)" ;;
esac
exit "$status"
