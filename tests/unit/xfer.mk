# Unit tests of the UDP transfer engines (lib/fb_xfer*), and the UDP test driver.
if HAVE_CHECK
XFER_TESTS = tests/unit/check_xfer
check_PROGRAMS += $(XFER_TESTS)
TESTS += $(XFER_TESTS)
tests_unit_check_xfer_SOURCES = tests/unit/check_xfer.c
tests_unit_check_xfer_CFLAGS = $(AM_CFLAGS) $(CHECK_CFLAGS) $(OPENSSL_CFLAGS)
tests_unit_check_xfer_LDADD = lib/libfb.la $(CHECK_LIBS)
endif
