#!/usr/bin/env bash
# The bin's half of deploy/flash.sh, fed to bash over SSH (as root, except `probe`).
# Not meant to be run by hand: deploy/flash.sh --help explains the steps.
#   remote.sh probe [opencv] | has RELEASE | install RELEASE INCOMING DEVICE_ID keep|replace KEEP HEALTH_S
#   remote.sh rollback HEALTH_S
#   remote.sh review-pack | review-delete NAME.json... | model-pack
# and for deploy/ansible/ (the fleet rollout, which runs these same steps over Ansible's connection):
#   remote.sh status | mqtt-password FILE | restart HEALTH_S | review-pack-to FILE
set -Eeuo pipefail
trap 'echo "flash.sh on the bin: step failed: $BASH_COMMAND" >&2; exit 2' ERR

prefix="${SMARTBIN_PREFIX:-/}"
prefix="${prefix%/}"
systemctl="${SMARTBIN_SYSTEMCTL:-systemctl}"
dry_run="${DRY_RUN:-0}"
python="${SMARTBIN_PYTHON:-python3}"
home="$prefix/opt/smartbin"
releases="$home/releases"
etc="$prefix/etc/smartbin"
config="$etc/smartbin.yaml"
unit="$prefix/etc/systemd/system/smartbin.service"
log_file="$prefix/var/log/smartbin-deploy.log"

step() { echo "--> $*"; }
run() {
    if [ "$dry_run" = 1 ]; then
        echo "    would: $*"
    else
        "$@" || { echo "flash.sh on the bin: this step failed: $*" >&2; exit 2; }
    fi
}
log() {
    [ "$dry_run" = 1 ] && return 0
    mkdir -p "$(dirname "$log_file")"
    local client="${SSH_CLIENT:-local}"
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) ${SUDO_USER:-$(id -un)} from ${client%% *}: $*" >>"$log_file"
}
current_release() { basename "$(readlink "$home/current" 2>/dev/null || true)"; }
previous_release() { basename "$(readlink "$home/previous" 2>/dev/null || true)"; }

# switch_to RELEASE: point `current` at it in one rename, so a reader never sees it half-made
switch_to() {
    run ln -sfn "releases/$1" "$home/current.new"
    run mv -T "$home/current.new" "$home/current"
}

# healthy SECONDS: restart, then the service must stay active that long
healthy() {
    if [ "$dry_run" = 1 ]; then
        echo "    would: $systemctl restart smartbin"
        return 0
    fi
    "$systemctl" restart smartbin || return 1
    local waited=0
    while :; do
        "$systemctl" is-active --quiet smartbin || return 1
        [ "$waited" -lt "$1" ] || return 0
        sleep 1
        waited=$((waited + 1))
    done
}

group_id() { awk -F: -v name="$1" '$1 == name { print $3 }' "$prefix/etc/group"; }

ensure_user() {
    if grep -q '^smartbin:' "$prefix/etc/passwd"; then
        return 0
    fi
    step "create the system user smartbin, in the groups dialout (serial) and video (camera)"
    local args=(--system --home-dir /var/lib/smartbin --no-create-home --shell /usr/sbin/nologin
        --user-group --groups "dialout,video" smartbin)
    [ -z "$prefix" ] || args=(--prefix "$prefix" "${args[@]}")
    run useradd "${args[@]}"
    changed=1
}

probe() {
    echo "uid=$(id -u)"
    echo "arch=$(uname -m)"
    echo "hostname=$(uname -n)"
    if "$python" -c 'import venv, ensurepip' 2>/dev/null; then
        echo "python=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    fi
    echo "glibc=$(getconf GNU_LIBC_VERSION | awk '{ print $2 }')"
    if [ "${1:-}" = opencv ]; then  # --system-opencv: the bin's own (nothing printed if Python has none)
        "$python" -c 'import cv2, numpy
gst = cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER)
print("opencv=%s\nnumpy=%s\ngstreamer=%s" % (cv2.__version__, numpy.__version__, "YES" if gst else "NO"))' \
            2>/dev/null || true
    fi
    status
}

install_release() {
    local release="$1" incoming="$2" dir="$releases/$1"
    if [ -e "$dir/.complete" ]; then
        step "release $release is installed already"
        return 0
    fi
    step "unpack release $release into $dir"
    run mkdir -p "$releases"
    run rm -rf "$dir"
    run mv "$incoming/$release" "$dir"
    step "create its venv (with the system site packages, for the camera stack)"
    run "$python" -m venv --system-site-packages "$dir/venv"
    if [ -e "$dir/SYSTEM_OPENCV" ]; then
        step "install the release's wheels (no network); OpenCV and numpy are the bin's: $(cat "$dir/SYSTEM_OPENCV")"
        run env PIP_CONFIG_FILE=/dev/null "$dir/venv/bin/pip" install --quiet --no-index --no-deps "$dir"/wheels/*.whl
        run "$dir/venv/bin/python" -c 'import cv2, numpy'
    else
        step "install smartbin[edge] from the release's wheels (no network)"
        run env PIP_CONFIG_FILE=/dev/null "$dir/venv/bin/pip" install --quiet --no-index --find-links "$dir/wheels" \
            "smartbin[edge]"
    fi
    run touch "$dir/.complete"
    changed=1
}

install_unit() {
    local new="$releases/$1/systemd/smartbin.service"
    if [ -e "$unit" ] && cmp -s "$new" "$unit"; then
        return 0
    fi
    step "install the unit $unit"
    run install -D -m 0644 "$new" "$unit"
    run "$systemctl" daemon-reload
    changed=1
}

# install_config RELEASE INCOMING DEVICE_ID keep|replace
install_config() {
    local smartbin="$releases/$1/venv/bin/smartbin" gid
    if [ "$4" = replace ]; then
        step "check the new config, then replace $config (the old one is kept as a .bak)"
        run "$smartbin" check --config "$2/smartbin.yaml" --only config
        run mkdir -p "$etc"
        if [ -e "$config" ]; then
            backup="$config.$(date -u +%Y%m%d-%H%M%S).bak"
            run cp -p "$config" "$backup"
        fi
        run install -m 0640 "$2/smartbin.yaml" "$config"
        changed=1
    elif [ ! -e "$config" ]; then
        step "write a new config $config (device_id $3)"
        run mkdir -p "$etc"
        run cp "$releases/$1/reference.yaml" "$config.new"
        run "$smartbin" config --file "$config.new" --set "device_id=$3" --set "model.bundle=$home/current/model"
        run mv "$config.new" "$config"
        changed=1
    else
        step "keep the bin's config $config (deploy/flash.sh --config FILE replaces it)"
        return 0
    fi
    gid=$(group_id smartbin)
    run chown "0:${gid:-0}" "$config"
    run chmod 0640 "$config"
}

prune() {
    local keep="$1" current previous name dir n=0
    current=$(current_release)
    previous=$(previous_release)
    [ -d "$releases" ] || return 0
    while read -r _ name; do
        dir="$releases/$name"
        if [ ! -e "$dir/.complete" ]; then
            step "remove the unfinished release $name"
            run rm -rf "$dir"
            continue
        fi
        n=$((n + 1))
        if [ "$n" -gt "$keep" ] && [ "$name" != "$current" ] && [ "$name" != "$previous" ]; then
            step "remove the old release $name (keeping $keep)"
            run rm -rf "$dir"
        fi
    done < <(find "$releases" -mindepth 1 -maxdepth 1 -type d -printf '%T@ %f\n' | sort -rn)
}

deploy_release() {
    local release="$1" incoming="$2" device_id="$3" config_mode="$4" keep="$5" health_s="$6" was
    changed=0
    backup=""
    install_release "$release" "$incoming"
    ensure_user
    install_unit "$release"
    "$systemctl" is-enabled --quiet smartbin 2>/dev/null || { run "$systemctl" enable smartbin && changed=1; }
    install_config "$release" "$incoming" "$device_id" "$config_mode"
    was=$(current_release)
    if [ "$was" != "$release" ]; then
        step "switch current: ${was:-none} -> $release"
        [ -z "$was" ] || run ln -sfn "releases/$was" "$home/previous"
        switch_to "$release"
        changed=1
    fi
    if [ "$changed" = 0 ]; then
        step "nothing changed"
        "$systemctl" is-active --quiet smartbin || echo "    note: smartbin is not running; see journalctl -u smartbin"
        log "deploy $release: nothing changed"
        return 0
    fi
    step "restart smartbin; it must stay up for $health_s s"
    if healthy "$health_s"; then
        prune "$keep"
        log "deploy $release: ok"
        return 0
    fi
    echo "smartbin $release failed its health check; its log: journalctl -u smartbin -n 50" >&2
    if [ -n "$backup" ]; then
        step "put the old config back"
        run cp -p "$backup" "$config"
    fi
    if [ -n "$was" ] && [ "$was" != "$release" ]; then
        step "roll back to $was"
        switch_to "$was"
        run rm -f "$home/previous"
        run rm -rf "${releases:?}/$release"
        if healthy "$health_s"; then
            log "deploy $release: FAILED its health check; rolled back to $was"
        else
            log "deploy $release: FAILED its health check; rolled back to $was, which is not healthy either"
        fi
    elif [ -n "$backup" ]; then
        # the release ran before; the new config is what failed: run on the old one again
        step "restart smartbin on the old config; it must stay up for $health_s s"
        if healthy "$health_s"; then
            log "deploy $release: FAILED its health check with the new config; the old config is back"
        else
            log "deploy $release: FAILED its health check with the new config; the old config is back, and not healthy either"
        fi
    else
        log "deploy $release: FAILED its health check; no earlier release to roll back to"
    fi
    exit 1
}

rollback() {
    local current previous
    current=$(current_release)
    previous=$(previous_release)
    if [ -z "$previous" ] || [ ! -e "$releases/$previous/.complete" ]; then
        echo "flash.sh on the bin: no previous release to roll back to (current: ${current:-none})" >&2
        exit 2
    fi
    step "switch current: $current -> $previous"
    switch_to "$previous"
    run ln -sfn "releases/$current" "$home/previous"
    step "restart smartbin; it must stay up for $1 s"
    if healthy "$1"; then
        log "rollback $current -> $previous: ok"
        return 0
    fi
    log "rollback $current -> $previous: FAILED its health check"
    echo "smartbin $previous failed its health check too; its log: journalctl -u smartbin -n 50" >&2
    exit 1
}

# review_folder: where the installed smartbin keeps frames for labelling (sorting.review_folder, else
# review/ in the service's state folder), as the installed release reads the bin's config
review_folder() {
    [ -x "$home/current/venv/bin/python" ] || {
        echo "flash.sh on the bin: smartbin is not installed here ($home/current)" >&2
        exit 2
    }
    local args=()
    [ ! -f "$config" ] || args=("$config")
    STATE_DIRECTORY="$prefix/var/lib/smartbin" "$home/current/venv/bin/python" -c '
import sys
from edge.config import load_config
from edge.errors import SmartbinError
from edge.paths import review_folder
try:
    print(review_folder(load_config(sys.argv[1] if len(sys.argv) > 1 else None)))
except SmartbinError as exc:
    sys.exit(f"flash.sh on the bin: {exc}")' "${args[@]}"
}

# review_pack: a tar of every whole pair (a JSON, which is written last, and its JPEG) on stdout;
# the folder's path first, on stderr
review_pack() {
    local folder
    folder=$(review_folder)
    echo "review folder: $folder" >&2
    if [ ! -d "$folder" ]; then
        echo "review folder: none yet at $folder (nothing uncertain or sampled kept so far)" >&2
        tar -cf - -T /dev/null
        return 0
    fi
    cd "$folder"
    local pairs=()
    local jpg
    for json in *.json; do
        jpg="${json%.json}.jpg"
        # plain files only: a link can point anywhere on the bin, and reading a FIFO blocks
        if [ -f "$json" ] && [ ! -L "$json" ] && [ -f "$jpg" ] && [ ! -L "$jpg" ] && [ -s "$jpg" ]; then
            pairs+=("$json" "$jpg")
        elif [ -e "$json" ] || [ -L "$json" ]; then
            echo "review folder: $json or its JPEG is not a plain file (a link, a FIFO, or not written yet): left out" >&2
        fi
    done
    # a pair the daemon prunes meanwhile is left out, not an error
    tar --ignore-failed-read -cf - -- "${pairs[@]}" 2>/dev/null
}

# review_delete NAME.json...: remove these pairs, nothing else
review_delete() {
    local folder name removed=0
    folder=$(review_folder)
    for name in "$@"; do
        [[ "$name" =~ ^[A-Za-z0-9._-]+\.json$ ]] || continue
        if [ -e "$folder/$name" ]; then
            run rm -f -- "$folder/${name%.json}.jpg" "$folder/$name"
            removed=$((removed + 1))
        fi
    done
    echo "removed $removed pairs from $folder"
}

# status: what the bin runs (current=, previous=, model=, active=); the end of probe's answer too
status() {
    local model=""
    if [ -f "$home/current/model/model.json" ]; then
        model=$("$python" -c 'import json, sys
print(json.load(open(sys.argv[1])).get("model_id", ""))' "$home/current/model/model.json" 2>/dev/null || true)
    fi
    echo "current=$(current_release)"
    echo "previous=$(previous_release)"
    echo "model=$model"
    if "$systemctl" is-active --quiet smartbin 2>/dev/null; then echo "active=yes"; else echo "active=no"; fi
}

# mqtt_password FILE: install FILE as the bin's broker password ($etc/mqtt-password, root:smartbin 0640);
# prints `changed` or `unchanged`
mqtt_password() {
    local secret="$etc/mqtt-password" gid
    if [ -f "$secret" ] && cmp -s "$1" "$secret"; then
        [ "$dry_run" = 1 ] || rm -f "$1"
        echo unchanged
        return 0
    fi
    if [ "$dry_run" = 1 ]; then
        echo "    would: install the broker password as $secret (root:smartbin 0640)" >&2
        echo changed
        return 0
    fi
    ensure_user >&2
    mkdir -p "$etc"
    gid=$(group_id smartbin)
    install -m 0640 -o 0 -g "${gid:-0}" "$1" "$secret.new"
    mv -f "$secret.new" "$secret"
    rm -f "$1"
    log "broker password of the smartbin user set"
    echo changed
}

# restart HEALTH_S: restart the service; it must stay up HEALTH_S seconds
restart() {
    step "restart smartbin; it must stay up for $1 s"
    if healthy "$1"; then
        log "restart on $(current_release): ok"
        return 0
    fi
    log "restart on $(current_release): FAILED its health check"
    echo "smartbin failed its health check after a restart; its log: journalctl -u smartbin -n 50" >&2
    exit 1
}

action="${1:?remote.sh: no action}"
shift
case "$action" in
    probe) probe "${1:-}" ;;
    has) if [ -e "$releases/$1/.complete" ]; then echo yes; else echo no; fi ;;
    install) deploy_release "$@" ;;
    rollback) rollback "$@" ;;
    review-pack) review_pack ;;
    review-pack-to) review_pack >"${1:?remote.sh review-pack-to needs a file}" ;;
    status) status ;;
    mqtt-password) mqtt_password "${1:?remote.sh mqtt-password needs a file}" ;;
    restart) restart "${1:?remote.sh restart needs seconds}" ;;
    review-delete) review_delete "$@" ;;
    model-pack) tar -C "$home/current/model" -cf - . ;;
    *) echo "remote.sh: unknown action $action" >&2; exit 2 ;;
esac
