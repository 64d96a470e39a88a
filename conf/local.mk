# Shipped configuration: fallback.xml and its schema, Apache snippets, systemd unit.
#
# The files are written with Debian's paths (/etc/fallback, /usr/lib/apache2/modules, /usr/sbin);
# install rewrites those to this build's directories, so they agree with FB_SYSCONFDIR and the
# module directory whatever the prefix. An existing fallback.xml is never overwritten: the new one
# goes beside it as fallback.xml.dist for the admin to compare.
fallbackconfdir = $(sysconfdir)/fallback
apacheconfdir = $(APACHE_CONFDIR)
systemdsystemunitdir = $(prefix)/lib/systemd/system
dist_pkgdata_DATA = conf/fallback.xsd
# The configuration reference; udpd.service points at it.
confdocdir = $(docdir)
dist_confdoc_DATA = docs/CONFIG.md
EXTRA_DIST += conf/fallback.xml conf/fallback.load conf/fallback.conf conf/udpd.service

conf_edit = sed -e 's|/etc/fallback|$(sysconfdir)/fallback|g' \
	-e 's|/usr/lib/apache2/modules|$(APXS_LIBEXECDIR)|g' \
	-e 's|/usr/sbin/|$(sbindir)/|g' \
	-e 's|/usr/share/doc/fallback|$(docdir)|g'

install-data-local: install-conf
install-conf:
	$(MKDIR_P) '$(DESTDIR)$(fallbackconfdir)' '$(DESTDIR)$(apacheconfdir)' '$(DESTDIR)$(systemdsystemunitdir)'
	$(conf_edit) '$(srcdir)/conf/fallback.load' > '$(DESTDIR)$(apacheconfdir)/fallback.load'
	$(conf_edit) '$(srcdir)/conf/fallback.conf' > '$(DESTDIR)$(apacheconfdir)/fallback.conf'
	$(conf_edit) '$(srcdir)/conf/udpd.service' > '$(DESTDIR)$(systemdsystemunitdir)/udpd.service'
	if test -f '$(DESTDIR)$(fallbackconfdir)/fallback.xml'; then dest=fallback.xml.dist; \
	else dest=fallback.xml; fi; \
	$(conf_edit) '$(srcdir)/conf/fallback.xml' > "$(DESTDIR)$(fallbackconfdir)/$$dest" && \
	chmod 0644 "$(DESTDIR)$(fallbackconfdir)/$$dest"

uninstall-local: uninstall-conf
uninstall-conf:
	rm -f '$(DESTDIR)$(apacheconfdir)/fallback.load' '$(DESTDIR)$(apacheconfdir)/fallback.conf' \
	  '$(DESTDIR)$(systemdsystemunitdir)/udpd.service' \
	  '$(DESTDIR)$(fallbackconfdir)/fallback.xml' '$(DESTDIR)$(fallbackconfdir)/fallback.xml.dist'

.PHONY: install-conf uninstall-conf
