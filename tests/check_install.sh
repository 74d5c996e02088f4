#!/bin/sh
# make install / uninstall: into a temporary prefix (and with DESTDIR), a
# program that includes <attnvae.h> builds with `pkg-config --cflags --libs
# attnvae` and runs, and uninstall removes both files.
#   tests/check_install.sh CC
set -u
cc=${1:-cc}
tmp=$(mktemp -d)
passed=0 failed=0
check() { if [ "$1" = 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: $2"; fi; }

make -s install PREFIX="$tmp/usr" >/dev/null
check $? "make install PREFIX=$tmp/usr"
[ -f "$tmp/usr/include/attnvae.h" ] && cmp -s attnvae.h "$tmp/usr/include/attnvae.h"
check $? "the header is installed as it is"
cat > "$tmp/prog.c" <<'PROG'
#define ATTNVAE_IMPLEMENTATION
#include <attnvae.h>
#include <stdio.h>
int main(void) {
    av_ctx *c = av_ctx_new();
    float sum = av_item(av_sum_all(c, av_exp(c, av_zeros(c, 1, 3))));
    printf("%g %s\n", (double)sum, ATTNVAE_VERSION);
    av_ctx_free(c);
    return sum == 3.0f ? 0 : 1;
}
PROG
flags=$(PKG_CONFIG_PATH="$tmp/usr/lib/pkgconfig" pkg-config --cflags --libs attnvae)
check $? "pkg-config finds attnvae"
$cc -std=c99 -Wall -Wextra -Wpedantic -Werror -o "$tmp/prog" "$tmp/prog.c" $flags && "$tmp/prog" >/dev/null
check $? "a program builds with the installed header and pkg-config's flags ($flags) and runs"
make -s uninstall PREFIX="$tmp/usr" >/dev/null
[ ! -e "$tmp/usr/include/attnvae.h" ] && [ ! -e "$tmp/usr/lib/pkgconfig/attnvae.pc" ]
check $? "make uninstall removes the header and attnvae.pc"
make -s install PREFIX=/usr DESTDIR="$tmp/stage" >/dev/null
[ -f "$tmp/stage/usr/include/attnvae.h" ] && grep -q '^prefix=/usr$' "$tmp/stage/usr/lib/pkgconfig/attnvae.pc"
check $? "DESTDIR stages the files while attnvae.pc names the final prefix"
rm -rf "$tmp"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
