# libfb parts of the UDP fast path: wire codec, AEAD, replay window, rate control.
