#!/usr/bin/env bash
# tools/lua-core.sh OUTDIR "CFLAGS..."
# Owns OUTDIR: builds OUTDIR/liblua.a (Lua 5.4 core + standard libraries, all of
# src/*.c but lua.c/luac.c) and OUTDIR/include/{lua,luaconf,lualib,lauxlib}.h (plus
# lua5.4-deb-multiarch.h, which Debian's luaconf.h includes) from
# Debian's own lua5.4 source package, compiled with ${CC:-clang} and CFLAGS (e.g.
# "-O1 -g -fsanitize=thread") plus Debian's -DLUA_COMPAT_5_3 -DLUA_USE_LINUX, so a
# sanitizer sees inside the Lua core. The source comes via `apt-get source` with a
# private deb-src list derived from this machine's apt sources; the system's apt
# lists and caches are not touched. Idempotent: does nothing if OUTDIR/liblua.a is
# newer than this script and was built with the same CFLAGS.
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 OUTDIR \"CFLAGS...\"" >&2; exit 2; }
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
CFLAGS=$2
CC=${CC:-clang}
if [ "$OUT/liblua.a" -nt "$0" ] && [ "$(cat "$OUT/.cflags" 2>/dev/null)" = "$CFLAGS" ]; then
    exit 0
fi

# dpkg-source (from dpkg-dev) unpacks what `apt-get source` downloads.
if ! command -v dpkg-source >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q dpkg-dev
    else
        echo "$0: dpkg-dev is missing; run: sudo apt-get install -y dpkg-dev" >&2
        exit 1
    fi
fi

# Private apt state: the machine's enabled sources with deb turned into deb-src.
APT=$OUT/apt
rm -rf "$APT" && mkdir -p "$APT/parts" "$APT/lists/partial" "$APT/cache/archives/partial"
: > "$APT/sources.list"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] && sed -n 's/^[[:space:]]*deb[[:space:]]/deb-src /p' "$f" >> "$APT/sources.list"
done
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && sed 's/^Types:.*\<deb\>.*$/Types: deb-src/' "$f" > "$APT/parts/$(basename "$f")"
done
APTOPTS=(-q -o Dir::Etc::SourceList="$APT/sources.list" -o Dir::Etc::SourceParts="$APT/parts"
         -o Dir::State::Lists="$APT/lists" -o Dir::Cache="$APT/cache"
         -o APT::Sandbox::User=root)
apt-get "${APTOPTS[@]}" update || echo "$0: warning: apt-get update reported errors" >&2

# Prefer the exact version of the installed liblua5.4 so the headers match it.
SRC=$OUT/source
rm -rf "$SRC" && mkdir -p "$SRC"
VER=$(dpkg-query -W -f='${Version}' liblua5.4-dev 2>/dev/null || true)
( cd "$SRC" && { { [ -n "$VER" ] && apt-get "${APTOPTS[@]}" source "lua5.4=$VER"; } ||
                 apt-get "${APTOPTS[@]}" source lua5.4; } )
LUASRC=$(dirname "$(find "$SRC" -path '*/src/lapi.c' | head -n1)")
[ -f "$LUASRC/lapi.c" ] || { echo "$0: no src/lapi.c under $SRC" >&2; exit 1; }
# Debian's luaconf.h includes this header, which debian/rules generates at build
# time; make it here, or the compiler would silently pick up liblua5.4-dev's copy.
MA=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || "$CC" -print-multiarch)
printf '#ifndef _LUA_DEB_MULTIARCH_\n#define _LUA_DEB_MULTIARCH_\n#define DEB_HOST_MULTIARCH "%s"\n#endif\n' \
    "$MA" > "$LUASRC/lua5.4-deb-multiarch.h"

# Compile and archive.
OBJ=$OUT/obj
rm -rf "$OBJ" "$OUT/include" && mkdir -p "$OBJ" "$OUT/include"
for c in "$LUASRC"/*.c; do
    case ${c##*/} in lua.c|luac.c) continue ;; esac
    # shellcheck disable=SC2086  # CFLAGS is a list of words
    "$CC" $CFLAGS -DLUA_COMPAT_5_3 -DLUA_USE_LINUX -c "$c" -o "$OBJ/$(basename "${c%.c}").o"
done
rm -f "$OUT/liblua.a"
ar rcs "$OUT/liblua.a" "$OBJ"/*.o
cp "$LUASRC"/{lua.h,luaconf.h,lualib.h,lauxlib.h,lua5.4-deb-multiarch.h} "$OUT/include/"
printf '%s' "$CFLAGS" > "$OUT/.cflags"
echo "$0: built $OUT/liblua.a from $(basename "$(dirname "$LUASRC")")"
