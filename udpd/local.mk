# udpd: the UDP data path daemon (built in the UDP issue).

# The transfer engines live in libfb (shared with fbcp); added here so no other fragment changes.
lib_libfb_la_SOURCES += lib/fb_xfer.h lib/fb_xfer_send.c lib/fb_xfer_recv.c
