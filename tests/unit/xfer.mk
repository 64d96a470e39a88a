# Unit tests of the UDP transfer engines (lib/fb_xfer*), and the UDP test driver.
if HAVE_CHECK
XFER_TESTS = tests/unit/check_xfer
check_PROGRAMS += $(XFER_TESTS)
TESTS += $(XFER_TESTS)
tests_unit_check_xfer_SOURCES = tests/unit/check_xfer.c
tests_unit_check_xfer_CFLAGS = $(AM_CFLAGS) $(CHECK_CFLAGS) $(OPENSSL_CFLAGS)
tests_unit_check_xfer_LDADD = lib/libfb.la $(CHECK_LIBS)
endif

# The UDP test driver of tests/integration/t_udp_*.sh (built with the programs, not only for
# `make check`, so the integration runner finds it).
noinst_PROGRAMS += tests/udp/udp_client
tests_udp_udp_client_SOURCES = tests/udp/udp_client.c
tests_udp_udp_client_CFLAGS = $(AM_CFLAGS) $(OPENSSL_CFLAGS) $(JANSSON_CFLAGS)
tests_udp_udp_client_LDADD = lib/libfb.la $(OPENSSL_LIBS) $(JANSSON_LIBS)
