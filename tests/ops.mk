# tests/ops.mk - op, autodiff and optimizer tests. Include from the top-level
# Makefile (paths are relative to the repository root) or run directly:
#   make -f tests/ops.mk test-ops
#   make -f tests/ops.mk test-ops OPS_EXTRA="-fsanitize=address,undefined -g"
#   make -f tests/ops.mk test-ops OPS_RUN="valgrind -q --error-exitcode=9"
CC ?= cc
OPS_CFLAGS ?= -std=c99 -O2 -Wall -Wextra -Wpedantic -Werror
OPS_EXTRA ?=
OPS_RUN ?=
OPS_PYTHON ?= /usr/bin/python3
OPS_DEPS = attnvae.h $(wildcard parts/*.c parts/*.h) tests/test.h tests/gradcheck.h

build/test_ops: tests/test_ops.c $(OPS_DEPS)
	@mkdir -p build
	$(CC) $(OPS_CFLAGS) $(OPS_EXTRA) -o $@ tests/test_ops.c -lm

build/test_optim: tests/test_optim.c $(OPS_DEPS)
	@mkdir -p build
	$(CC) $(OPS_CFLAGS) $(OPS_EXTRA) -o $@ tests/test_optim.c -lm

build/test_torch_ref: tests/test_torch_ref.c $(OPS_DEPS)
	@mkdir -p build
	$(CC) $(OPS_CFLAGS) $(OPS_EXTRA) -o $@ tests/test_torch_ref.c -lm

# Runs every program even when one fails; fails if any did. test_torch_ref
# compares with PyTorch through tests/torch_ref.py and skips (counting
# nothing) when python3-torch is missing.
test-ops: build/test_ops build/test_optim build/test_torch_ref
	@rc=0; \
	$(OPS_RUN) ./build/test_ops || rc=1; \
	$(OPS_RUN) ./build/test_optim || rc=1; \
	ATTNVAE_PYTHON=$(OPS_PYTHON) $(OPS_RUN) ./build/test_torch_ref tests/torch_ref.py build || rc=1; \
	exit $$rc

.PHONY: test-ops
