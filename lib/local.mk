# libfb: the core library, free of httpd headers, shared by every part.
noinst_LTLIBRARIES += lib/libfb.la
lib_libfb_la_SOURCES = \
	lib/fb_err.c lib/fb_err.h \
	lib/fb_util.c lib/fb_util.h \
	lib/fb_range.c lib/fb_range.h \
	lib/fb_path.c lib/fb_path.h \
	lib/fb_config.c lib/fb_config.h lib/fb_config_private.h \
	lib/fb_config_xml.c \
	lib/fb_config_edit.c \
	lib/fb_table.c lib/fb_table.h lib/fb_table_private.h \
	lib/fb_table_open.c \
	lib/fb_checkpoint.c lib/fb_checkpoint.h \
	lib/fb_digest.c lib/fb_digest.h \
	lib/fb_filesum.c lib/fb_filesum.h
lib_libfb_la_CFLAGS = $(AM_CFLAGS) $(XML_CFLAGS) $(OPENSSL_CFLAGS) $(JANSSON_CFLAGS)
lib_libfb_la_LIBADD = $(XML_LIBS) $(OPENSSL_LIBS) $(JANSSON_LIBS) -lpthread
