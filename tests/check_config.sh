#!/bin/sh
# Configuration errors that must be reported, not ignored:
#  - a bogus ATTNVAE_ISA prints a warning naming the valid values;
#  - defining only some of AV_MALLOC, AV_REALLOC, AV_FREE is a compile error.
# usage: check_config.sh CC TEST_BINARY (a test program that runs an op)
cc=$1 bin=$2 failed=0 passed=0
check() { if [ "$1" = 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: $2"; fi; }

out=$(ATTNVAE_ISA=bogus "$bin" 2>&1 >/dev/null)
echo "$out" | grep -q 'ATTNVAE_ISA=bogus is not one of scalar, avx2, avx512, neon'
check $? "ATTNVAE_ISA=bogus gave no warning (stderr: $(echo "$out" | head -c 200))"

for only in 'AV_MALLOC malloc' 'AV_FREE free' 'AV_REALLOC realloc'; do
    out=$(printf '#define %s\n#define ATTNVAE_IMPLEMENTATION\n#include "attnvae.h"\n' "$only" |
          $cc -std=c99 -I. -fsyntax-only -x c - 2>&1)
    echo "$out" | grep -q 'define all of AV_MALLOC, AV_REALLOC and AV_FREE'
    check $? "defining only $only compiled or gave another error: $(echo "$out" | head -c 200)"
done
out=$(printf '#include <stdlib.h>\n#define AV_MALLOC malloc\n#define AV_REALLOC realloc\n#define AV_FREE free\n#define ATTNVAE_IMPLEMENTATION\n#include "attnvae.h"\n' |
      $cc -std=c99 -Wall -Wextra -Wpedantic -Werror -I. -fsyntax-only -x c - 2>&1)
check $? "defining all three allocator macros fails: $(echo "$out" | head -c 200)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
