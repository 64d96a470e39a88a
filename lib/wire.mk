# libfb parts of the UDP fast path: wire codec, AEAD, replay window, rate control, handshake.
lib_libfb_la_SOURCES += \
	lib/fb_wire.c lib/fb_wire.h \
	lib/fb_aead.c lib/fb_aead.h \
	lib/fb_replay.c lib/fb_replay.h \
	lib/fb_rate.c lib/fb_rate.h \
	lib/fb_assoc.c lib/fb_assoc.h
# The UDP socket layer of udpd and fbcp (GSO/GRO batching, one errno policy).
lib_libfb_la_SOURCES += lib/fb_udp.c lib/fb_udp.h
# exp2/ceil in the rate controller.
lib_libfb_la_LIBADD += -lm
