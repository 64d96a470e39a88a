# Shipped configuration: fallback.xml and its schema, Apache snippets, systemd unit.
fallbackconfdir = $(sysconfdir)/fallback
dist_fallbackconf_DATA = conf/fallback.xml
dist_pkgdata_DATA = conf/fallback.xsd
apacheconfdir = $(APACHE_CONFDIR)
dist_apacheconf_DATA = conf/fallback.load conf/fallback.conf
EXTRA_DIST += conf/udpd.service
