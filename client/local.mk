# fbcp: the command-line transfer client.
bin_PROGRAMS += client/fbcp
client_fbcp_SOURCES = \
	client/fbcp.c client/fbcp.h \
	client/fbcp_tree.c \
	client/fbcp_util.c \
	client/fbcp_ranges.c \
	client/fbcp_sidecar.c \
	client/fbcp_http.c \
	client/fbcp_http_data.c \
	client/fbcp_upload.c client/fbcp_upload.h \
	client/fbcp_upload_hash.c \
	client/fbcp_pack_up.c \
	client/fbcp_download.c client/fbcp_download.h \
	client/fbcp_download_hash.c \
	client/fbcp_pack_down.c \
	client/fbcp_progress.c \
	client/fbcp_udp.c client/fbcp_udp.h \
	client/fbcp_udp_leg.c \
	client/fbcp_switch.c \
	client/fbcp_move.c
client_fbcp_CFLAGS = $(AM_CFLAGS) $(CURL_CFLAGS) $(JANSSON_CFLAGS) $(OPENSSL_CFLAGS)
client_fbcp_LDADD = lib/libfb.la $(CURL_LIBS) $(JANSSON_LIBS) $(OPENSSL_LIBS) -lpthread

# Unit test of fbcp's pure parts (URLs, range lists, number parsing, the download sidecar, the
# transport choice in virtual time).
if HAVE_CHECK
check_PROGRAMS += client/check_fbcp
TESTS += client/check_fbcp
client_check_fbcp_SOURCES = client/check_fbcp.c client/fbcp_util.c client/fbcp_ranges.c client/fbcp_sidecar.c \
	client/fbcp_switch.c client/fbcp.h
client_check_fbcp_CFLAGS = $(AM_CFLAGS) $(CHECK_CFLAGS) $(CURL_CFLAGS) $(JANSSON_CFLAGS)
client_check_fbcp_LDADD = lib/libfb.la $(CHECK_LIBS) $(CURL_LIBS) $(JANSSON_LIBS) $(OPENSSL_LIBS)
endif

dist_man1_MANS = client/fbcp.1
