# Unit tests (check). Each check_<area> program tests one part of libfb.
if HAVE_CHECK
UNIT_TESTS = \
	tests/unit/check_err \
	tests/unit/check_range \
	tests/unit/check_path \
	tests/unit/check_util \
	tests/unit/check_config \
	tests/unit/check_table \
	tests/unit/check_checkpoint \
	tests/unit/check_digest
check_PROGRAMS += $(UNIT_TESTS)
TESTS += $(UNIT_TESTS)
UNIT_CFLAGS = $(AM_CFLAGS) $(CHECK_CFLAGS) -DFB_TOP_SRCDIR='"$(abs_top_srcdir)"'
UNIT_LDADD = lib/libfb.la $(CHECK_LIBS)
tests_unit_check_err_SOURCES = tests/unit/check_err.c
tests_unit_check_err_CFLAGS = $(UNIT_CFLAGS)
tests_unit_check_err_LDADD = $(UNIT_LDADD)
tests_unit_check_range_SOURCES = tests/unit/check_range.c
tests_unit_check_range_CFLAGS = $(UNIT_CFLAGS)
tests_unit_check_range_LDADD = $(UNIT_LDADD)
tests_unit_check_path_SOURCES = tests/unit/check_path.c
tests_unit_check_path_CFLAGS = $(UNIT_CFLAGS)
tests_unit_check_path_LDADD = $(UNIT_LDADD)
tests_unit_check_util_SOURCES = tests/unit/check_util.c
tests_unit_check_util_CFLAGS = $(UNIT_CFLAGS)
tests_unit_check_util_LDADD = $(UNIT_LDADD)
tests_unit_check_config_SOURCES = tests/unit/check_config.c
tests_unit_check_config_CFLAGS = $(UNIT_CFLAGS)
tests_unit_check_config_LDADD = $(UNIT_LDADD)
tests_unit_check_table_SOURCES = tests/unit/check_table.c
tests_unit_check_table_CFLAGS = $(UNIT_CFLAGS)
tests_unit_check_table_LDADD = $(UNIT_LDADD)
tests_unit_check_checkpoint_SOURCES = tests/unit/check_checkpoint.c
tests_unit_check_checkpoint_CFLAGS = $(UNIT_CFLAGS)
tests_unit_check_checkpoint_LDADD = $(UNIT_LDADD)
tests_unit_check_digest_SOURCES = tests/unit/check_digest.c
tests_unit_check_digest_CFLAGS = $(UNIT_CFLAGS)
tests_unit_check_digest_LDADD = $(UNIT_LDADD)
AM_TESTS_ENVIRONMENT = CK_DEFAULT_TIMEOUT=60; export CK_DEFAULT_TIMEOUT; FB_SCHEMA=$(abs_top_srcdir)/conf/fallback.xsd; export FB_SCHEMA;
endif
