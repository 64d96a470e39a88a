# udpd: the UDP data path daemon (built in the UDP issue).
