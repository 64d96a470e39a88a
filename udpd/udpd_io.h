/* udpd_io: udpd's names for the shared UDP socket layer (lib/fb_udp.h), kept so that the
 * session code reads as before; the socket, batching and errno policy all live in fb_udp. */
#ifndef UDPD_IO_H
#define UDPD_IO_H

#include "fb_udp.h"

typedef fb_udp_addr udpd_addr;

#define udpd_addr_equal fb_udp_addr_equal
#define udpd_addr_format fb_udp_addr_format

#endif
