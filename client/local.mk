# fbcp: the command-line transfer client.
bin_PROGRAMS += client/fbcp
client_fbcp_SOURCES = \
	client/fbcp.c client/fbcp.h \
	client/fbcp_http.c \
	client/fbcp_upload.c \
	client/fbcp_download.c \
	client/fbcp_progress.c
client_fbcp_CFLAGS = $(AM_CFLAGS) $(CURL_CFLAGS) $(JANSSON_CFLAGS) $(OPENSSL_CFLAGS)
client_fbcp_LDADD = lib/libfb.la $(CURL_LIBS) $(JANSSON_LIBS) $(OPENSSL_LIBS) -lpthread
