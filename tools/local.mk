# fbctl: the admin tool (check config, change ports, list and cancel sessions).
sbin_PROGRAMS += tools/fbctl
tools_fbctl_SOURCES = tools/fbctl.c
tools_fbctl_CFLAGS = $(AM_CFLAGS) $(XML_CFLAGS) $(JANSSON_CFLAGS) $(OPENSSL_CFLAGS)
tools_fbctl_LDADD = lib/libfb.la $(XML_LIBS) $(JANSSON_LIBS) $(OPENSSL_LIBS)
