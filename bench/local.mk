# Benchmark tools (link emulator). bench/linkem is built on demand (`make bench/linkem`), never
# installed; it does not use libfb so it builds whatever state the library is in.
noinst_PROGRAMS += bench/linkem
bench_linkem_SOURCES = bench/linkem.c bench/linkem_model.c bench/linkem_model.h
bench_linkem_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS)
bench_linkem_LDADD = $(JANSSON_LIBS) -lpthread -lm
dist_noinst_SCRIPTS += bench/linkem-up bench/linkem-down bench/linkem-selftest
EXTRA_DIST += docs/linkem.md

# Unit test of the link model (pure code, time passed in).
if HAVE_CHECK
check_PROGRAMS += tests/unit/check_linkem
TESTS += tests/unit/check_linkem
tests_unit_check_linkem_SOURCES = tests/unit/check_linkem.c bench/linkem_model.c bench/linkem_model.h
tests_unit_check_linkem_CFLAGS = $(AM_CFLAGS) $(CHECK_CFLAGS)
tests_unit_check_linkem_LDADD = $(CHECK_LIBS) -lm
endif
