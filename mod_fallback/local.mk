# mod_fallback: the Apache module (HTTP(S) control API and data path).
apachemoddir = $(APXS_LIBEXECDIR)
apachemod_LTLIBRARIES = mod_fallback/mod_fallback.la
mod_fallback_mod_fallback_la_SOURCES = \
	mod_fallback/mod_fallback.c \
	mod_fallback/mod_fallback_private.h \
	mod_fallback/mod_fallback_util.c \
	mod_fallback/mod_fallback_sessions.c \
	mod_fallback/mod_fallback_create.c \
	mod_fallback/mod_fallback_commit.c \
	mod_fallback/mod_fallback_pack_up.c \
	mod_fallback/mod_fallback_data.c \
	mod_fallback/mod_fallback_files.c \
	mod_fallback/mod_fallback_pack_down.c \
	mod_fallback/mod_fallback_status.c \
	mod_fallback/mod_fallback_daemon.c
mod_fallback_mod_fallback_la_CPPFLAGS = $(AM_CPPFLAGS) -I$(APXS_INCLUDEDIR) $(APR_CFLAGS) $(APXS_EXTRA_CPPFLAGS) \
	-DFB_SBINDIR='"$(sbindir)"'
mod_fallback_mod_fallback_la_CFLAGS = $(AM_CFLAGS) $(JANSSON_CFLAGS) $(OPENSSL_CFLAGS) $(XML_CFLAGS)
mod_fallback_mod_fallback_la_LDFLAGS = -module -avoid-version -shared -export-symbols-regex '^fallback_module$$'
mod_fallback_mod_fallback_la_LIBADD = lib/libfb.la $(JANSSON_LIBS) $(OPENSSL_LIBS) $(XML_LIBS)

# Only the .so belongs in Apache's module directory.
install-data-hook-mod-fallback:
	rm -f $(DESTDIR)$(apachemoddir)/mod_fallback.la
