# Unit tests of the UDP socket layer (lib/fb_udp), on real loopback sockets.
if HAVE_CHECK
check_PROGRAMS += tests/unit/check_udp
TESTS += tests/unit/check_udp
tests_unit_check_udp_SOURCES = tests/unit/check_udp.c
tests_unit_check_udp_CFLAGS = $(AM_CFLAGS) $(CHECK_CFLAGS)
tests_unit_check_udp_LDADD = lib/libfb.la $(CHECK_LIBS)
endif
