# udpd: the UDP data path daemon (built in the UDP issue).

# The transfer engines live in libfb (shared with fbcp); added here so no other fragment changes.
lib_libfb_la_SOURCES += lib/fb_xfer.h lib/fb_xfer_send.c lib/fb_xfer_recv.c

sbin_PROGRAMS += udpd/udpd
udpd_udpd_SOURCES = \
	udpd/udpd.h \
	udpd/udpd_main.c \
	udpd/udpd_session.c udpd/udpd_sess.h udpd/udpd_files.c udpd/udpd_data.c \
	udpd/udpd_ckpt.c \
	udpd/udpd_log.c \
	udpd/udpd_io.h
udpd_udpd_CFLAGS = $(AM_CFLAGS) $(OPENSSL_CFLAGS)
udpd_udpd_LDADD = lib/libfb.la $(OPENSSL_LIBS) -lpthread
dist_man8_MANS = udpd/udpd.8
