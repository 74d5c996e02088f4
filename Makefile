# attnvae: build, test, benchmark and demo.
#   make demo      install what it needs, train the Fashion-MNIST VAE, write PNGs
#   make test      the whole test suite (ends with "N passed, M failed")
#   make bench     GEMM vs OpenBLAS; the VAE, attention, an LSTM, convolutions, AttentionNet training and
#                  charlm vs PyTorch; fused vs composed scores; the 2-thread speedup of a VAE and an MLP step
#   make install   the header and attnvae.pc under PREFIX (/usr/local), DESTDIR honoured; make uninstall
#   make test-clang  the C tests and examples built with clang (CI runs it after make test)
#   make sanitize  the test suite under ASan + UBSan
#   make valgrind  the test suite under valgrind
#   make test-arm64  the test suite cross-compiled for AArch64 (NEON), run under qemu
#   make test-mpi  data-parallel training over MPI: 2 and 3 ranks on this machine
#   make bench-mpi  VAE training images per second on 1 and 2 ranks of one thread
#   make fuzz      the file readers under libFuzzer (FUZZ_SECONDS each, default 60)
# CC=clang works for every target.

CC      ?= cc
ifeq ($(origin CXX),default)
CXX     := $(if $(findstring clang,$(CC)),clang++,g++)
endif
WARN     = -Wall -Wextra -Wpedantic -Werror
CFLAGS  ?= -O2
OPENMP  ?= -fopenmp
PYTHON  ?= /usr/bin/python3
BUILD   := build
DATA    := data/fashion
OUT     := out
HEADER  := attnvae.h
C99      = $(CC) -std=c99 $(WARN) $(CFLAGS)

# One test program a line, so that branches adding tests merge cleanly.
TESTS :=
TESTS += test_core
TESTS += test_ops
TESTS += test_rng
TESTS += test_attention
TESTS += test_scores
TESTS += test_conv
TESTS += test_transformer
TESTS += test_decoding
TESTS += test_rnn
TESTS += test_optim
TESTS += test_gemm
TESTS += test_io
TESTS += test_vae
TESTS += test_torch_ref
TESTS += test_attn_ref
TESTS += test_transformer_ref
TESTS += test_rnn_ref
TESTS += test_conv_ref
TESTS += test_imgattn
TESTS += test_alloc
OMP_TESTS :=
OMP_TESTS += test_gemm
OMP_TESTS += test_attention
OMP_TESTS += test_optim
OMP_TESTS += test_scores
OMP_TESTS += test_conv
OMP_TESTS += test_rnn
OMP_TESTS += test_threads
EXAMPLES := mlp_fashion vae_fashion ae_fashion
EXAMPLES += text_classifier
EXAMPLES += charlm
EXAMPLES += cnn_attention_fashion
EXAMPLES += seq2seq_dates
EXAMPLES += conv_vae_fashion
EXAMPLES += sagan_fashion
# Examples built with MPI (-DATTNVAE_MPI, Open MPI's flags from pkg-config)
# where Open MPI is installed: they take --mpi, and run as one process without it.
MPI_EXAMPLES := $(if $(shell pkg-config --exists ompi-c && echo yes),vae_fashion charlm)
MPI_CFLAGS = $$(pkg-config --cflags ompi-c)
MPI_LIBS   = $$(pkg-config --libs ompi-c)
# as root (CI) Open MPI wants to be told; --oversubscribe: more ranks than cores
MPIRUN_ENV = OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN     = $(MPIRUN_ENV) mpirun --oversubscribe

.PHONY: install uninstall all examples tests test test-clang bench bench-steps sanitize valgrind test-arm64 test-mpi bench-mpi fuzz demo deps deps-test deps-bench deps-arm64 deps-fuzz data clean

all: examples tests

examples: $(EXAMPLES:%=$(BUILD)/%)
tests: $(TESTS:%=$(BUILD)/%) $(TESTS:%=$(BUILD)/cxx/%) $(OMP_TESTS:%=$(BUILD)/%_omp) $(BUILD)/test_examples $(BUILD)/cxx/test_examples

$(BUILD):
	@mkdir -p $@

$(BUILD)/%: examples/%.c $(wildcard examples/*.h) $(HEADER) | $(BUILD)
	$(C99) $(OPENMP) -o $@ $< -lstb -lm

$(MPI_EXAMPLES:%=$(BUILD)/%): $(BUILD)/%: examples/%.c examples/common.h $(HEADER) | $(BUILD)
	$(C99) $(OPENMP) -DATTNVAE_MPI $(MPI_CFLAGS) -o $@ $< $(MPI_LIBS) -lstb -lm

$(BUILD)/test_%: tests/test_%.c tests/test.h $(wildcard tests/*.h) $(HEADER) | $(BUILD)
	$(C99) -o $@ $< -lm -pthread

# Threaded builds: their tests compare 1 and 2 threads bit for bit.
$(BUILD)/%_omp: tests/%.c tests/test.h $(wildcard tests/*.h) $(HEADER) | $(BUILD)
	$(C99) $(OPENMP) -o $@ $< -lm -pthread

# The examples' shared helpers (examples/common.h) write PNGs with libstb.
$(BUILD)/test_examples: tests/test_examples.c tests/test.h $(wildcard examples/*.h) $(HEADER) | $(BUILD)
	$(C99) -o $@ $< -lstb -lm -pthread
$(BUILD)/cxx/test_examples: tests/test_examples.c tests/test.h $(wildcard examples/*.h) $(HEADER)
	@mkdir -p $(BUILD)/cxx
	$(CXX) -x c++ -std=c++11 $(WARN) $(CFLAGS) -o $@ $< -lstb -lm -pthread

# The header must also work as C++: the test programs are built as C++ too.
$(BUILD)/cxx/test_%: tests/test_%.c tests/test.h $(wildcard tests/*.h) $(HEADER)
	@mkdir -p $(BUILD)/cxx
	$(CXX) -x c++ -std=c++11 $(WARN) $(CFLAGS) -o $@ $< -lm -pthread

# ---- tests ------------------------------------------------------------
# $(call suite,RUNNER,DIR): one quoted command per test program in DIR, each
# run through RUNNER (empty, valgrind or qemu); tests/run totals them.
suite = \
	"$(1) $(2)/test_core" \
	"$(1) $(2)/test_ops" \
	"$(1) $(2)/test_rng" \
	"$(1) $(2)/test_attention" \
	"$(1) $(2)/test_scores" \
	"$(1) $(2)/test_conv $(2)" \
	"$(1) $(2)/test_imgattn" \
	"$(1) $(2)/test_transformer" \
	"$(1) $(2)/test_decoding" \
	"$(1) $(2)/test_optim" \
	"$(1) $(2)/test_gemm" \
	"rm -rf $(2)/io_tmp && mkdir -p $(2)/io_tmp && $(PYTHON) tests/make_safetensors.py write $(2)/io_tmp && $(1) $(2)/test_io $(2)/io_tmp && $(PYTHON) tests/make_safetensors.py check $(2)/io_tmp" \
	"rm -rf $(2)/vae_tmp && mkdir -p $(2)/vae_tmp && $(1) $(2)/test_vae $(2)/vae_tmp" \
	"ATTNVAE_PYTHON=$(PYTHON) $(1) $(2)/test_torch_ref tests/torch_ref.py $(2)" \
	"ATTNVAE_PYTHON=$(PYTHON) $(1) $(2)/test_attn_ref tests/attn_ref.py $(2)" \
	"ATTNVAE_PYTHON=$(PYTHON) $(1) $(2)/test_transformer_ref tests/transformer_ref.py $(2)" \
	"$(1) $(2)/test_alloc $(2)" \
	"$(1) $(2)/test_rnn" \
	"ATTNVAE_PYTHON=$(PYTHON) $(1) $(2)/test_rnn_ref tests/rnn_ref.py $(2)" \
	"ATTNVAE_PYTHON=$(PYTHON) $(1) $(2)/test_conv_ref tests/conv_ref.py $(2)"

# The examples' helpers, and the examples on bad command lines and odd data.
examples_suite = \
	"$(1) $(2)/test_examples $(2)/examples_tmp" \
	"tests/examples_bad_input.sh $(2)"

# The examples run in --quick mode; the GEMM, the vector math, and attention
# and the Transformer against PyTorch run on every path this CPU has
# (ATTNVAE_ISA forces one), the GEMM and attention threaded too.
TEST_CMDS = $(call suite,,$(BUILD)) $(call suite,,$(BUILD)/cxx) $(call examples_suite,,$(BUILD)) \
	"$(BUILD)/cxx/test_examples $(BUILD)/cxx/examples_tmp" \
	"OMP_NUM_THREADS=2 $(BUILD)/test_gemm_omp" \
	"OMP_NUM_THREADS=2 $(BUILD)/test_attention_omp" \
	"OMP_NUM_THREADS=2 $(BUILD)/test_conv_omp $(BUILD)" \
	"OMP_NUM_THREADS=2 $(BUILD)/test_optim_omp" \
	"OMP_NUM_THREADS=2 $(BUILD)/test_scores_omp" \
	"OMP_NUM_THREADS=2 $(BUILD)/test_rnn_omp" \
	"ATTNVAE_ISA=avx2 $(BUILD)/test_rnn" "ATTNVAE_ISA=scalar $(BUILD)/test_rnn" \
	"OMP_NUM_THREADS=2 $(BUILD)/test_threads_omp" \
	"ATTNVAE_ISA=scalar $(BUILD)/test_gemm --quick" \
	"ATTNVAE_ISA=avx2 $(BUILD)/test_ops" "ATTNVAE_ISA=scalar $(BUILD)/test_ops" \
	"ATTNVAE_ISA=avx2 $(BUILD)/test_conv $(BUILD)" "ATTNVAE_ISA=scalar $(BUILD)/test_conv $(BUILD)" \
	"ATTNVAE_ISA=avx2 $(BUILD)/test_optim" "ATTNVAE_ISA=scalar $(BUILD)/test_optim" \
	"ATTNVAE_ISA=avx2 ATTNVAE_PYTHON=$(PYTHON) $(BUILD)/test_attn_ref tests/attn_ref.py $(BUILD)" \
	"ATTNVAE_ISA=scalar ATTNVAE_PYTHON=$(PYTHON) $(BUILD)/test_attn_ref tests/attn_ref.py $(BUILD)" \
	"ATTNVAE_ISA=avx2 ATTNVAE_PYTHON=$(PYTHON) $(BUILD)/test_transformer_ref tests/transformer_ref.py $(BUILD)" \
	"ATTNVAE_ISA=scalar ATTNVAE_PYTHON=$(PYTHON) $(BUILD)/test_transformer_ref tests/transformer_ref.py $(BUILD)" \
	"$(BUILD)/mlp_fashion --quick --data $(DATA) --out $(BUILD)/mlp_quick.safetensors" \
	"$(BUILD)/vae_fashion --quick --data $(DATA) --out $(BUILD)/vae_quick" \
	"$(BUILD)/vae_fashion --quick --data $(DATA) --out $(BUILD)/vae_quick --load $(BUILD)/vae_quick/vae.safetensors" \
	"$(BUILD)/vae_fashion --quick --latent 2 --data $(DATA) --out $(BUILD)/vae_quick2" \
	"$(BUILD)/ae_fashion --quick --data $(DATA) --out $(BUILD)/ae_quick" \
	"$(BUILD)/text_classifier --quick --out $(BUILD)/text_classifier_quick.safetensors --png $(BUILD)/text_attention_quick.png" \
	"echo 'The judge sustained the objection.' | $(BUILD)/text_classifier --load $(BUILD)/text_classifier_quick.safetensors" \
	"$(BUILD)/charlm --quick --out $(BUILD)/charlm_quick" \
	"$(BUILD)/charlm --quick --arch lstm --out $(BUILD)/charlm_quick_lstm" \
	"PYTHON=$(PYTHON) tests/charlm_check.sh $(BUILD)" \
	"$(BUILD)/cnn_attention_fashion --quick --no-attention --data $(DATA) --out $(BUILD)/cnn_quick/cnn.safetensors --maps $(BUILD)/cnn_quick/maps.png" \
	"$(BUILD)/cnn_attention_fashion --quick --data $(DATA) --load $(BUILD)/cnn_quick/cnn.safetensors --maps $(BUILD)/cnn_quick/maps_loaded.png" \
	"$(BUILD)/seq2seq_dates --quick --out $(BUILD)/dates_quick" \
	"$(BUILD)/conv_vae_fashion --quick --data $(DATA) --out $(BUILD)/conv_vae_quick" \
	"$(BUILD)/conv_vae_fashion --quick --data $(DATA) --out $(BUILD)/conv_vae_quick --load $(BUILD)/conv_vae_quick/conv_vae.safetensors" \
	"$(BUILD)/conv_vae_fashion --quick --no-attention --data $(DATA) --out $(BUILD)/conv_vae_quick_noattn" \
	"rm -rf $(BUILD)/sagan_quick && $(BUILD)/sagan_fashion --quick --data $(DATA) --out $(BUILD)/sagan_quick --fid-net $(BUILD)/sagan_quick/none --vae $(BUILD)/sagan_quick/none" \
	"$(BUILD)/sagan_fashion --quick --data $(DATA) --out $(BUILD)/sagan_quick --fid-net $(BUILD)/sagan_quick/none --vae $(BUILD)/sagan_quick/none --load $(BUILD)/sagan_quick" \
	"tests/check_config.sh '$(CC)' $(BUILD)/test_core" \
	"tests/check_install.sh '$(CC)'" \
	"$(BAD_DATA_CHECK)"

# Images and labels that do not match: the example's error says why.
BAD_DATA_CHECK = rm -rf $(BUILD)/bad_data && mkdir -p $(BUILD)/bad_data && \
	ln -s $(abspath $(DATA))/train-images-idx3-ubyte $(BUILD)/bad_data/ && \
	ln -s $(abspath $(DATA))/t10k-labels-idx1-ubyte $(BUILD)/bad_data/train-labels-idx1-ubyte && \
	! $(BUILD)/mlp_fashion --quick --data $(BUILD)/bad_data 2> $(BUILD)/bad_data/err && cat $(BUILD)/bad_data/err && \
	grep -qF 'train-images-idx3-ubyte (3 dimensions, 60000 items) and train-labels-idx1-ubyte (1 dimensions, 10000 items) do not match' $(BUILD)/bad_data/err

test: deps-test data all
	@tests/run $(TEST_CMDS)

# clang: the C build of the tests and examples, their suites, one test as
# C++ (clang++ compiles the whole header) and the configuration checks; the
# ISA reruns, the threads and the --quick runs are make test's.
CLANG_BUILD = build/clang
test-clang: deps-test data
	$(MAKE) CC=clang BUILD=$(CLANG_BUILD) $(TESTS:%=$(CLANG_BUILD)/%) $(EXAMPLES:%=$(CLANG_BUILD)/%) \
		$(CLANG_BUILD)/test_examples $(CLANG_BUILD)/cxx/test_core
	@tests/run $(call suite,,$(CLANG_BUILD)) $(call examples_suite,,$(CLANG_BUILD)) "$(CLANG_BUILD)/cxx/test_core" \
		"tests/check_config.sh clang $(CLANG_BUILD)/test_core" "tests/check_install.sh clang"

SAN = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
sanitize: deps-test
	$(MAKE) BUILD=build/san CFLAGS="$(SAN)" OPENMP= tests examples
	@ASAN_OPTIONS=detect_leaks=1 tests/run $(call suite,,build/san) $(call suite,,build/san/cxx) \
		$(call examples_suite,,build/san)

VALGRIND = AV_TEST_QUICK=1 valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite
valgrind: deps-test
	@$(APT_INSTALL) valgrind
	$(MAKE) BUILD=build/vg CFLAGS="-O1 -g" OPENMP= tests
	@tests/run $(call suite,$(VALGRIND),build/vg) "$(VALGRIND) build/vg/test_examples build/vg/examples_tmp"

# AArch64: cross-compiled, static, run under qemu-user; the NEON GEMM path
# must be among those tested. The suite runs on NEON (the vector math, attention
# and the RNN passes too; test_vae, test_attention and test_optim also loop over
# both paths), and the vector-math tests once more on the scalar path.
ARM_CC := aarch64-linux-gnu-gcc
ARM_TESTS := $(TESTS)
test-arm64: $(ARM_TESTS:%=build/arm64/%)
	@tests/run $(call suite,qemu-aarch64,build/arm64) \
		"qemu-aarch64 build/arm64/test_gemm --quick | grep '^isa neon:'" \
		"ATTNVAE_ISA=scalar qemu-aarch64 build/arm64/test_ops" "ATTNVAE_ISA=scalar qemu-aarch64 build/arm64/test_optim" \
		"ATTNVAE_ISA=scalar qemu-aarch64 build/arm64/test_rnn"

build/arm64/%: tests/%.c $(wildcard tests/*.h) $(HEADER) | deps-arm64
	@mkdir -p build/arm64
	$(ARM_CC) -std=c99 $(WARN) -O2 -static -o $@ $< -lm -pthread

# ---- data parallel over MPI ---------------------------------------------
# test_mpi (as C and as C++) on 2 and 3 ranks, then vae_fashion and charlm
# --mpi on 2 ranks, ranks that cannot load their data, and a build without MPI.
$(BUILD)/test_mpi: tests/test_mpi.c tests/test.h $(HEADER) | $(BUILD)
	$(C99) $(MPI_CFLAGS) -o $@ $< $(MPI_LIBS) -lm
$(BUILD)/cxx/test_mpi: tests/test_mpi.c tests/test.h $(HEADER)
	@mkdir -p $(BUILD)/cxx
	$(CXX) -x c++ -std=c++11 $(WARN) $(CFLAGS) $(MPI_CFLAGS) -o $@ $< $(MPI_LIBS) -lm
$(BUILD)/nompi/vae_fashion: examples/vae_fashion.c examples/common.h $(HEADER)
	@mkdir -p $(BUILD)/nompi
	$(C99) -o $@ $< -lstb -lm

test-mpi: deps-test data $(BUILD)/test_mpi $(BUILD)/cxx/test_mpi $(BUILD)/vae_fashion $(BUILD)/charlm $(BUILD)/nompi/vae_fashion
	@mkdir -p $(BUILD)/mpi_tmp
	@tests/run "$(MPIRUN) -np 2 $(BUILD)/test_mpi $(BUILD)/mpi_tmp" \
		"$(MPIRUN) -np 3 $(BUILD)/test_mpi $(BUILD)/mpi_tmp" \
		"$(MPIRUN) -np 2 $(BUILD)/cxx/test_mpi $(BUILD)/mpi_tmp" \
		"$(MPIRUN_ENV) tests/mpi_examples.sh $(BUILD) $(DATA) $(BUILD)/nompi/vae_fashion"

# Scaling on this machine: 1 process against 2 ranks, one thread each, the
# same global batch; best of a few rounds (the machine is shared).
bench-mpi: deps data $(BUILD)/vae_fashion
	$(MPIRUN_ENV) tests/bench_mpi.sh $(BUILD)/vae_fashion $(DATA)

# ---- fuzzing ----------------------------------------------------------
# One libFuzzer target per reader (safetensors, IDX, the JSON header), with
# ASan and UBSan, each run for FUZZ_SECONDS from seed files that the
# library's own writer makes. A crash, a hang (-timeout) or a single
# allocation over 64 MB fails the target; its input is kept as
# build/fuzz/<target>-crash-* (add it to tests/test_io.c as a test).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := fuzz_safetensors fuzz_idx fuzz_json
FUZZ_CC      ?= clang
FUZZ_CFLAGS   = -std=c99 $(WARN) -g -O1 -fno-omit-frame-pointer \
                -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
FUZZ_RUN      = -max_total_time=$(FUZZ_SECONDS) -timeout=10 -malloc_limit_mb=64 -print_final_stats=1
fuzz: deps-fuzz $(FUZZ_TARGETS:%=build/fuzz/%) build/fuzz/make_fuzz_seeds
	build/fuzz/make_fuzz_seeds build/fuzz
	$(foreach t,$(FUZZ_TARGETS),build/fuzz/$(t) $(FUZZ_RUN) -artifact_prefix=build/fuzz/$(t)- \
	    $(if $(filter fuzz_idx,$(t)),,-dict=tests/fuzz_json.dict) build/fuzz/corpus_$(t) &&) true

build/fuzz/fuzz_%: tests/fuzz_%.c $(HEADER)
	@mkdir -p build/fuzz
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< -lm

build/fuzz/make_fuzz_seeds: tests/make_fuzz_seeds.c $(HEADER)
	@mkdir -p build/fuzz
	$(CC) -std=c99 $(WARN) -O1 -o $@ $< -lm

# ---- benchmarks -------------------------------------------------------
# OpenBLAS (linked into bench_gemm, and under PyTorch) runs at its best:
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE would force an older kernel.
NO_OPENBLAS_ENV = env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE
bench: deps-bench data $(BUILD)/bench_gemm $(BUILD)/bench_scores $(BUILD)/vae_fashion $(BUILD)/bench_attention $(BUILD)/bench_rnn $(BUILD)/bench_conv $(BUILD)/charlm $(BUILD)/bench_cnn
	$(NO_OPENBLAS_ENV) $(BUILD)/bench_gemm
	$(BUILD)/bench_scores
	tests/bench_vae.sh $(BUILD)/vae_fashion $(DATA)
	tests/bench_attention.sh $(BUILD)/bench_attention
	tests/bench_rnn.sh $(BUILD)/bench_rnn
	tests/bench_conv.sh $(BUILD)/bench_conv
	PYTHON=$(PYTHON) tests/bench_charlm.sh $(BUILD)/charlm
	tests/bench_cnn.sh $(BUILD)/bench_cnn
	@$(MAKE) --no-print-directory bench-steps

$(BUILD)/bench_attention: tests/bench_attention.c tests/bench_peak.h $(HEADER) | $(BUILD)
	$(C99) $(OPENMP) -o $@ $< -lm

$(BUILD)/bench_conv: tests/bench_conv.c $(HEADER) | $(BUILD)
	$(C99) $(OPENMP) -o $@ $< -lm

$(BUILD)/bench_cnn: tests/bench_cnn.c $(HEADER) | $(BUILD)
	$(C99) $(OPENMP) -o $@ $< -lm

$(BUILD)/bench_gemm: tests/bench_gemm.c tests/bench_peak.h $(HEADER) | $(BUILD)
	$(CC) -std=c99 $(WARN) -O2 $(OPENMP) -o $@ $< -lopenblas -lm

$(BUILD)/bench_scores: tests/bench_scores.c $(HEADER) | $(BUILD)
	$(C99) $(OPENMP) -o $@ $< -lm

$(BUILD)/bench_rnn: tests/bench_rnn.c $(HEADER) | $(BUILD)
	$(C99) $(OPENMP) -o $@ $< -lm

# A VAE and an MLP training step on 1 and 2 threads: the 2-thread speedup.
bench-steps: $(BUILD)/bench_steps
	$(BUILD)/bench_steps

$(BUILD)/bench_steps: tests/bench_steps.c $(HEADER) | $(BUILD)
	$(C99) $(OPENMP) -o $@ $< -lm

# ---- demo: the main job ----------------------------------------------
demo: deps data $(BUILD)/vae_fashion
	$(BUILD)/vae_fashion --data $(DATA) --out $(OUT)/vae
	@echo "demo pictures are in $(OUT)/vae/"

# ---- install: the header and a pkg-config file -------------------------
PREFIX  ?= /usr/local
DESTDIR ?=
VERSION := $(shell sed -n 's/^\#define ATTNVAE_VERSION "\(.*\)"/\1/p' $(HEADER))
install:
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 $(HEADER) $(DESTDIR)$(PREFIX)/include/attnvae.h
	printf '%s\n' 'prefix=$(PREFIX)' 'includedir=$${prefix}/include' '' \
	    'Name: attnvae' 'Description: attention models and variational autoencoders in one C header' \
	    'Version: $(VERSION)' 'URL: https://github.com/attnvae/attnvae' \
	    '# define ATTNVAE_IMPLEMENTATION in one file; add -fopenmp to both flags for threads' \
	    'Cflags: -I$${includedir}' 'Libs: -lm' > $(DESTDIR)$(PREFIX)/lib/pkgconfig/attnvae.pc
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/include/attnvae.h $(DESTDIR)$(PREFIX)/lib/pkgconfig/attnvae.pc

# ---- data and packages ------------------------------------------------
FASHION_SRC := /usr/share/datasets/fashion-mnist
FASHION     := train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte
data: $(FASHION:%=$(DATA)/%)
$(DATA)/%: | deps
	@mkdir -p $(DATA)
	gunzip -c $(FASHION_SRC)/$*.gz > $@.tmp && mv $@.tmp $@

# Installs Debian packages that are missing (as root, or through sudo):
# deps for the examples and the demo (Open MPI: vae_fashion takes --mpi),
# deps-test adds PyTorch (the tests' numeric reference), deps-bench
# OpenBLAS, deps-arm64 the cross toolchain, deps-fuzz clang's libFuzzer
# (libclang_rt.fuzzer ships in libclang-rt-14-dev).
APT_INSTALL = tests/apt-install
deps:
	@$(APT_INSTALL) libstb-dev dataset-fashion-mnist fortunes libomp-dev libopenmpi-dev openmpi-bin pkg-config locales-all
deps-test: deps
	@$(APT_INSTALL) python3 python3-numpy python3-torch pkg-config
deps-bench: deps-test
	@$(APT_INSTALL) libopenblas-dev
deps-arm64: deps-test
	@$(APT_INSTALL) gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
deps-fuzz:
	@$(APT_INSTALL) clang libclang-rt-14-dev

clean:
	rm -rf build
