#!/usr/bin/env bash
# Checks a siprox .deb (tests/run.sh builds one with deploy/package.sh and runs this):
#   - dpkg-deb --contents/--info: the binaries, the unit, the conffiles, man pages,
#     completions, docs, the maintainer scripts;
#   - the unit with systemd-analyze verify (against the unpacked package);
#   - an install into a throw-away root: dpkg -x, then the package's postinst run with
#     DPKG_ROOT (the siprox user, /var/lib/siprox, the /etc/siprox/var link, the development
#     certificates), twice (an upgrade changes nothing an operator owns);
#   - siprox started from that root's /etc/siprox layout as the siprox user, with the
#     capabilities and NOTIFY_SOCKET systemd would give: READY=1 arrives, siproxctl with the
#     package's client config answers, SIGTERM gives STOPPING=1 and exit 0.
#
#   tests/package.sh target/debian/siprox_*.deb
set -euo pipefail
deb="$(realpath "$1")"
fail() {
    echo "package check: $*" >&2
    exit 1
}

contents=$(dpkg-deb --contents "$deb")
for f in usr/bin/siprox usr/bin/siproxctl lib/systemd/system/siprox.service \
    etc/siprox/conf.d/00-core.toml etc/siprox/conf.d/auth/users.toml \
    etc/siprox/conf.d/scripts/default.cfg etc/siprox/siproxctl.toml \
    usr/share/man/man8/siprox.8.gz usr/share/man/man8/siproxctl.8.gz usr/share/man/man5/siprox.conf.5.gz \
    usr/share/bash-completion/completions/siprox usr/share/bash-completion/completions/siproxctl \
    usr/share/zsh/vendor-completions/_siprox usr/share/fish/vendor_completions.d/siproxctl.fish \
    usr/share/doc/siprox/README.md usr/share/doc/siprox/rpc.md \
    usr/share/doc/siprox/grafana/siprox.json usr/share/doc/siprox/prometheus/alerts.yml; do
    grep -qE " \./$f\$" <<<"$contents" || fail "$f is not in the package"
done
grep -qE '^-rwxr-xr-x .* \./usr/bin/siprox$' <<<"$contents" || fail "/usr/bin/siprox is not 0755"
info=$(dpkg-deb --info "$deb")
grep -q '^ Package: siprox$' <<<"$info" || fail "Package: siprox: $info"
grep -qE '^ Depends: .*passwd' <<<"$info" || fail "Depends lacks passwd: $info"
for s in postinst postrm prerm conffiles; do
    grep -qE "^ +[0-9]+ bytes, +[0-9]+ lines +\*? *$s" <<<"$info" || fail "no $s: $info"
done
conffiles=$(dpkg-deb --info "$deb" conffiles)
for f in /etc/siprox/conf.d/00-core.toml /etc/siprox/conf.d/auth/users.toml /etc/siprox/siproxctl.toml; do
    grep -qx "$f" <<<"$conffiles" || fail "$f is not a conffile: $conffiles"
done
echo "package check: contents, info and conffiles ok"

root=$(mktemp -d -t siprox-root.XXXXXX)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"
dpkg-deb -x "$deb" "$root"
dpkg-deb -e "$deb" "$root/DEBIAN"

# The man pages: siprox.conf(5) lists the schema's keys; the others come from clap.
zcat "$root/usr/share/man/man5/siprox.conf.5.gz" | grep -q '^\\fBmax_connections\\fR = 32768$' ||
    fail "siprox.conf(5) lacks [connections] max_connections"
zcat "$root/usr/share/man/man8/siprox.8.gz" | grep -q 'dev\\-certs' || fail "siprox(8) lacks dev-certs"
zcat "$root/usr/share/man/man8/siproxctl.8.gz" | grep -q 'url' || fail "siproxctl(8) lacks --url"
# The bash completions load and complete the subcommands.
bash -c "source '$root/usr/share/bash-completion/completions/siprox' && complete -p siprox" \
    >/dev/null || fail "the bash completion of siprox does not load"

# The packaged unit, its binaries taken from the unpacked package (verify checks that they
# exist and are executable); man pages are not installed on this host.
mkdir -p "$root/verify"
sed "s|/usr/bin/siprox|$root/usr/bin/siprox|g" "$root/lib/systemd/system/siprox.service" \
    >"$root/verify/siprox.service"
systemd-analyze verify --man=no "$root/verify/siprox.service" || fail "systemd-analyze verify"
echo "package check: systemd-analyze verify ok"

# A minimal system for the maintainer scripts: root in passwd/group/shadow.
mkdir -p "$root/etc"
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
echo 'root:*:19000:0:99999:7:::' >"$root/etc/shadow"
echo 'root:*::' >"$root/etc/gshadow"
DPKG_ROOT="$root" sh "$root/DEBIAN/postinst" configure ||
    fail "postinst configure"
grep -q '^siprox:' "$root/etc/passwd" || fail "no siprox user"
uid=$(awk -F: '$1 == "siprox" { print $3 }' "$root/etc/passwd")
gid=$(awk -F: '$1 == "siprox" { print $3 }' "$root/etc/group")
[ "$(stat -c %u:%a "$root/var/lib/siprox")" = "$uid:750" ] || fail "/var/lib/siprox owner or mode"
[ "$(readlink "$root/etc/siprox/var")" = ../../var/lib/siprox ] || fail "/etc/siprox/var link"
for f in server.pem server.key ca.pem admin.pem admin.key; do
    [ "$(stat -c %g:%a "$root/etc/siprox/certs/$f")" = "$gid:640" ] ||
        fail "certs/$f: $(stat -c %U:%G:%a "$root/etc/siprox/certs/$f")"
done
[ "$(stat -c %a "$root/etc/siprox/certs/ca.key")" = 600 ] || fail "certs/ca.key is not 0600"
# An upgrade (configure with the old version) touches nothing an operator owns.
echo "# an operator's edit" >>"$root/etc/siprox/conf.d/00-core.toml"
sums() { find "$root/etc/siprox" -type f -exec sha256sum {} + | sort; }
before=$(sums)
DPKG_ROOT="$root" sh "$root/DEBIAN/postinst" configure 0.0.9 || fail "postinst upgrade"
[ "$before" = "$(sums)" ] || fail "the upgrade's postinst changed files in /etc/siprox"
echo "package check: postinst ok (user $uid:$gid, state dir, certificates, upgrade)"

# siprox from the package's layout, as the unit runs it: the siprox user, only
# CAP_NET_BIND_SERVICE, NOTIFY_SOCKET. Ports: the packaged ones, unless taken here (then
# free ones, through the environment as an operator's drop-in would).
ports=$(python3 -c 'import socket
s=[socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')
read -r sip tls mgmt <<<"$ports"
export SIPROX_LISTEN="[{proto=\"udp\",addr=\"127.0.0.1:$sip\"},{proto=\"tcp\",addr=\"127.0.0.1:$sip\"},{proto=\"tls\",addr=\"127.0.0.1:$tls\"}]"
export SIPROX_MANAGEMENT__LISTEN="127.0.0.1:$mgmt"
setpriv --reuid="$uid" --regid="$gid" --clear-groups \
    "$root/usr/bin/siprox" -c "$root/etc/siprox/conf.d" check >/dev/null ||
    fail "siprox check as the siprox user"
ROOT="$root" UID_="$uid" GID_="$gid" MGMT="$mgmt" python3 - <<'PY' || fail "siprox did not run from the package's layout"
import os, socket, subprocess, sys, time
root, mgmt = os.environ["ROOT"], os.environ["MGMT"]
path = os.path.join(root, "run-notify")
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(path)
os.chmod(path, 0o666)
sock.settimeout(1.0)
env = dict(os.environ, NOTIFY_SOCKET=path)
p = subprocess.Popen(["setpriv", "--reuid", os.environ["UID_"], "--regid", os.environ["GID_"],
                      "--clear-groups", "--inh-caps=+net_bind_service",
                      "--ambient-caps=+net_bind_service",
                      os.path.join(root, "usr/bin/siprox"), "-c",
                      os.path.join(root, "etc/siprox/conf.d")], env=env,
                     stdout=subprocess.DEVNULL, stderr=open(os.path.join(root, "siprox.log"), "w"))
def wait_for(line, limit):
    end = time.time() + limit
    while time.time() < end:
        try:
            msg = sock.recv(4096).decode()
        except socket.timeout:
            if p.poll() is not None:
                return False
            continue
        if line in msg.splitlines():
            return True
    return False
try:
    if not wait_for("READY=1", 60):
        print("no READY=1:", open(os.path.join(root, "siprox.log")).read(), file=sys.stderr)
        sys.exit(1)
    ctl = subprocess.run([os.path.join(root, "usr/bin/siproxctl"), "--config",
                          os.path.join(root, "etc/siprox/siproxctl.toml"), "--url",
                          f"https://127.0.0.1:{mgmt}", "version"], capture_output=True, text=True)
    if ctl.returncode != 0:
        print("siproxctl:", ctl.stdout, ctl.stderr, file=sys.stderr)
        sys.exit(1)
    p.terminate()
    if not wait_for("STOPPING=1", 30) or p.wait(30) != 0:
        print("no clean stop", file=sys.stderr)
        sys.exit(1)
finally:
    if p.poll() is None:
        p.kill()
PY
# It wrote its state through /etc/siprox/var into /var/lib/siprox, as the siprox user.
[ "$(stat -c %u "$root/var/lib/siprox/flow.key" 2>/dev/null)" = "$uid" ] ||
    fail "no flow key written by the siprox user in /var/lib/siprox: $(ls -la "$root/var/lib/siprox")"
echo "package check: siprox ran from the package's /etc/siprox as the siprox user (READY=1, siproxctl, STOPPING=1)"
