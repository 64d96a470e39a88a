# Unit tests for the UDP fast path parts of libfb.
if HAVE_CHECK
WIRE_TESTS = \
	tests/unit/check_wire \
	tests/unit/check_aead \
	tests/unit/check_replay \
	tests/unit/check_rate \
	tests/unit/check_assoc
check_PROGRAMS += $(WIRE_TESTS)
TESTS += $(WIRE_TESTS)
tests_unit_check_wire_SOURCES = tests/unit/check_wire.c
tests_unit_check_wire_CFLAGS = $(AM_CFLAGS) $(CHECK_CFLAGS) $(OPENSSL_CFLAGS)
tests_unit_check_wire_LDADD = lib/libfb.la $(CHECK_LIBS)
tests_unit_check_aead_SOURCES = tests/unit/check_aead.c
tests_unit_check_aead_CFLAGS = $(AM_CFLAGS) $(CHECK_CFLAGS) $(OPENSSL_CFLAGS)
tests_unit_check_aead_LDADD = lib/libfb.la $(CHECK_LIBS)
tests_unit_check_replay_SOURCES = tests/unit/check_replay.c
tests_unit_check_replay_CFLAGS = $(AM_CFLAGS) $(CHECK_CFLAGS) $(OPENSSL_CFLAGS)
tests_unit_check_replay_LDADD = lib/libfb.la $(CHECK_LIBS)
tests_unit_check_rate_SOURCES = tests/unit/check_rate.c
tests_unit_check_rate_CFLAGS = $(AM_CFLAGS) $(CHECK_CFLAGS) $(OPENSSL_CFLAGS)
tests_unit_check_rate_LDADD = lib/libfb.la $(CHECK_LIBS)
tests_unit_check_assoc_SOURCES = tests/unit/check_assoc.c tests/unit/assoc_world.c tests/unit/assoc_world.h
tests_unit_check_assoc_CFLAGS = $(AM_CFLAGS) $(CHECK_CFLAGS) $(OPENSSL_CFLAGS)
tests_unit_check_assoc_LDADD = lib/libfb.la $(CHECK_LIBS)
endif

# libFuzzer targets: the datagram decoder (fuzz_wire) and the handshake's input side of both
# ends (fuzz_assoc). `make fuzz` (needs clang), then e.g. `tests/fuzz/fuzz_wire
# -max_total_time=60`. Built outside libtool: they compile the pure sources directly with the
# fuzzer and ASan instrumentation.
EXTRA_DIST += tests/fuzz/fuzz_wire.c tests/fuzz/fuzz_assoc.c
FUZZ_CLANG = clang
FUZZ_LIB_SRCS = $(srcdir)/lib/fb_wire.c $(srcdir)/lib/fb_aead.c \
	$(srcdir)/lib/fb_replay.c $(srcdir)/lib/fb_util.c $(srcdir)/lib/fb_err.c
FUZZ_CC = $(FUZZ_CLANG) -g -O1 -std=gnu11 -fsanitize=fuzzer,address,undefined -I$(srcdir)/lib -I. -D_GNU_SOURCE
.PHONY: fuzz fuzz-clang
fuzz: tests/fuzz/fuzz_wire tests/fuzz/fuzz_assoc
fuzz-clang:
	@if ! command -v $(FUZZ_CLANG) >/dev/null 2>&1; then \
	  echo "fuzz: $(FUZZ_CLANG) not found (apt-get install clang)" >&2; exit 1; fi
	@mkdir -p tests/fuzz
tests/fuzz/fuzz_wire: $(srcdir)/tests/fuzz/fuzz_wire.c $(FUZZ_LIB_SRCS) | fuzz-clang
	$(FUZZ_CC) $(OPENSSL_CFLAGS) -o $@ $(srcdir)/tests/fuzz/fuzz_wire.c $(FUZZ_LIB_SRCS) $(OPENSSL_LIBS)
tests/fuzz/fuzz_assoc: $(srcdir)/tests/fuzz/fuzz_assoc.c $(srcdir)/lib/fb_assoc.c $(FUZZ_LIB_SRCS) | fuzz-clang
	$(FUZZ_CC) $(OPENSSL_CFLAGS) -o $@ $(srcdir)/tests/fuzz/fuzz_assoc.c $(srcdir)/lib/fb_assoc.c \
	  $(FUZZ_LIB_SRCS) $(OPENSSL_LIBS)
CLEANFILES += tests/fuzz/fuzz_wire tests/fuzz/fuzz_assoc
